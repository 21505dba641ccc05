//! elasti on the cluster: installed from its Helm chart with the chart's defaults (the
//! images are loaded into every node, so `IfNotPresent` finds them), and what its agents
//! report on each node's admin port.
use std::{process::Command, time::Duration};

use anyhow::{Context, Result};

use crate::{cmd, kind::Cluster, paths};

/// Where the chart installs elasti.
pub const NAMESPACE: &str = "elasti-system";
/// The agents' admin port (`/metrics`, `/healthz`, `/readyz`) on every node's address.
pub const AGENT_ADMIN_PORT: u16 = 9095;
/// The chart, `deploy/helm/elasti`.
pub fn chart() -> std::path::PathBuf {
    paths::repo().join("deploy/helm/elasti")
}

/// `helm upgrade --install` of the chart with its defaults (plus `set`, `key=value`), and
/// waits until the agent DaemonSet and the operator Deployment are rolled out. Run from
/// where the cluster is reachable (`KUBECONFIG` set: the suites, or [`Cluster::command`]).
pub fn install(helm: Command, set: &[&str]) -> Result<()> {
    let mut helm = helm;
    helm.args(["upgrade", "--install", "elasti"])
        .arg(chart())
        .args([
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
        ]);
    for s in set {
        helm.args(["--set", s]);
    }
    let log = std::env::temp_dir().join(format!("elasti-helm-{}.log", std::process::id()));
    let result = cmd::run_logged("helm install elasti", &mut helm, &log);
    let _ = std::fs::remove_file(&log);
    result
}

/// [`install`] with the `helm` and environment of [`Cluster::command`].
pub fn install_on(cluster: &Cluster, set: &[&str]) -> Result<()> {
    install(cluster.command(paths::helm_bin().join("helm")), set)
}

/// `helm` from the current environment (inside the suites, where `KUBECONFIG` is set).
pub fn helm() -> Command {
    Command::new(paths::helm_bin().join("helm"))
}

/// An agent's admin address on the node at `node_ip`.
pub fn agent_admin(node_ip: &str) -> String {
    format!("{node_ip}:{AGENT_ADMIN_PORT}")
}

/// The Prometheus text of the admin server at `addr`; empty when it does not answer.
pub fn metrics_text(addr: &str) -> String {
    http_get(addr, "/metrics", Duration::from_secs(2))
        .ok()
        .and_then(|r| r.split_once("\r\n\r\n").map(|(_, body)| body.to_string()))
        .unwrap_or_default()
}

/// The value of the first sample in `text` whose line starts with `prefix` (name and
/// labels).
pub fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `elasti_agent_<what>{namespace=…,service=…,port=…}`, the series prefix of one held port.
pub fn port_series(what: &str, namespace: &str, service: &str, port: u16) -> String {
    format!(r#"elasti_agent_{what}{{namespace="{namespace}",service="{service}",port="{port}"}}"#)
}

/// `GET path` over a plain TCP connection from this thread's network namespace; the whole
/// response (head and body). Refused, without a packet sent, for a cluster address from
/// the machine's own namespace ([`crate::netns::ensure_reachable_here`]).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<String> {
    use std::{
        io::{Read, Write},
        net::TcpStream,
    };
    let sock: std::net::SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    crate::netns::ensure_reachable_here(sock)?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bench once asked an agent's `/metrics` from the machine's own namespace: the
    /// connects went to the default route, out of the machine.
    #[test]
    fn a_cluster_address_is_refused_from_the_machines_own_namespace() {
        if !crate::netns::on_host() {
            eprintln!("SKIPPED LOUDLY: this test runs outside the machine's own network namespace");
            return;
        }
        let started = std::time::Instant::now();
        let r = http_get("10.89.0.2:9095", "/metrics", Duration::from_secs(5));
        let e = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("refusing to connect"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "no connect tried"
        );
        assert!(metrics_text("10.89.0.2:9095").is_empty());
    }

    #[test]
    fn samples_are_found_by_their_series_prefix() {
        let text = "# HELP x\nelasti_agent_held{namespace=\"a\",service=\"web\",port=\"80\"} 3\nelasti_agent_held{namespace=\"b\",service=\"web\",port=\"80\"} 1\n";
        assert_eq!(
            sample(text, &port_series("held", "a", "web", 80)),
            Some(3.0)
        );
        assert_eq!(sample(text, &port_series("held", "c", "web", 80)), None);
    }
}
