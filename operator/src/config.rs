//! The operator's flags. Every one has a default and an environment variable, so the
//! Deployment can set them from the downward API.
use std::{net::SocketAddr, ops::RangeInclusive, time::Duration};

use clap::Parser;

pub use elasti_runtime::config_file::Error;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "elasti-operator",
    about = "elasti operator: reconciles ElastiServices and scales their targets to and from zero",
    version,
    after_help = "Every flag can also come from a YAML file (--config) of `flag-name: value` \
lines. Precedence: flags, then the file, then the environment variables, then the defaults."
)]
pub struct Args {
    /// Address of the agents' `POST /v1/wake` endpoint.
    #[arg(long, env = "ELASTI_WAKE_ADDRESS", default_value = "0.0.0.0:8080")]
    pub wake_address: SocketAddr,

    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "ELASTI_ADMIN_ADDRESS", default_value = "0.0.0.0:9090")]
    pub admin_address: SocketAddr,

    /// Agent proxy ports are allocated from this range (FIRST-LAST). Keep it clear of the
    /// NodePort range (30000-32767) and the nodes' ip_local_port_range.
    #[arg(long, env = "ELASTI_PROXY_PORTS", default_value = "24000-27999", value_parser = parse_range)]
    pub proxy_ports: RangeInclusive<u16>,

    /// Seconds between two looks at an ElastiService when nothing changes (how soon an
    /// idle target is noticed after its cooldown).
    #[arg(long, env = "ELASTI_POLL_INTERVAL_SECS", default_value_t = 30)]
    pub poll_interval_secs: u64,

    /// Seconds a Prometheus query (its whole answer included) may take before its
    /// trigger reads as unknown.
    #[arg(long, env = "ELASTI_PROMETHEUS_TIMEOUT_SECS", default_value_t = 5)]
    pub prometheus_timeout_secs: u64,

    /// The only Prometheus hosts triggers may query, comma-separated (`host` or
    /// `host:port`); empty: any. The ElastiService's author picks `serverAddress`, so in a
    /// shared cluster this keeps the operator from calling arbitrary addresses for them.
    #[arg(
        long,
        env = "ELASTI_PROMETHEUS_ALLOWED_HOSTS",
        default_value = "",
        value_delimiter = ','
    )]
    pub prometheus_allowed_hosts: Vec<String>,

    /// A PEM file of CA certificates trusted for `https://` Prometheus servers, besides
    /// the system's roots; empty: the system's roots only.
    #[arg(long, env = "ELASTI_PROMETHEUS_CA_BUNDLE", default_value = "")]
    pub prometheus_ca_bundle: String,

    /// Seconds a scale-down waits, after announcing it (`ScaleDownPending`), for every
    /// Ready agent to report that it intercepts the Service; then it goes ahead (and
    /// counts it). Agents report within a second of a change.
    #[arg(long, env = "ELASTI_INTERCEPT_TIMEOUT_SECS", default_value_t = 5)]
    pub intercept_timeout_secs: u64,

    /// Milliseconds a scale-down keeps the Service drained (its pods out of its endpoints,
    /// the agents forwarding to them) before `/scale` goes to 0: time for kube-proxy on
    /// every node to sync (its default `minSyncPeriod` is 1 s) and for ingress controllers
    /// to drop the pods, so that nothing routed by endpoints reaches a pod after its
    /// SIGTERM. Raise it where kube-proxy syncs slowly (thousands of Services).
    #[arg(long, env = "ELASTI_DRAIN_DELAY_MS", default_value_t = 2000)]
    pub drain_delay_ms: u64,

    /// Seconds a freed proxy port stays unused before another Service may get it, so an
    /// agent that has not seen the release yet never serves it for the wrong tenant.
    #[arg(long, env = "ELASTI_PORT_QUARANTINE_SECS", default_value_t = 120)]
    pub port_quarantine_secs: u64,

    /// Seconds the finalizer tries to scale a target back up before it lets a deleted
    /// ElastiService go anyway (with a warning event); in a namespace being deleted it
    /// does not wait at all.
    #[arg(long, env = "ELASTI_CLEANUP_DEADLINE_SECS", default_value_t = 60)]
    pub cleanup_deadline_secs: u64,

    /// Connections the wake server serves at once (agents keep one or two each); more are
    /// closed at accept. The open-files limit is raised to fit.
    #[arg(long, env = "ELASTI_WAKE_MAX_CONNECTIONS", default_value_t = 8192)]
    pub wake_max_connections: usize,

    /// Namespace of the agent DaemonSet (its pods are the fallback slice's endpoints, and
    /// its ServiceAccount is the only caller allowed to wake).
    #[arg(long, env = "ELASTI_AGENT_NAMESPACE", default_value = "elasti-system")]
    pub agent_namespace: String,

    /// The agents' ServiceAccount.
    #[arg(
        long,
        env = "ELASTI_AGENT_SERVICE_ACCOUNT",
        default_value = "elasti-agent"
    )]
    pub agent_service_account: String,

    /// Label selector of the agent pods.
    #[arg(
        long,
        env = "ELASTI_AGENT_SELECTOR",
        default_value = "app.kubernetes.io/name=elasti-agent"
    )]
    pub agent_selector: String,

    /// Elect a leader with a Lease, so several replicas can run; only the leader reconciles
    /// (every replica answers wakes: the scale-up is idempotent).
    #[arg(long, env = "ELASTI_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "elasti-system")]
    pub lease_namespace: String,

    /// Name of the leader Lease.
    #[arg(long, env = "ELASTI_LEASE_NAME", default_value = "elasti-operator")]
    pub lease_name: String,

    /// This replica's identity in the Lease; empty: the host name and process id.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub identity: String,

    /// Seconds a Lease stays valid after its last renewal (how long a failover can take).
    #[arg(long, env = "ELASTI_LEASE_DURATION_SECS", default_value_t = 15)]
    pub lease_duration_secs: u64,

    /// Seconds the leader keeps leading without a successful renewal.
    #[arg(long, env = "ELASTI_RENEW_DEADLINE_SECS", default_value_t = 10)]
    pub renew_deadline_secs: u64,

    /// Seconds between attempts to take or renew the Lease.
    #[arg(long, env = "ELASTI_RETRY_PERIOD_SECS", default_value_t = 2)]
    pub retry_period_secs: u64,

    /// `--watch-namespaces`, `--config`, `--log-json`.
    #[command(flatten)]
    pub common: elasti_runtime::config_file::CommonArgs,
}

fn parse_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected FIRST-LAST"))?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?,
        b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?,
    );
    if a == 0 || a > b {
        return Err(format!("{s:?}: expected 0 < FIRST <= LAST"));
    }
    Ok(a..=b)
}

impl Args {
    /// Parses the command line, with `--config`'s file values before it.
    ///
    /// # Errors
    /// When the file can't be read or parsed, or a flag is invalid.
    pub fn load(argv: Vec<String>) -> Result<Self, Error> {
        elasti_runtime::config_file::load(argv, |a: &Self| a.common.config.as_str())
    }

    /// The Lease identity.
    pub fn identity(&self) -> String {
        if !self.identity.is_empty() {
            return self.identity.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_secs.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_bad_ones_are_explained() {
        assert_eq!(parse_range("24000-27999"), Ok(24000..=27999));
        assert!(parse_range("27999-24000").is_err());
        assert!(parse_range("24000").is_err());
        assert!(parse_range("0-10").is_err());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let a = Args::parse_from(["elasti-operator"]);
        assert_eq!(a.proxy_ports, 24000..=27999);
        assert!(a.leader_elect);
        assert_eq!(a.common.namespaces(), None);
        assert!(a.prometheus_allowed_hosts.iter().all(String::is_empty));
        assert_eq!(a.intercept_timeout_secs, 5);
        assert_eq!(a.drain_delay_ms, 2000);
        let a = Args::parse_from([
            "elasti-operator",
            "--prometheus-allowed-hosts=prometheus.monitoring.svc,10.0.0.1:9090",
        ]);
        assert_eq!(
            a.prometheus_allowed_hosts,
            ["prometheus.monitoring.svc", "10.0.0.1:9090"]
        );
    }
}
