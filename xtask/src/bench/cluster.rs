//! The figures that need the local cluster, each against a baseline from the same run:
//!
//! - warm overhead: `wrk` through a serving Service's ClusterIP from a client in the pods'
//!   intercepted cgroup, with elasti installed (agent attached, ElastiService in serve
//!   mode) versus not installed at all, alternating rounds;
//! - proxy throughput in the grace window: `wrk` through the agent's proxy port versus
//!   straight to the pod;
//! - operator reaction: `POST /v1/wake` → 202 (the `/scale` patch is done by then) versus
//!   the same `/scale` patch sent straight to the apiserver.
use std::{
    os::unix::process::CommandExt,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::{cluster, cmd, images, paths, sample};

const NS: &str = "elasti-bench";
const PODS_CGROUP: &str = "/sys/fs/cgroup/unified/elasti-e2e";
const PKI: &str = "/var/lib/elasti-e2e/pki";
/// Quiet time before each measurement.
const SETTLE: Duration = Duration::from_secs(5);

/// One wrk run.
#[derive(Clone, Copy, Debug, Default)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn kubectl(args: &[&str]) -> Result<String> {
    cmd::output("kubectl", cluster::kubectl().args(args))
}

/// wrk from a process in the pods' cgroup subtree (intercepted like a pod), in the netns.
fn wrk(url: &str, secs: u32) -> Result<Wrk> {
    let cgroup = Path::new(PODS_CGROUP).join("bench-client");
    std::fs::create_dir_all(&cgroup)?;
    let procs = cgroup.join("cgroup.procs");
    let mut c = cluster::in_cluster("/usr/bin/wrk");
    c.args(["-t2", "-c32", &format!("-d{secs}s"), "--latency", url]);
    // SAFETY: only open/write/close between fork and exec.
    unsafe {
        c.pre_exec(move || std::fs::write(&procs, b"0"));
    }
    let out = cmd::output("wrk", &mut c);
    let _ = std::fs::remove_dir(&cgroup);
    parse_wrk(url, &out?)
}

fn parse_wrk(url: &str, out: &str) -> Result<Wrk> {
    let ms = |s: &str| -> Option<f64> {
        if let Some(v) = s.strip_suffix("us") {
            v.parse::<f64>().ok().map(|v| v / 1000.0)
        } else if let Some(v) = s.strip_suffix("ms") {
            v.parse().ok()
        } else if let Some(v) = s.strip_suffix('s') {
            v.parse::<f64>().ok().map(|v| v * 1000.0)
        } else {
            None
        }
    };
    let mut w = Wrk::default();
    for line in out.lines() {
        if line.contains("Non-2xx") || line.contains("Socket errors") {
            bail!("wrk saw errors against {url}: {line}");
        }
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["Requests/sec:", v] => w.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => w.p50_ms = ms(v).unwrap_or(0.0),
            ["99%", v] => w.p99_ms = ms(v).unwrap_or(0.0),
            _ => {}
        }
    }
    if w.rps == 0.0 {
        bail!("wrk output not understood:\n{out}");
    }
    Ok(w)
}

fn install_elasti() -> Result<()> {
    sample::install_elasti()?;
    cluster::apply(&format!(
        "apiVersion: elasti.truefoundry.com/v1alpha1\nkind: ElastiService\nmetadata: {{name: web, namespace: {NS}}}\nspec:\n  service: web\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}\n"
    ))?;
    wait("mode serve", || {
        Ok(kubectl(&[
            "-n",
            NS,
            "get",
            "elastiservice",
            "web",
            "-o",
            "jsonpath={.status.mode}",
        ])? == "serve")
    })
}

fn uninstall_elasti() -> Result<()> {
    kubectl(&[
        "-n",
        NS,
        "delete",
        "elastiservice",
        "web",
        "--ignore-not-found",
        "--timeout=60s",
    ])?;
    let local = paths::repo().join("deploy/local");
    kubectl(&[
        "delete",
        "-k",
        &local.display().to_string(),
        "--ignore-not-found",
        "--timeout=120s",
    ])?;
    Ok(())
}

fn wait(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if check().unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("bench: timed out waiting for {what}")
}

/// `curl` in the netns: its total time in milliseconds, and the HTTP code.
fn curl_timed(args: &[&str]) -> Result<(f64, u16)> {
    let out = cmd::output(
        "curl",
        cluster::in_cluster("/usr/bin/curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"])
            .args(args),
    )?;
    let (code, secs) = out.trim().split_once(' ').context("curl -w output")?;
    Ok((secs.parse::<f64>()? * 1000.0, code.parse()?))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

fn summary(v: &[f64]) -> serde_json::Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    json!({"n": s.len(), "min": s.first(), "median": median(&s), "max": s.last()})
}

/// Runs every cluster figure on a cluster of its own; returns Markdown rows and JSON.
pub fn run(rounds: usize) -> Result<(String, serde_json::Value)> {
    images::build()?;
    cluster::up()?;
    let result = measure(rounds);
    let down = cluster::down();
    let r = result?;
    down?;
    Ok(r)
}

fn measure(rounds: usize) -> Result<(String, serde_json::Value)> {
    cluster::apply(&sample::web(NS))?;
    kubectl(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deploy/web",
        "--timeout=120s",
    ])?;
    let ip = kubectl(&[
        "-n",
        NS,
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let url = format!("http://{ip}/");
    let secs = 8;

    // 1. Warm overhead, alternating rounds.
    let (mut base, mut with) = (Vec::new(), Vec::new());
    let p = cmd::Progress::start(format!(
        "warm overhead: {rounds} rounds x 2 x {secs}s of wrk"
    ));
    // ABBA order, and a settle period after each install (pods starting, probes) so
    // neither side is measured while the other's setup still runs.
    for round in 0..rounds {
        let measure_base = |base: &mut Vec<Wrk>| -> Result<()> {
            std::thread::sleep(SETTLE);
            base.push(wrk(&url, secs)?);
            Ok(())
        };
        if round % 2 == 0 {
            measure_base(&mut base)?;
            install_elasti()?;
            std::thread::sleep(SETTLE);
            with.push(wrk(&url, secs)?);
            uninstall_elasti()?;
        } else {
            install_elasti()?;
            std::thread::sleep(SETTLE);
            with.push(wrk(&url, secs)?);
            uninstall_elasti()?;
            measure_base(&mut base)?;
        }
    }
    p.done();

    // 2. Through the agent's proxy port versus straight to the pod.
    install_elasti()?;
    let jsonpath = |what: &str, path: &str| {
        kubectl(&["-n", NS, "get", what, "-o", &format!("jsonpath={path}")])
    };
    let proxy_port = jsonpath("elastiservice/web", "{.status.proxyPorts[0].proxyPort}")?;
    let pod_ip = kubectl(&[
        "-n",
        NS,
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ])?;
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    let p = cmd::Progress::start("grace-window throughput: agent proxy port vs pod");
    for _ in 0..rounds {
        direct.push(wrk(&format!("http://{pod_ip}:8080/"), secs)?);
        proxied.push(wrk(&format!("http://169.254.20.11:{proxy_port}/"), secs)?);
    }
    p.done();

    // 3. Operator reaction: wake → 202 (scale patched) vs the same patch straight.
    let token = kubectl(&[
        "-n",
        "elasti-system",
        "create",
        "token",
        "elasti-agent",
        "--audience",
        "elasti-operator",
    ])?;
    let operator = kubectl(&[
        "-n",
        "elasti-system",
        "get",
        "svc",
        "elasti-operator",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let scale_url =
        format!("https://10.250.0.2:6443/apis/apps/v1/namespaces/{NS}/deployments/web/scale");
    let auth = format!("Authorization: Bearer {}", token.trim());
    let wake_body = format!(r#"{{"namespace":"{NS}","service":"web"}}"#);
    let wake_url = format!("http://{operator}:8080/v1/wake");
    let (ca, cert, key) = (
        format!("{PKI}/ca.crt"),
        format!("{PKI}/admin.crt"),
        format!("{PKI}/admin.key"),
    );
    let (mut wake_ms, mut patch_ms) = (Vec::new(), Vec::new());
    let p = cmd::Progress::start("operator reaction: 20 wakes vs 20 direct /scale patches");
    for i in 0..40 {
        kubectl(&["-n", NS, "scale", "deploy/web", "--replicas=0"])?;
        let wake = i % 2 == 0;
        let (ms, code) = if wake {
            curl_timed(&["-X", "POST", "-H", &auth, "-d", &wake_body, &wake_url])?
        } else {
            curl_timed(&[
                "--cacert",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/merge-patch+json",
                "-d",
                r#"{"spec":{"replicas":1}}"#,
                &scale_url,
            ])?
        };
        if !(200..300).contains(&code) {
            bail!("bench: reaction round {i} answered {code}");
        }
        if wake {
            wake_ms.push(ms);
        } else {
            patch_ms.push(ms);
        }
    }
    p.done();
    uninstall_elasti()?;

    let rps = |v: &[Wrk]| v.iter().map(|w| w.rps).collect::<Vec<_>>();
    let p50 = |v: &[Wrk]| median(&v.iter().map(|w| w.p50_ms).collect::<Vec<_>>());
    let p99 = |v: &[Wrk]| median(&v.iter().map(|w| w.p99_ms).collect::<Vec<_>>());
    let (b, w) = (median(&rps(&base)), median(&rps(&with)));
    let (d, x) = (median(&rps(&direct)), median(&rps(&proxied)));
    let (pm, wm) = (median(&patch_ms), median(&wake_ms));
    let mut rows = String::new();
    rows.push_str(&format!(
        "| warm ClusterIP requests (wrk c=32, {secs}s x {rounds}), req/s | {b:.0} | {w:.0} | baseline/elasti {:.3} |\n",
        b / w.max(1e-9)
    ));
    rows.push_str(&format!(
        "| warm latency p50 / p99 | {:.2} / {:.2} ms | {:.2} / {:.2} ms | elasti/baseline {:.3} / {:.3} |\n",
        p50(&base),
        p99(&base),
        p50(&with),
        p99(&with),
        p50(&with) / p50(&base).max(1e-9),
        p99(&with) / p99(&base).max(1e-9)
    ));
    rows.push_str(&format!(
        "| proxy in path (grace window), req/s | pod direct {d:.0} | via agent {x:.0} | direct/agent {:.3} |\n",
        d / x.max(1e-9)
    ));
    rows.push_str(&format!(
        "| proxy in path, p50 / p99 | {:.2} / {:.2} ms | {:.2} / {:.2} ms | |\n",
        p50(&direct),
        p99(&direct),
        p50(&proxied),
        p99(&proxied)
    ));
    rows.push_str(&format!(
        "| operator reaction: wake -> 202 with /scale patched (median of 20) | direct /scale PATCH {pm:.1} ms | {wm:.1} ms | +{:.1} ms |\n",
        wm - pm
    ));
    let json = json!({
        "warm": {"baseline_rps": summary(&rps(&base)), "elasti_rps": summary(&rps(&with))},
        "grace_window": {"direct_rps": summary(&rps(&direct)), "proxied_rps": summary(&rps(&proxied))},
        "operator_reaction_ms": {"direct_patch": summary(&patch_ms), "wake": summary(&wake_ms)},
    });
    Ok((rows, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let out = "Running 8s test\n  Latency Distribution\n     50%  412.00us\n     75%  1.02ms\n     99%    3.10ms\n  1000 requests in 8.00s\nRequests/sec:   1250.50\n";
        let w = parse_wrk("u", out).unwrap_or_else(|e| panic!("{e}"));
        assert!((w.rps - 1250.5).abs() < 1e-6);
        assert!((w.p50_ms - 0.412).abs() < 1e-6);
        assert!((w.p99_ms - 3.1).abs() < 1e-6);
        assert!(parse_wrk("u", "Non-2xx or 3xx responses: 5\nRequests/sec: 1\n").is_err());
    }
}
