//! Helpers for the cluster suites in `tests/tests/`, over the one test bed
//! (`elasti_testbed`). The suites run inside the kind cluster's first worker node (its
//! network namespace) with `KUBECONFIG` set (`cargo xtask test` arranges both): a process
//! here sees what a hostNetwork pod on that node sees. Objects are typed and go through
//! `kube::Client`; `kubectl` is used where a user would use it (exec, scale, rollout,
//! drain) and for manifests users write themselves (the CRD, KubeElasti samples).
use std::{
    io::Write,
    process::{Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use elasti_api::{ElastiService, Mode};
use elasti_testbed::kind::Cluster;
pub use elasti_testbed::{
    elasti,
    kube::{TempNamespace, kube},
    netns,
    objects::{App, Kind, client_pod, elastiservice, manual_slice, prometheus_trigger},
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::Condition,
};

pub mod e2e;
pub mod operator;

/// Fails loudly when the suite runs outside `cargo xtask test`, rather than skipping.
pub fn require_cluster() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some()
            && std::env::var("ELASTI_CLUSTER").as_deref() == Ok("kind"),
        "cluster suites need the kind cluster: run them with `cargo xtask test`"
    );
}

/// The running cluster's nodes, found once.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::discover().unwrap_or_else(|e| panic!("cluster suites: {e:#}")))
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

/// `kubectl apply -f -` of a manifest a user would write (YAML), in `namespace`.
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

/// Applies `app` (workload and Service) in `namespace`.
pub fn deploy(namespace: &str, app: &App) -> Result<()> {
    app.apply(kube()?, namespace)
}

/// Applies an ElastiService in `namespace`.
pub fn apply_es(namespace: &str, es: &ElastiService) -> Result<()> {
    kube()?.apply(namespace, es).map(drop)
}

/// A `client` pod (optionally on `node`) to `kubectl exec` `http-get` in, once Ready.
pub fn deploy_client(
    namespace: &str,
    name: &str,
    node: Option<&str>,
    host_network: bool,
) -> Result<()> {
    kube()?.apply(namespace, &client_pod(name, node, host_network))?;
    kube()?.wait_for::<Pod>(
        namespace,
        name,
        "client pod Ready",
        Duration::from_secs(120),
        is_ready,
    )?;
    Ok(())
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// ElastiService `name`, if it exists.
pub fn es(namespace: &str, name: &str) -> Option<ElastiService> {
    kube()
        .ok()?
        .get_opt::<ElastiService>(namespace, name)
        .ok()?
}

/// Its `status.mode`.
pub fn mode(namespace: &str, name: &str) -> Option<Mode> {
    es(namespace, name)?.status?.mode
}

/// Its condition of `type_`.
pub fn condition(namespace: &str, name: &str, type_: &str) -> Option<Condition> {
    es(namespace, name)?
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
}

/// Waits until ElastiService `name` reports `want`.
pub fn wait_mode(namespace: &str, name: &str, want: Mode) -> Result<()> {
    kube()?
        .wait_for::<ElastiService>(
            namespace,
            name,
            &format!("mode {want:?}"),
            Duration::from_secs(90),
            |es| es.status.as_ref().and_then(|s| s.mode) == Some(want),
        )
        .map(drop)
}

/// `.spec.replicas` of the `kind` workload `name` (-1 when it cannot be read).
pub fn replicas(namespace: &str, kind: Kind, name: &str) -> i32 {
    let Ok(k) = kube() else { return -1 };
    let spec = match kind {
        Kind::Deployment => k
            .get_opt::<Deployment>(namespace, name)
            .ok()
            .flatten()
            .and_then(|d| d.spec?.replicas),
        Kind::StatefulSet => k
            .get_opt::<StatefulSet>(namespace, name)
            .ok()
            .flatten()
            .and_then(|s| s.spec?.replicas),
    };
    spec.unwrap_or(-1)
}

/// Waits until the `kind` workload `name` asks for `want` replicas.
pub fn wait_replicas(
    namespace: &str,
    kind: Kind,
    name: &str,
    want: i32,
    timeout: Duration,
) -> Result<()> {
    wait_until(&format!("{name} at {want} replicas"), timeout, || {
        (replicas(namespace, kind, name) == want).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}; last {}", replicas(namespace, kind, name)))
}

/// The ClusterIP of Service `name` in `namespace`.
pub fn cluster_ip(namespace: &str, name: &str) -> Result<String> {
    kube()?
        .get::<Service>(namespace, name)?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("Service has no ClusterIP")
}

/// Names of the Ready pods of `app`.
pub fn ready_pods(namespace: &str, app: &str) -> Result<Vec<String>> {
    Ok(kube()?
        .list::<Pod>(namespace, &format!("app={app}"))?
        .into_iter()
        .filter(is_ready)
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// The IP of pod `name`.
pub fn pod_ip(namespace: &str, name: &str) -> Result<String> {
    kube()?
        .get::<Pod>(namespace, name)?
        .status
        .and_then(|s| s.pod_ip)
        .context("pod has no IP")
}

/// `http-get <url>` inside pod `pod` of `namespace`: the response, or the error text.
pub fn get_from_pod(namespace: &str, pod: &str, url: &str, timeout_secs: u32) -> Result<String> {
    kubectl(&[
        "-n",
        namespace,
        "exec",
        pod,
        "--",
        "/usr/local/bin/http-get",
        "--timeout",
        &timeout_secs.to_string(),
        url,
    ])
}

/// [`get_from_pod`] from the pod named `client`.
pub fn get_from_client_pod(namespace: &str, url: &str, timeout_secs: u32) -> Result<String> {
    get_from_pod(namespace, "client", url, timeout_secs)
}

/// The `/metrics` text of the admin server at `admin` (empty if it does not answer).
pub fn metrics_text(admin: &str) -> String {
    elasti::metrics_text(admin)
}

/// The value of the first metric line at `admin` that starts with `prefix` (labels
/// included).
pub fn metric_value(admin: &str, prefix: &str) -> Option<f64> {
    elasti::sample(&metrics_text(admin), prefix)
}

/// `GET path` over a plain TCP connection from this thread's network namespace.
pub fn get_from_netns(addr: &str, path: &str, timeout: Duration) -> Result<String> {
    elasti::http_get(addr, path, timeout)
}

/// Runs `f` on a thread inside the network namespace at `netns`.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    netns::run_in(std::path::Path::new(netns), f).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `{path}` of `what` (`kind/name`) in `namespace`, as `kubectl get -o jsonpath` prints
/// it, for objects the suites have no Rust type for (Leases, KEDA's ScaledObject); empty
/// when it cannot be read.
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

/// The logs of an operator or agent run in-process go to the test's captured output, so a
/// failing test shows what it did (`ELASTI_TEST_LOG` overrides the filter). Once per test
/// binary.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter =
            tracing_subscriber::EnvFilter::try_from_env("ELASTI_TEST_LOG").unwrap_or_else(|_| {
                "elasti_operator=debug,elasti_agent=debug,kube_runtime=info,warn".into()
            });
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}
