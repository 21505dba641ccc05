//! Helpers for the cluster suites in `tests/tests/`. They run inside the local cluster's
//! network namespace with `KUBECONFIG` set (`cargo xtask test` arranges both), and drive
//! the cluster with the real `kubectl`.
use std::{
    io::Write,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub mod e2e;
pub mod operator;

/// The images `cargo xtask images` builds; the tag matches `xtask/src/paths.rs`.
pub const HTTP_WORKLOAD_IMAGE: &str = "elasti.local/elasti-http-workload:0.1.0";
pub const TCP_ECHO_IMAGE: &str = "elasti.local/elasti-tcp-echo:0.1.0";

/// Fails loudly when the suite runs outside `cargo xtask test`, rather than skipping.
pub fn require_cluster() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "cluster suites need the local cluster: run them with `cargo xtask test`"
    );
}

/// Whether the suite runs against the local cluster, whose network namespace this process
/// shares (so ClusterIPs are reachable from here), rather than kind.
pub fn on_local_cluster() -> bool {
    std::env::var("ELASTI_CLUSTER").map_or(true, |c| c == "local")
}

/// Runs `kubectl args…` and returns stdout; stderr is in the error.
pub fn kubectl(args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl apply -f -` in `namespace`.
pub fn apply(namespace: &str, manifest: &str) -> Result<()> {
    let mut child = Command::new("kubectl")
        .args(["apply", "-n", namespace, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl apply")?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(manifest.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The generated ElastiService CRD, as `deploy/crd/` has it.
pub const CRD: &str = include_str!("../../deploy/crd/elastiservices.yaml");

/// Applies the ElastiService CRD and waits until the apiserver serves it.
pub fn install_crd() -> Result<()> {
    apply("default", CRD)?;
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/elastiservices.elasti.truefoundry.com",
        "--timeout=30s",
    ])?;
    Ok(())
}

/// Runs `f` on a thread that has entered the network namespace at `netns` (sockets it
/// opens stay in that namespace), and returns its result.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = netns.to_string();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).unwrap_or_else(|e| panic!("open {netns}: {e}"));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {netns}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Polls `check` until it returns `Some`, or fails with `what` after `timeout`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// A namespace of the test's own, deleted when dropped (the policy-controller habit).
pub struct TempNamespace {
    pub name: String,
}

impl TempNamespace {
    pub fn create(prefix: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let name = format!("{prefix}-{:x}", nanos ^ std::process::id());
        kubectl(&["create", "namespace", &name])?;
        // The default ServiceAccount appears asynchronously; pods are refused until it does.
        wait_until("default ServiceAccount", Duration::from_secs(30), || {
            kubectl(&["-n", &name, "get", "serviceaccount", "default"]).ok()
        })?;
        Ok(Self { name })
    }
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// A Deployment of the HTTP workload (`replicas`) behind a ClusterIP Service `name`
/// (port 80 → 8080), plus a `client` pod to `kubectl exec` `http-get` in.
pub fn http_workload(name: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: http
        image: {HTTP_WORKLOAD_IMAGE}
        imagePullPolicy: Never
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        ports:
        - {{containerPort: 8080, name: http}}
        readinessProbe:
          httpGet: {{path: /healthz, port: http}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {HTTP_WORKLOAD_IMAGE}
    imagePullPolicy: Never
    env:
    - {{name: LISTEN, value: "127.0.0.1:18080"}}
"#
    )
}

/// `{path}` of `what` (`kind/name`) in `namespace`, as `kubectl get -o jsonpath` prints
/// it; empty when it cannot be read.
pub fn jsonpath(namespace: &str, what: &str, path: &str) -> String {
    kubectl(&[
        "-n",
        namespace,
        "get",
        what,
        "-o",
        &format!("jsonpath={path}"),
    ])
    .unwrap_or_default()
}

/// The ClusterIP of Service `name` in `namespace`.
pub fn cluster_ip(namespace: &str, name: &str) -> Result<String> {
    kubectl(&[
        "-n",
        namespace,
        "get",
        "svc",
        name,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
}

/// Waits until the `client` pod of [`http_workload`] is Ready to `kubectl exec` into.
pub fn wait_client_ready(namespace: &str) -> Result<()> {
    kubectl(&[
        "-n",
        namespace,
        "wait",
        "pod/client",
        "--for=condition=Ready",
        "--timeout=120s",
    ])?;
    Ok(())
}

/// Names of the pods of `app` that are Ready.
pub fn ready_pods(namespace: &str, app: &str) -> Result<Vec<String>> {
    let out = kubectl(&[
        "-n",
        namespace,
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, ready)| *ready == "True")
        .map(|(name, _)| name.to_string())
        .collect())
}

/// `http-get <url>` inside pod `client` of `namespace`: the response, or the error text.
pub fn get_from_client_pod(namespace: &str, url: &str, timeout_secs: u32) -> Result<String> {
    kubectl(&[
        "-n",
        namespace,
        "exec",
        "client",
        "--",
        "/usr/local/bin/http-get",
        "--timeout",
        &timeout_secs.to_string(),
        url,
    ])
}

/// The `/metrics` text of the admin server at `admin` (empty if it does not answer).
pub fn metrics_text(admin: &str) -> String {
    get_from_netns(admin, "/metrics", Duration::from_secs(2)).unwrap_or_default()
}

/// The value of the first metric line at `admin` that starts with `prefix` (labels
/// included).
pub fn metric_value(admin: &str, prefix: &str) -> Option<f64> {
    metrics_text(admin)
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `GET path` over a plain TCP connection from this process (inside the cluster netns).
pub fn get_from_netns(addr: &str, path: &str, timeout: Duration) -> Result<String> {
    use std::{io::Read, net::TcpStream};
    let sock: std::net::SocketAddr = addr.parse().context("address")?;
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
