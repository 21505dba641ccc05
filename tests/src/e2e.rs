//! Helpers for the end-to-end scenarios (`tests/tests/e2e.rs`): elasti installed from
//! `deploy/local` (the DaemonSet and the operator Deployment), clients inside the pods'
//! intercepted cgroup, the agents' metrics, and the scenario table.
use std::{
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{jsonpath, kubectl, wait_until};

/// The pods' cgroup subtree in the local cluster (kubelet's cgroupRoot on the v2 mount).
pub const PODS_CGROUP: &str = "/sys/fs/cgroup/unified/elasti-e2e";
/// The agent's admin server on the node (the DaemonSet runs on the host network).
pub const AGENT_ADMIN: &str = "10.250.0.2:9095";
/// The node's address (NodePorts, the fallback slice's endpoints).
pub const NODE_IP: &str = "10.250.0.2";

/// `kubectl apply -k deploy/local`, then waits for the agent and the operator.
pub fn install_elasti() -> Result<()> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local");
    kubectl(&["apply", "-k", dir])?;
    for what in ["daemonset/elasti-agent", "deployment/elasti-operator"] {
        kubectl(&[
            "-n",
            "elasti-system",
            "rollout",
            "status",
            what,
            "--timeout=180s",
        ])?;
    }
    Ok(())
}

/// The first agent metric line starting with `prefix`, its value.
pub fn agent_metric(prefix: &str) -> Option<f64> {
    crate::metric_value(AGENT_ADMIN, prefix)
}

/// Waits until the agent steers connects to `namespace/service:port` to itself.
pub fn wait_intercepting(namespace: &str, service: &str, port: u16) -> Result<()> {
    let prefix = format!(
        r#"elasti_agent_intercepting{{namespace="{namespace}",service="{service}",port="{port}"}}"#
    );
    wait_until(
        &format!("the agent holding {namespace}/{service}:{port}"),
        Duration::from_secs(60),
        || (agent_metric(&prefix) == Some(1.0)).then_some(()),
    )
}

/// Waits until kube-proxy (iptables mode, in this netns) sends `namespace/service` only to
/// endpoints `accept`s (and to at least one). kube-proxy applies
/// EndpointSlice changes up to a sync period late; a connect made before that follows the
/// old rules.
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

/// The NAT table of this netns, where kube-proxy writes its Service rules.
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

/// This test process, moved into a cgroup under the pods' subtree: its connects are
/// intercepted exactly like a pod's (it shares the node's network, like a hostNetwork
/// pod). Moved back, and the cgroup removed, on drop.
pub struct InPodsCgroup {
    dir: PathBuf,
    home: PathBuf,
}

impl InPodsCgroup {
    pub fn enter(name: &str) -> Result<Self> {
        let text = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 line in /proc/self/cgroup")?;
        let root = PathBuf::from(PODS_CGROUP)
            .parent()
            .map(PathBuf::from)
            .context("cgroup root")?;
        let home = root.join(rel.trim_start_matches('/'));
        let dir = PathBuf::from(PODS_CGROUP).join(format!("e2e-{name}"));
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
        // The scenario's objects as they were when it failed, for the CI log.
        let prefix = format!("e2e-s{number:02}-");
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
        // Where kube-proxy sent the scenario's Services (NodePort and fallback paths).
        let rules = nat_rules().unwrap_or_else(|e| e.to_string());
        eprint_lines_with("kube-proxy rules", number, &rules, &format!("\"{prefix}"));
        // What the agent counted for the scenario's services (held, forwarded, refused).
        let metrics = crate::metrics_text(AGENT_ADMIN);
        let needle = format!("namespace=\"{prefix}");
        eprint_lines_with("agent metrics", number, &metrics, &needle);
        // What elasti said while it failed.
        for (what, selector) in [
            ("operator", "app.kubernetes.io/name=elasti-operator"),
            ("agent", "app.kubernetes.io/name=elasti-agent"),
        ] {
            let logs = kubectl(&[
                "-n",
                "elasti-system",
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
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("scenario {number} ({title}): {e:#}"),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Prints, under a `what` header, the lines of `text` that contain `needle`.
fn eprint_lines_with(what: &str, number: u32, text: &str, needle: &str) {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
    eprintln!("--- {what} (scenario {number}) ---\n{}", lines.join("\n"));
}

/// A Deployment (or StatefulSet) of the HTTP workload and its Service, with `env` lines
/// (`{name: K, value: V}`) added to the container.
pub fn app(name: &str, kind: &str, replicas: u32, env: &[(&str, &str)]) -> String {
    let env: String = env
        .iter()
        .map(|(k, v)| format!("        - {{name: {k}, value: \"{v}\"}}\n"))
        .collect();
    let service_name = if kind == "StatefulSet" {
        format!("  serviceName: {name}\n")
    } else {
        String::new()
    };
    format!(
        r#"apiVersion: apps/v1
kind: {kind}
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
{service_name}  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: http
        image: {image}
        imagePullPolicy: Never
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
{env}        ports: [{{containerPort: 8080, name: http}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1, failureThreshold: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
"#,
        image = crate::HTTP_WORKLOAD_IMAGE
    )
}

/// An ElastiService for Service `name` and its `kind` target (no triggers).
pub fn elastiservice(name: &str, kind: &str, extra: &str) -> String {
    format!(
        "apiVersion: elasti.truefoundry.com/v1alpha1\nkind: ElastiService\nmetadata: {{name: {name}}}\nspec:\n  service: {name}\n  minTargetReplicas: 1\n  scaleTargetRef: {{apiVersion: apps/v1, kind: {kind}, name: {name}}}\n{extra}"
    )
}

/// `.spec.replicas` of `kind/name`.
pub fn replicas(namespace: &str, kind: &str, name: &str) -> String {
    jsonpath(namespace, &format!("{kind}/{name}"), "{.spec.replicas}")
}

/// Scales `kind/name` to zero and waits until elasti holds its Service (mode `proxy` and
/// the agent steering connects).
pub fn scale_to_zero_and_wait_held(namespace: &str, kind: &str, name: &str) -> Result<()> {
    kubectl(&[
        "-n",
        namespace,
        "scale",
        &format!("{kind}/{name}"),
        "--replicas=0",
    ])?;
    wait_until("mode proxy", Duration::from_secs(60), || {
        (jsonpath(
            namespace,
            &format!("elastiservice/{name}"),
            "{.status.mode}",
        ) == "proxy")
            .then_some(())
    })?;
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
