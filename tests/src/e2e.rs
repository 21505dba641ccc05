//! Helpers for the end-to-end scenarios (`tests/tests/e2e.rs`): elasti installed from its
//! Helm chart (the agent DaemonSet on every node, the operator Deployment), clients inside
//! a node's intercepted cgroup, the agents' metrics, and the scenario table.
use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use elasti_api::Mode;
use elasti_testbed::kind::Node;

use crate::{Kind, cluster, elasti, kube, kubectl, wait_mode, wait_until};

/// `helm upgrade --install` of the chart with its defaults, then waits for the agents and
/// the operator.
pub fn install_elasti() -> Result<()> {
    elasti::install(elasti::helm(), &[])
}

/// The agent admin address on the node the suites run on.
pub fn home_agent() -> String {
    elasti::agent_admin(&cluster().home().ip)
}

/// The first metric line of the home node's agent starting with `prefix`, its value.
pub fn agent_metric(prefix: &str) -> Option<f64> {
    crate::metric_value(&home_agent(), prefix)
}

/// The value of `prefix` on every node's agent, by node name.
pub fn agent_metric_on_every_node(prefix: &str) -> Vec<(String, Option<f64>)> {
    cluster()
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                crate::metric_value(&elasti::agent_admin(&n.ip), prefix),
            )
        })
        .collect()
}

/// Waits until every node's agent steers connects to `namespace/service:port` to itself.
pub fn wait_intercepting(namespace: &str, service: &str, port: u16) -> Result<()> {
    let prefix = elasti::port_series("intercepting", namespace, service, port);
    wait_until(
        &format!("every agent holding {namespace}/{service}:{port}"),
        Duration::from_secs(60),
        || {
            agent_metric_on_every_node(&prefix)
                .iter()
                .all(|(_, v)| *v == Some(1.0))
                .then_some(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", agent_metric_on_every_node(&prefix)))
}

/// Waits until kube-proxy (iptables mode, on the node this process runs on) sends
/// `namespace/service` only to endpoints `accept`s (and to at least one). kube-proxy
/// applies EndpointSlice changes up to a sync period late; a connect made before that
/// follows the old rules.
pub fn wait_kube_proxy_sends(
    namespace: &str,
    service: &str,
    what: &str,
    accept: impl Fn(&str) -> bool,
) -> Result<()> {
    wait_until(
        &format!("kube-proxy sending {namespace}/{service} to {what}"),
        Duration::from_secs(30),
        || {
            let endpoints = kube_proxy_endpoints(&nat_rules().ok()?, namespace, service);
            (!endpoints.is_empty() && endpoints.iter().all(|e| accept(e))).then_some(())
        },
    )
}

/// The endpoints kube-proxy's Service chain for `namespace/service` jumps to: its rules are
/// commented `"<ns>/<svc>:<port> -> <ip>:<port>"`.
fn kube_proxy_endpoints(rules: &str, namespace: &str, service: &str) -> Vec<String> {
    let comment = format!("--comment \"{namespace}/{service}:");
    rules
        .lines()
        .filter_map(|l| l.split_once(&comment))
        .filter_map(|(_, rest)| rest.split_once(" -> "))
        .filter_map(|(_, rest)| rest.split_once('"'))
        .map(|(endpoint, _)| endpoint.to_string())
        .collect()
}

/// The NAT table of this netns (the node's), where kube-proxy writes its Service rules.
fn nat_rules() -> Result<String> {
    let out = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .context("running iptables-save")?;
    anyhow::ensure!(
        out.status.success(),
        "iptables-save: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// This test process, moved into a cgroup under a node's cgroup: its connects are
/// intercepted by that node's agent exactly like a pod's there (threads that enter the
/// node's network namespace share its network, like a hostNetwork pod). Moved back, and
/// the cgroup removed, on drop.
pub struct InPodsCgroup {
    dir: PathBuf,
    home: PathBuf,
}

impl InPodsCgroup {
    /// Under the node the suites run on (whose network namespace this process is in).
    pub fn enter(name: &str) -> Result<Self> {
        Self::enter_on(cluster().home(), name)
    }

    /// Under `node`'s cgroup.
    pub fn enter_on(node: &Node, name: &str) -> Result<Self> {
        let text = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 line in /proc/self/cgroup")?;
        let home = elasti_testbed::kind::cgroup2_mount().join(rel.trim_start_matches('/'));
        let dir = node.cgroup()?.join(format!("elasti-e2e-{name}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining {}", dir.display()))?;
        Ok(Self { dir, home })
    }
}

impl Drop for InPodsCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Runs a scenario, records its result and duration in `target/e2e/scenarios.tsv` (the
/// table `cargo xtask e2e` prints), and fails the test if it failed.
pub fn scenario(number: u32, title: &str, body: impl FnOnce() -> Result<()>) {
    let start = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    let secs = start.elapsed().as_secs_f64();
    let (ok, detail) = match &result {
        Ok(Ok(())) => (true, String::new()),
        Ok(Err(e)) => (false, format!("{e:#}")),
        Err(_) => (false, "panicked".into()),
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/e2e");
    let _ = std::fs::create_dir_all(dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{dir}/scenarios.tsv"))
    {
        let _ = writeln!(
            f,
            "{number}\t{title}\t{}\t{secs:.1}\t{}",
            if ok { "passed" } else { "FAILED" },
            detail.replace(['\n', '\t'], " ")
        );
    }
    if !ok {
        dump_failure(number);
    }
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("scenario {number} ({title}): {e:#}"),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// The scenario's objects, kube-proxy rules, every agent's metrics and elasti's logs as
/// they were when it failed, for the CI log.
fn dump_failure(number: u32) {
    let prefix = format!("e2e-s{number:02}");
    let state = kubectl(&[
        "get",
        "elastiservices,deployments,statefulsets,pods,endpointslices,events",
        "-A",
        "-o",
        "wide",
    ])
    .unwrap_or_else(|e| e.to_string());
    let state: Vec<&str> = state
        .lines()
        .filter(|l| l.starts_with("NAMESPACE") || l.starts_with(&prefix))
        .collect();
    eprintln!("--- objects (scenario {number}) ---\n{}", state.join("\n"));
    let rules = nat_rules().unwrap_or_else(|e| e.to_string());
    eprint_lines_with(
        "kube-proxy rules (home node)",
        number,
        &rules,
        &format!("\"{prefix}"),
    );
    let needle = format!("namespace=\"{prefix}");
    for node in &cluster().nodes {
        let metrics = crate::metrics_text(&elasti::agent_admin(&node.ip));
        eprint_lines_with(
            &format!("agent metrics on {}", node.name),
            number,
            &metrics,
            &needle,
        );
    }
    for (what, selector) in [
        ("operator", "app.kubernetes.io/name=elasti-operator"),
        ("agent", "app.kubernetes.io/name=elasti-agent"),
    ] {
        let logs = kubectl(&[
            "-n",
            elasti::NAMESPACE,
            "logs",
            "-l",
            selector,
            "--tail=80",
            "--prefix",
        ])
        .unwrap_or_else(|e| e.to_string());
        eprintln!("--- {what} logs (scenario {number}) ---\n{logs}");
    }
}

/// Prints, under a `what` header, the lines of `text` that contain `needle`.
fn eprint_lines_with(what: &str, number: u32, text: &str, needle: &str) {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
    eprintln!("--- {what} (scenario {number}) ---\n{}", lines.join("\n"));
}

/// Scales `kind/name` to zero and waits until elasti holds its Service (mode `proxy` and
/// every agent steering connects).
pub fn scale_to_zero_and_wait_held(namespace: &str, kind: Kind, name: &str) -> Result<()> {
    kube()?.scale(namespace, kind.plural(), name, 0)?;
    wait_mode(namespace, name, Mode::Proxy)?;
    wait_intercepting(namespace, name, 80)
}

/// A runtime for the scenarios' async clients run on.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
        .block_on(f)
}

#[cfg(test)]
mod tests {
    use super::kube_proxy_endpoints;

    #[test]
    fn kube_proxy_endpoints_are_read_from_the_service_chain_jumps() {
        let rules = r#"-A KUBE-NODEPORTS -p tcp -m comment --comment "s/web:http" -m tcp --dport 32049 -j KUBE-EXT-3C
-A KUBE-SEP-SK -p tcp -m comment --comment "s/web:http" -m tcp -j DNAT --to-destination 10.244.0.35:8080
-A KUBE-SVC-3C ! -s 10.244.0.0/24 -d 10.96.12.239/32 -p tcp -m comment --comment "s/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-3C -m comment --comment "s/web:http -> 10.244.0.35:8080" -m statistic --mode random --probability 0.5 -j KUBE-SEP-SK
-A KUBE-SVC-3C -m comment --comment "s/web:http -> 10.250.0.2:24000" -j KUBE-SEP-GZ
-A KUBE-SVC-99 -m comment --comment "s/webber:http -> 10.244.0.9:8080" -j KUBE-SEP-99
-A KUBE-SVC-98 -m comment --comment "other/web:http -> 10.244.0.8:8080" -j KUBE-SEP-98"#;
        assert_eq!(
            kube_proxy_endpoints(rules, "s", "web"),
            ["10.244.0.35:8080", "10.250.0.2:24000"]
        );
        assert!(kube_proxy_endpoints(rules, "s", "db").is_empty());
    }
}
