//! The figures that need the kind cluster, each against a baseline from the same run:
//!
//! - warm overhead: `wrk` through a serving Service's ClusterIP from a client in the pods'
//!   intercepted cgroup, with elasti installed (agent attached, ElastiService in serve
//!   mode) versus not installed at all, alternating rounds;
//! - operator reaction to a wake: `POST /v1/wake` → 202 (the `/scale` patch is done by
//!   then) versus the same `/scale` patch sent straight to the apiserver;
//! - cold requests, split into wake, the pod's own start and the hand-off
//!   ([`cold_start`]);
//! - operator reaction to idleness: cooldown over → scaled to zero ([`scale_down`]);
//! - the operator with a thousand ElastiServices: reconciled after a restart, its memory,
//!   a hundred wakes at once ([`operator_scale`]);
//! - the agent beside ten thousand Services it does not manage: memory, CPU, release
//!   latency ([`agent_scale`]).
mod agent_scale;
mod cold_start;
mod operator_scale;
mod scale_down;
mod watch;

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use base64::Engine;
use elasti_testbed::{
    cmd, elasti,
    kind::{self, Cluster},
    kube::kube,
    objects::App,
    paths,
    stats::{median, summarize},
    wrk::{self, Wrk},
};
use serde_json::json;

use crate::{cluster as xtask_cluster, images};

const NS: &str = "elasti-bench";
/// Quiet time before each measurement.
const SETTLE: Duration = Duration::from_secs(5);
/// Cold requests (and as many baseline cold starts) in the wake-up figures.
const COLD_STARTS: usize = 20;
/// Cooldowns ending in a scale-down.
const SCALE_DOWNS: usize = 10;

/// The cluster the figures run on, found once.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::discover().unwrap_or_else(|e| panic!("bench: {e:#}")))
}

fn kubectl(args: &[&str]) -> Result<String> {
    cmd::output("kubectl", cluster().kubectl().args(args))
}

/// `kubectl -n elasti-bench get <what> -o jsonpath=<path>`.
fn jsonpath(what: &str, path: &str) -> Result<String> {
    kubectl(&["-n", NS, "get", what, "-o", &format!("jsonpath={path}")])
}

/// Runs `program` on the bench's node (its network namespace) from a cgroup under that
/// node's cgroup, so its connects are intercepted exactly like a pod's there (it shares the
/// node's network, like a hostNetwork pod). Returns its standard output.
fn output_in_pods_cgroup(program: &str, args: &[&str]) -> Result<String> {
    let node = cluster().home();
    let cgroup = node.cgroup()?.join("elasti-bench-client");
    std::fs::create_dir_all(&cgroup)?;
    let procs = cgroup.join("cgroup.procs");
    let mut c = cluster().command_on(node, program);
    c.args(args);
    // SAFETY: only open/write/close between fork and exec.
    unsafe {
        c.pre_exec(move || std::fs::write(&procs, b"0"));
    }
    let out = cmd::output(program, &mut c);
    let _ = std::fs::remove_dir(&cgroup);
    out
}

/// wrk from the pods' cgroup subtree.
fn wrk(url: &str, secs: u32) -> Result<Wrk> {
    let args = wrk::args(url, 32, secs);
    let out = output_in_pods_cgroup(
        wrk::PROGRAM,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    wrk::parse(url, &out)
}

fn install_elasti() -> Result<()> {
    elasti::install_on(cluster(), &[])?;
    kube()?.apply(NS, &App::http("web").elastiservice())?;
    wait("mode serve", || {
        Ok(jsonpath("elastiservice/web", "{.status.mode}")? == "serve")
    })
}

/// Deletes the ElastiService `web` (its finalizer runs: a target at zero is scaled back).
fn delete_elastiservice() -> Result<()> {
    kubectl(&[
        "-n",
        NS,
        "delete",
        "elastiservice",
        "web",
        "--ignore-not-found",
        "--timeout=60s",
    ])?;
    Ok(())
}

/// elasti gone: the ElastiService first (its finalizer needs the operator), then the chart,
/// then its pods.
fn uninstall_elasti() -> Result<()> {
    delete_elastiservice()?;
    cmd::output(
        "helm uninstall",
        cluster().command(paths::helm_bin().join("helm")).args([
            "uninstall",
            "elasti",
            "-n",
            elasti::NAMESPACE,
            "--wait",
            "--timeout",
            "120s",
        ]),
    )?;
    wait("elasti's pods gone", || {
        Ok(kubectl(&["-n", elasti::NAMESPACE, "get", "pods", "-o", "name"])?.is_empty())
    })
}

fn wait(what: &str, check: impl FnMut() -> Result<bool>) -> Result<()> {
    wait_for(what, Duration::from_secs(120), check)
}

/// [`wait`] with its own timeout.
fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("bench: timed out waiting for {what}")
}

const CURL_TIMED: [&str; 5] = ["-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"];

fn parse_curl_timed(out: &str) -> Result<(f64, u16)> {
    let (code, secs) = out.trim().split_once(' ').context("curl -w output")?;
    Ok((secs.parse::<f64>()? * 1000.0, code.parse()?))
}

/// `curl` on the bench's node: its total time in milliseconds, and the HTTP code.
fn curl_timed(args: &[&str]) -> Result<(f64, u16)> {
    // From the bench's node: ClusterIPs (the operator's wake Service) answer only there.
    parse_curl_timed(&cmd::output(
        "curl",
        cluster()
            .command_on(cluster().home(), "/usr/bin/curl")
            .args(CURL_TIMED)
            .args(args),
    )?)
}

/// [`curl_timed`] from the pods' cgroup subtree (intercepted like a pod).
fn curl_in_pods_cgroup(args: &[&str]) -> Result<(f64, u16)> {
    let args: Vec<&str> = CURL_TIMED.iter().chain(args).copied().collect();
    parse_curl_timed(&output_in_pods_cgroup("/usr/bin/curl", &args)?)
}

/// The admin credentials of the cluster's kubeconfig as files curl takes: CA, certificate,
/// key.
fn admin_pki() -> Result<&'static [PathBuf; 3]> {
    static PKI: OnceLock<[PathBuf; 3]> = OnceLock::new();
    if let Some(p) = PKI.get() {
        return Ok(p);
    }
    let text = std::fs::read_to_string(Cluster::kubeconfig())?;
    let kc: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let dir = paths::cluster_state().join("bench-pki");
    std::fs::create_dir_all(&dir)?;
    let mut files = Vec::new();
    for (name, value) in [
        (
            "ca.crt",
            &kc["clusters"][0]["cluster"]["certificate-authority-data"],
        ),
        (
            "admin.crt",
            &kc["users"][0]["user"]["client-certificate-data"],
        ),
        ("admin.key", &kc["users"][0]["user"]["client-key-data"]),
    ] {
        let b64 = value
            .as_str()
            .with_context(|| format!("kubeconfig: no {name}"))?;
        let path = dir.join(name);
        std::fs::write(
            &path,
            base64::engine::general_purpose::STANDARD.decode(b64)?,
        )?;
        files.push(path);
    }
    let files: [PathBuf; 3] = files.try_into().map_err(|_| anyhow::anyhow!("pki"))?;
    Ok(PKI.get_or_init(|| files))
}

/// `PATCH …/deployments/web/scale` straight to the apiserver (admin client certificate),
/// as the operator sends it; its time in milliseconds.
fn scale_patch(replicas: u32) -> Result<f64> {
    let url = format!(
        "https://{}:6443/apis/apps/v1/namespaces/{NS}/deployments/web/scale",
        cluster().control_plane().ip
    );
    let [ca, cert, key] = admin_pki()?;
    let body = format!(r#"{{"spec":{{"replicas":{replicas}}}}}"#);
    let (ms, code) = curl_timed(&[
        "--cacert",
        &ca.display().to_string(),
        "--cert",
        &cert.display().to_string(),
        "--key",
        &key.display().to_string(),
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/merge-patch+json",
        "-d",
        &body,
        &url,
    ])?;
    if !(200..300).contains(&code) {
        bail!("bench: /scale patch answered {code}");
    }
    Ok(ms)
}

/// Waits until the bench node's agent steers connects to `web`'s ClusterIP to itself.
fn wait_intercepting() -> Result<()> {
    let line = format!("{} 1", elasti::port_series("intercepting", NS, "web", 80));
    let metrics = format!(
        "http://{}/metrics",
        elasti::agent_admin(&cluster().home().ip)
    );
    wait("the agent intercepting web", || {
        let text = cmd::output(
            "curl",
            cluster().command("/usr/bin/curl").args(["-s", &metrics]),
        )?;
        Ok(text.lines().any(|l| l == line))
    })
}

/// `app`'s Deployment at zero, its pods bound to a node label no node has: it can be
/// scaled, but no pod of it ever runs, so a figure with many of them loads the apiserver
/// and elasti, not the machine's two cores with pods.
fn unschedulable(app: &App) -> k8s_openapi::api::apps::v1::Deployment {
    let mut d = app.clone().replicas(0).deployment();
    if let Some(pod) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pod.node_selector = Some(std::collections::BTreeMap::from([(
            "elasti.bench/nowhere".into(),
            "true".into(),
        )]));
    }
    d
}

/// The `/proc` directories of the processes named `comm` in the pod whose UID is `uid`:
/// this machine's `/proc` sees the node containers' processes, and each pod's cgroup path
/// names its UID.
fn pod_processes(comm: &str, uid: &str) -> Result<Vec<PathBuf>> {
    let underscored = uid.replace('-', "_");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let dir = entry?.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if read("comm").trim() != comm {
            continue;
        }
        let cgroup = read("cgroup");
        if cgroup.contains(uid) || cgroup.contains(&underscored) {
            found.push(dir);
        }
    }
    if found.is_empty() {
        bail!("bench: no {comm} process of pod {uid} in /proc");
    }
    Ok(found)
}

fn summary(v: &[f64]) -> serde_json::Value {
    summarize(v).json()
}

/// One section of the cluster figures; `cargo xtask bench --figures` picks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Figure {
    /// Warm overhead: ClusterIP throughput and latency, elasti installed vs not.
    Warm,
    /// Operator reaction to a wake call.
    Wake,
    /// Cold requests, broken down, vs cold starts with no request.
    Cold,
    /// Operator reaction to idleness at the cooldown's end.
    ScaleDown,
    /// The operator with a thousand ElastiServices: restart, memory, concurrent wakes.
    OperatorScale,
    /// The agent beside ten thousand unmanaged Services: memory, CPU, release latency.
    AgentScale,
}

/// Markdown rows and the JSON of one section.
type Section = (String, serde_json::Value);

/// Runs the chosen cluster figures on a cluster of its own; returns Markdown rows and JSON.
pub fn run(rounds: usize, figures: &[Figure]) -> Result<Section> {
    images::build()?;
    xtask_cluster::up(kind::DEFAULT_WORKERS)?;
    let result = measure(rounds, figures);
    let down = kind::down();
    let r = result?;
    down?;
    Ok(r)
}

fn measure(rounds: usize, figures: &[Figure]) -> Result<Section> {
    let k = kube()?;
    k.create_namespace(NS)?;
    // The client (wrk, curl) runs on the bench node; so does the pod, as on one node.
    App::http("web")
        .on_node(&cluster().home().name)
        .apply(k, NS)?;
    kubectl(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deploy/web",
        "--timeout=120s",
    ])?;
    let ip = jsonpath("svc/web", "{.spec.clusterIP}")?;
    let url = format!("http://{ip}/");
    let mut rows = String::new();
    let mut json = serde_json::Map::new();
    let mut add = |name: &str, (r, j): Section| {
        // Shown as soon as measured: a later section failing does not lose it.
        println!("{r}");
        rows.push_str(&r);
        json.insert(name.into(), j);
    };
    if figures.contains(&Figure::Warm) {
        add("warm", warm(&url, rounds)?);
    }
    install_elasti()?;
    if figures.contains(&Figure::Wake) {
        add("operator_reaction_ms", wake()?);
    }
    if figures.contains(&Figure::Cold) {
        let p = cmd::Progress::start(format!(
            "cold starts: {COLD_STARTS} requests through elasti vs {COLD_STARTS} straight /scale patches"
        ));
        let cold = cold_start::measure(&url, COLD_STARTS)?;
        p.done();
        add("cold_start", cold.report());
    }
    if figures.contains(&Figure::ScaleDown) {
        let p = cmd::Progress::start(format!(
            "scale-down reaction: {SCALE_DOWNS} cooldowns ending with Prometheus reading idle"
        ));
        let down = scale_down::measure(SCALE_DOWNS)?;
        p.done();
        add("scale_down", down.report());
    }
    if figures.contains(&Figure::OperatorScale) {
        add("operator_at_scale", operator_scale::measure()?);
    }
    if figures.contains(&Figure::AgentScale) {
        add("agent_at_scale", agent_scale::measure()?);
    }
    uninstall_elasti()?;
    Ok((rows, json.into()))
}

const WRK_SECS: u32 = 8;

fn rps(v: &[Wrk]) -> Vec<f64> {
    v.iter().map(|w| w.rps).collect()
}

fn p50(v: &[Wrk]) -> f64 {
    median(&v.iter().map(|w| w.p50_ms).collect::<Vec<_>>())
}

fn p99(v: &[Wrk]) -> f64 {
    median(&v.iter().map(|w| w.p99_ms).collect::<Vec<_>>())
}

/// Warm overhead, alternating rounds with elasti installed and not at all.
fn warm(url: &str, rounds: usize) -> Result<Section> {
    let secs = WRK_SECS;
    let (mut base, mut with) = (Vec::new(), Vec::new());
    let p = cmd::Progress::start(format!(
        "warm overhead: {rounds} rounds x 2 x {secs}s of wrk"
    ));
    // ABBA order, and a settle period after each install (pods starting, probes) so
    // neither side is measured while the other's setup still runs.
    for round in 0..rounds {
        let measure_base = |base: &mut Vec<Wrk>| -> Result<()> {
            std::thread::sleep(SETTLE);
            base.push(wrk(url, secs)?);
            Ok(())
        };
        if round % 2 == 0 {
            measure_base(&mut base)?;
            install_elasti()?;
            std::thread::sleep(SETTLE);
            with.push(wrk(url, secs)?);
            uninstall_elasti()?;
        } else {
            install_elasti()?;
            std::thread::sleep(SETTLE);
            with.push(wrk(url, secs)?);
            uninstall_elasti()?;
            measure_base(&mut base)?;
        }
    }
    p.done();
    let (b, w) = (median(&rps(&base)), median(&rps(&with)));
    let rows = format!(
        "| warm ClusterIP requests (wrk c=32, {secs}s x {rounds}), req/s | {b:.0} | {w:.0} | baseline/elasti {:.3} |\n\
         | warm latency p50 / p99 | {:.2} / {:.2} ms | {:.2} / {:.2} ms | elasti/baseline {:.3} / {:.3} |\n",
        b / w.max(1e-9),
        p50(&base),
        p99(&base),
        p50(&with),
        p99(&with),
        p50(&with) / p50(&base).max(1e-9),
        p99(&with) / p99(&base).max(1e-9)
    );
    let json = json!({"baseline_rps": summary(&rps(&base)), "elasti_rps": summary(&rps(&with))});
    Ok((rows, json))
}

/// An agent's credentials and the operator's wake URL: (`Authorization` header, URL).
fn wake_endpoint() -> Result<(String, String)> {
    let token = kubectl(&[
        "-n",
        elasti::NAMESPACE,
        "create",
        "token",
        "elasti-agent",
        "--audience",
        "elasti-operator",
    ])?;
    let operator = kubectl(&[
        "-n",
        elasti::NAMESPACE,
        "get",
        "svc",
        "elasti-operator",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    Ok((
        format!("Authorization: Bearer {}", token.trim()),
        format!("http://{operator}:8080/v1/wake"),
    ))
}

/// Operator reaction: wake → 202 (scale patched) vs the same patch straight.
fn wake() -> Result<Section> {
    let (auth, wake_url) = wake_endpoint()?;
    let wake_body = format!(r#"{{"namespace":"{NS}","service":"web"}}"#);
    // The Deployment's replicas as the apiserver publishes them: when the patch landed.
    let replicas = watch::Watch::start(
        "Deployment",
        &["deployment", "web", "-n", NS],
        r#"{.spec.replicas}{"\n"}"#,
    )?;
    let (mut wake_ms, mut patch_ms) = (Vec::new(), Vec::new());
    let (mut wake_to_patched, mut patch_to_patched) = (Vec::new(), Vec::new());
    let p = cmd::Progress::start("operator reaction: 20 wakes vs 20 direct /scale patches");
    for i in 0..40 {
        scale_patch(0)?;
        replicas.first(
            SystemTime::now() - Duration::from_secs(5),
            Duration::from_secs(30),
            |l| l.trim() == "0",
        )?;
        let wake = i % 2 == 0;
        let ms = if wake {
            let (ms, code) = curl_timed(&["-X", "POST", "-H", &auth, "-d", &wake_body, &wake_url])?;
            if code != 202 {
                bail!("bench: wake round {i} answered {code}");
            }
            ms
        } else {
            scale_patch(1)?
        };
        // Dated from curl's own timer, as in the cold starts.
        let sent = SystemTime::now() - Duration::from_secs_f64(ms / 1e3);
        let (patched, _) = replicas.first(sent, Duration::from_secs(30), |l| l.trim() == "1")?;
        let to_patched = watch::ms_between(sent, patched);
        if wake {
            wake_ms.push(ms);
            wake_to_patched.push(to_patched);
        } else {
            patch_ms.push(ms);
            patch_to_patched.push(to_patched);
        }
    }
    p.done();
    let (pm, wm) = (median(&patch_ms), median(&wake_ms));
    let (pp, wp) = (median(&patch_to_patched), median(&wake_to_patched));
    let rows = format!(
        "| operator reaction: wake call → `/scale` patch seen in the Deployment watch (median of 20) | direct `/scale` PATCH → seen {pp:.1} ms | {wp:.1} ms | {:+.1} ms |\n\
         | operator reaction: wake call → 202 (after the patch, `lastScaledUpTime` and the event) | direct `/scale` PATCH → 200 {pm:.1} ms | {wm:.1} ms | {:+.1} ms |\n",
        wp - pp,
        wm - pm
    );
    let json = json!({
        "direct_patch": summary(&patch_ms),
        "wake": summary(&wake_ms),
        "direct_patch_to_seen": summary(&patch_to_patched),
        "wake_to_patch_seen": summary(&wake_to_patched),
    });
    Ok((rows, json))
}
