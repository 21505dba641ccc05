//! The agent's flags. Every one has a default (or says why it must be given) and an
//! `ELASTI_*` environment variable, so the DaemonSet can set them from the downward API.
use std::{net::IpAddr, net::SocketAddr, ops::RangeInclusive, path::PathBuf, time::Duration};

use clap::Parser;

use crate::hold::admission::{Budget, Limits};

#[derive(Clone, Debug, Parser)]
#[command(
    after_help = "Every flag can also come from a YAML file (--config): its keys are the flag names \
without dashes' prefix, e.g. `max-held: 5000`. Precedence: flags, then the file, then ELASTI_* variables, \
then the defaults."
)]
#[command(
    name = "elasti-agent",
    about = "elasti node agent: holds connections to scaled-to-zero Services and wakes them",
    version
)]
pub struct Args {
    /// cgroup v2 directory whose processes' connects are intercepted. `auto`: the host's
    /// cgroup v2 root (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts), checked
    /// to be the root (id 1). Tests point it at a subtree holding only test processes.
    #[arg(long, env = "ELASTI_CGROUP_PATH", default_value = "auto")]
    pub cgroup_path: String,

    /// The address held connects are steered to. By default a link-local address the agent
    /// puts on its own link (`--proxy-interface`); the node IP also works (then set
    /// `--proxy-interface ""`). Never 127.0.0.1: inside a pod's netns that is the pod.
    #[arg(long, env = "ELASTI_PROXY_ADDRESS", default_value = "169.254.20.11")]
    pub proxy_address: IpAddr,

    /// The link the agent creates (dummy, or a port-less bridge where the kernel has no
    /// dummy driver) to carry `--proxy-address`, and removes on exit. Empty: use an
    /// address the node already has.
    #[arg(long, env = "ELASTI_PROXY_INTERFACE", default_value = "elasti0")]
    pub proxy_interface: String,

    /// Remove the proxy link on exit. The DaemonSet turns this off: during a rolling
    /// update the next agent is already serving on that address.
    #[arg(long, env = "ELASTI_REMOVE_INTERFACE_ON_EXIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub remove_interface_on_exit: bool,

    /// This agent's node, in its reports to the operator. Empty: the host name.
    #[arg(long, env = "ELASTI_NODE_NAME", default_value = "")]
    pub node_name: String,

    /// This agent's pod UID (the Downward API's `metadata.uid`), so the operator tells a
    /// restarted agent's counters from a stale one's. Empty: none (the start time still
    /// tells them apart).
    #[arg(long, env = "ELASTI_POD_UID", default_value = "")]
    pub pod_uid: String,

    /// Address the proxy listeners bind (one per allocated proxy port).
    #[arg(long, env = "ELASTI_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: IpAddr,

    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "ELASTI_ADMIN_ADDRESS", default_value = "0.0.0.0:9090")]
    pub admin_address: SocketAddr,

    /// A second admin server for the kubelet's probes, on the node's loopback: no pod can
    /// reach it, so no flood of the admin port can make a healthy agent look dead. Empty:
    /// none.
    #[arg(long, env = "ELASTI_HEALTH_ADDRESS", default_value = "127.0.0.1:9096")]
    pub health_address: String,

    /// Connections/requests one service may hold at once; more get 503 + Retry-After.
    #[arg(long, env = "ELASTI_MAX_HELD", default_value_t = Limits::DEFAULT_MAX_HELD)]
    pub max_held: usize,

    /// Connections every service on this node may hold together; more get 503 +
    /// Retry-After, so one tenant cannot take the whole agent.
    #[arg(long, env = "ELASTI_MAX_HELD_TOTAL", default_value_t = Budget::DEFAULT_MAX_COUNT)]
    pub max_held_total: usize,

    /// Bytes of unread requests every held connection on this node may pin together.
    #[arg(long, env = "ELASTI_MAX_HELD_BYTES", default_value_t = Budget::DEFAULT_MAX_BYTES)]
    pub max_held_bytes: usize,

    /// Connections open at once on one proxy port (held or being forwarded); more are
    /// closed at accept.
    #[arg(
        long,
        env = "ELASTI_MAX_CONNECTIONS_PER_PORT",
        default_value_t = 20_000
    )]
    pub max_connections_per_port: usize,

    /// Connections open at once on all proxy ports of this node; more are closed at accept.
    /// Each costs two descriptors; stay under the open-files limit.
    #[arg(long, env = "ELASTI_MAX_CONNECTIONS", default_value_t = 60_000)]
    pub max_connections: usize,

    /// The proxy ports the operator allocates from (its `--proxy-ports`); a status naming
    /// any other port is refused, so the agent never listens on, say, its admin port.
    #[arg(long, env = "ELASTI_PROXY_PORTS", default_value = "24000-27999", value_parser = parse_port_range)]
    pub proxy_ports: RangeInclusive<u16>,

    /// Seconds between two wakes of a service while something waits and it is not Ready.
    #[arg(long, env = "ELASTI_REWAKE_SECS", default_value_t = 2)]
    pub rewake_secs: u64,

    /// Seconds a held connection/request waits for a Ready endpoint before 504.
    #[arg(long, env = "ELASTI_HOLD_TIMEOUT_SECS", default_value_t = Limits::DEFAULT_DEADLINE.as_secs())]
    pub hold_timeout_secs: u64,

    /// Milliseconds the agent keeps steering new connects after a service became Ready, so
    /// kube-proxy has programmed the Service before clients go direct again.
    #[arg(long, env = "ELASTI_HANDBACK_GRACE_MS", default_value_t = 2000)]
    pub handback_grace_ms: u64,

    /// Seconds to let held and accepted connections finish on SIGTERM before exiting; 0
    /// means as long as the hold timeout, so a rolling update answers everything it held.
    #[arg(long, env = "ELASTI_DRAIN_TIMEOUT_SECS", default_value_t = 0)]
    pub drain_timeout_secs: u64,

    /// Run a supervisor that owns the listeners, the programs and every unread held
    /// connection, and restarts the worker at once if it crashes (nothing held is lost).
    /// The in-process suites run the worker alone.
    #[arg(long, env = "ELASTI_SUPERVISE", default_value_t = true, action = clap::ArgAction::Set)]
    pub supervise: bool,

    /// The supervisor's socket, set by the supervisor for its worker (not for humans).
    #[arg(long, env = crate::supervisor::FD_ENV, hide = true)]
    pub supervisor_fd: Option<i32>,

    /// `net.ipv4.tcp_migrate_req` of the node, mounted by the DaemonSet: set to 1 at start,
    /// so connects queued on a listener that closes in a rolling update move to the new
    /// agent's listener instead of being reset. Ignored when absent.
    #[arg(
        long,
        env = "ELASTI_TCP_MIGRATE_REQ_PATH",
        default_value = "/host/proc/sys/net/ipv4/tcp_migrate_req"
    )]
    pub tcp_migrate_req_path: PathBuf,

    /// Base URL of the operator's wake API.
    #[arg(
        long,
        env = "ELASTI_OPERATOR_URL",
        default_value = "http://elasti-operator.elasti-system.svc:8080"
    )]
    pub operator_url: String,

    /// Projected ServiceAccount token (audience elasti-operator) sent with wake requests.
    #[arg(
        long,
        env = "ELASTI_TOKEN_PATH",
        default_value = "/var/run/secrets/elasti/token"
    )]
    pub token_path: PathBuf,

    /// `--watch-namespaces`, `--config`, `--log-json`.
    #[command(flatten)]
    pub common: elasti_runtime::config_file::CommonArgs,
}

pub use elasti_runtime::config_file::Error;

impl Args {
    /// Parses the command line, with the values of `--config`'s file (if any) placed
    /// before it so the command line wins.
    ///
    /// # Errors
    /// When the file can't be read or parsed, or a flag is invalid.
    pub fn load(argv: Vec<String>) -> Result<Self, Error> {
        elasti_runtime::config_file::load(argv, |a: &Self| a.common.config.as_str())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_held: self.max_held,
            deadline: Duration::from_secs(self.hold_timeout_secs),
        }
    }

    /// How long a SIGTERM waits for held connections: the hold timeout unless set.
    pub fn drain_timeout(&self) -> Duration {
        match self.drain_timeout_secs {
            0 => Duration::from_secs(self.hold_timeout_secs),
            secs => Duration::from_secs(secs),
        }
    }
}

/// `24000-27999`.
fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected FIRST-LAST"))?;
    let (lo, hi): (u16, u16) = (
        lo.trim().parse().map_err(|e| format!("{lo:?}: {e}"))?,
        hi.trim().parse().map_err(|e| format!("{hi:?}: {e}"))?,
    );
    if lo == 0 || lo > hi {
        return Err(format!("{s:?}: an empty or invalid range"));
    }
    Ok(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_are_parsed_and_bad_ones_refused() {
        assert_eq!(parse_port_range("24000-27999"), Ok(24000..=27999));
        assert!(parse_port_range("27999-24000").is_err());
        assert!(parse_port_range("24000").is_err());
        assert!(parse_port_range("0-10").is_err());
    }

    #[test]
    fn the_drain_lasts_the_hold_timeout_unless_set() {
        let a = Args::parse_from(["elasti-agent", "--hold-timeout-secs", "120"]);
        assert_eq!(a.drain_timeout(), Duration::from_secs(120));
        let b = Args::parse_from(["elasti-agent", "--drain-timeout-secs", "7"]);
        assert_eq!(b.drain_timeout(), Duration::from_secs(7));
    }

    #[test]
    fn file_values_become_flags_and_the_command_line_wins() {
        let dir = std::env::temp_dir().join(format!("elasti-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("agent.yaml");
        std::fs::write(
            &file,
            "max-held: 5000\nhold-timeout-secs: 60\nwatch-namespaces: [a, b]\nlog-json: true\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let argv = [
            "elasti-agent",
            "--config",
            file.to_str().unwrap_or_default(),
            "--max-held",
            "7",
        ];
        let args = Args::load(argv.iter().map(|s| s.to_string()).collect())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.max_held, 7, "the command line wins");
        assert_eq!(args.hold_timeout_secs, 60, "the file fills in");
        assert_eq!(
            args.common.namespaces(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert!(args.common.log_json);
        std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
    }
}
