//! The operator with many ElastiServices: [`MANY`] of them, each with its own Service and
//! a Deployment at zero whose pods can never be scheduled (a nodeSelector no node has), so
//! the figure loads the apiserver and the operator, not the machine's two cores with pods.
//!
//! - **create → all reconciled:** from the first apply until every ElastiService has a
//!   `mode`;
//! - **restart → all reconciled again:** the operator's pods deleted, until the new
//!   leader's reconcile count (its `/metrics`) reaches [`MANY`];
//! - **memory:** the leader's resident set (`VmRSS`), read from `/proc` on this machine,
//!   which sees the node containers' processes;
//! - **concurrent wakes:** [`WAKES`] wakes of different services sent at once (one curl,
//!   in parallel), each until its Deployment's `spec.replicas` is 1 in a watch. Baselines:
//!   one wake alone, the same way; and as many `/scale` patches sent straight to the
//!   apiserver at once, over a connection each (HTTP/1.1, as the operator's client speaks
//!   it) and over one connection (HTTP/2).
use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use elasti_api::ElastiService;
use elasti_testbed::{
    cmd, elasti,
    kube::{apply_with, kube},
    objects::App,
    stats::summarize,
};
use serde_json::json;

use super::{
    Section, cluster, kubectl, summary, wait_for,
    watch::{Watch, ms_between},
};

const NS: &str = "elasti-bench-many";
/// ElastiServices (and Services, and Deployments).
const MANY: usize = 1000;
/// Wakes sent at once.
const WAKES: usize = 100;
/// Server-side applies in flight while creating the objects.
const APPLY_CONCURRENCY: usize = 16;
const RECONCILED_TIMEOUT: Duration = Duration::from_secs(600);

fn name(i: usize) -> String {
    format!("s{i:04}")
}

/// Every object, [`APPLY_CONCURRENCY`] services at a time: Deployment number `i` (at
/// zero, unschedulable), its Service and its ElastiService.
fn create_all() -> Result<()> {
    kube()?.for_each_concurrently(MANY, APPLY_CONCURRENCY, |c, i| async move {
        let app = App::http(&name(i));
        apply_with(c.clone(), NS, &super::unschedulable(&app)).await?;
        apply_with(c.clone(), NS, &app.service()).await?;
        apply_with(c, NS, &app.elastiservice()).await?;
        Ok(())
    })
}

/// How many of the ElastiServices have a `mode`.
fn reconciled() -> Result<usize> {
    let all: Vec<ElastiService> = kube()?.list(NS, "")?;
    Ok(all
        .iter()
        .filter(|e| e.status.as_ref().is_some_and(|s| s.mode.is_some()))
        .count())
}

/// An operator pod: name, IP, UID.
struct OperatorPod {
    name: String,
    ip: String,
    uid: String,
}

fn operator_pods() -> Result<Vec<OperatorPod>> {
    let out = kubectl(&[
        "-n",
        elasti::NAMESPACE,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=elasti-operator",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.status.podIP} {.metadata.deletionTimestamp}{"\n"}{end}"#,
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            // Not terminating, with an IP.
            (w.len() == 3).then(|| OperatorPod {
                name: w[0].into(),
                uid: w[1].into(),
                ip: w[2].into(),
            })
        })
        .collect())
}

/// The pod's `/metrics`: whether it leads, and how many reconciles it has finished.
fn leader_reconciles(pod: &OperatorPod) -> Result<Option<u64>> {
    let text = cmd::output(
        "curl",
        cluster()
            .command_on(cluster().home(), "/usr/bin/curl")
            .args(["-s", "--max-time", "2"])
            .arg(format!("http://{}:9090/metrics", pod.ip)),
    )?;
    let value = |metric: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(metric)?.trim().parse::<f64>().ok())
    };
    if value("elasti_operator_leader ") != Some(1.0) {
        return Ok(None);
    }
    Ok(value("elasti_operator_reconcile_duration_seconds_count ").map(|v| v as u64))
}

/// The leading operator pod, once one leads.
fn leader() -> Result<(OperatorPod, u64)> {
    let deadline = Instant::now() + RECONCILED_TIMEOUT;
    while Instant::now() < deadline {
        for pod in operator_pods()? {
            if let Ok(Some(n)) = leader_reconciles(&pod) {
                return Ok((pod, n));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("bench: no operator pod leads")
}

/// Sends the curl transfers `transfers` (each its own arguments) at once, from the bench's
/// node, with curl's `global` options; fails unless every one answered `code`. Returns
/// when they were sent.
fn at_once(transfers: &[Vec<String>], global: &[&str], code: &str) -> Result<SystemTime> {
    let mut args: Vec<String> = vec![
        "-Z".into(),
        "--parallel-immediate".into(),
        "--parallel-max".into(),
        transfers.len().max(1).to_string(),
    ];
    for (i, t) in transfers.iter().enumerate() {
        if i > 0 {
            args.push("--next".into());
        }
        args.extend(global.iter().map(|a| a.to_string()));
        args.extend(["-s", "-o", "/dev/null", "-w", "%{http_code}\n"].map(String::from));
        args.extend(t.iter().cloned());
    }
    let sent = SystemTime::now();
    let out = cmd::output(
        "curl",
        cluster()
            .command_on(cluster().home(), "/usr/bin/curl")
            .args(&args),
    )?;
    let refused: Vec<&str> = out.lines().filter(|c| c.trim() != code).collect();
    if !refused.is_empty() {
        bail!(
            "bench: {} of {} requests not answered {code}: {refused:?}",
            refused.len(),
            transfers.len()
        );
    }
    Ok(sent)
}

/// Per service of `services`, `sent` → its Deployment at 1 replica in `watch`, ms.
fn until_scaled(services: &[String], watch: &Watch, sent: SystemTime) -> Result<Vec<f64>> {
    let mut left: BTreeSet<&str> = services.iter().map(String::as_str).collect();
    let mut took = Vec::new();
    watch.until(sent, Duration::from_secs(120), |at, line| {
        let mut w = line.split_whitespace();
        if let (Some(n), Some("1")) = (w.next(), w.next())
            && left.remove(n)
        {
            took.push(ms_between(sent, at));
        }
        left.is_empty()
    })?;
    Ok(took)
}

/// Sends a wake for each of `services` at once and returns, per service, wake sent → its
/// Deployment at 1 replica in `watch`, ms.
fn wakes_at_once(
    services: &[String],
    watch: &Watch,
    (auth, url): &(String, String),
) -> Result<Vec<f64>> {
    let transfers: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let body = format!(r#"{{"namespace":"{NS}","service":"{s}"}}"#);
            ["-X", "POST", "-H", auth, "-d", &body, url]
                .map(String::from)
                .to_vec()
        })
        .collect();
    let sent = at_once(&transfers, &[], "202")?;
    until_scaled(services, watch, sent)
}

/// The baseline of [`wakes_at_once`]: the same `/scale` patch the operator sends, straight
/// to the apiserver (admin client certificate) for each of `services` at once, over
/// `http` (`--http1.1`: a connection per request, as the operator's client makes them;
/// `--http2`: one connection for all).
fn patches_at_once(services: &[String], watch: &Watch, http: &str) -> Result<Vec<f64>> {
    let [ca, cert, key] = super::admin_pki()?;
    let (ca, cert, key) = (
        ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let api = format!("https://{}:6443", cluster().control_plane().ip);
    let transfers: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let url = format!("{api}/apis/apps/v1/namespaces/{NS}/deployments/{s}/scale");
            [
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/merge-patch+json",
                "-d",
                r#"{"spec":{"replicas":1}}"#,
                &url,
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    let global = ["--cacert", &ca, "--cert", &cert, "--key", &key, http];
    let sent = at_once(&transfers, &global, "200")?;
    until_scaled(services, watch, sent)
}

/// The whole figure; leaves the namespace deleted.
pub fn measure() -> Result<Section> {
    let k = kube()?;
    k.create_namespace(NS)?;
    let result = measure_in_namespace();
    let deleted = kubectl(&["delete", "namespace", NS, "--timeout=600s"]);
    let r = result?;
    deleted?;
    Ok(r)
}

fn measure_in_namespace() -> Result<Section> {
    let p = cmd::Progress::start(format!(
        "operator at scale: {MANY} ElastiServices, a restart, {WAKES} wakes at once"
    ));
    let started = Instant::now();
    create_all()?;
    let applied = started.elapsed();
    wait_for("every ElastiService reconciled", RECONCILED_TIMEOUT, || {
        Ok(reconciled()? == MANY)
    })?;
    let created_to_reconciled = started.elapsed();

    let (before, _) = leader()?;
    let rss_before =
        elasti_testbed::procs::rss_bytes(&super::pod_processes("elasti-operator", &before.uid)?)?;
    let old: BTreeSet<String> = operator_pods()?.into_iter().map(|p| p.name).collect();
    let restarted = Instant::now();
    kubectl(&[
        "-n",
        elasti::NAMESPACE,
        "delete",
        "pods",
        "-l",
        "app.kubernetes.io/name=elasti-operator",
        "--wait=false",
    ])?;
    let mut new_leader = None;
    wait_for(
        "the new leader to reconcile every ElastiService",
        RECONCILED_TIMEOUT,
        || {
            for pod in operator_pods()? {
                if old.contains(&pod.name) {
                    continue;
                }
                if let Ok(Some(n)) = leader_reconciles(&pod)
                    && n >= MANY as u64
                {
                    new_leader = Some(pod);
                    return Ok(true);
                }
            }
            Ok(false)
        },
    )?;
    let restart_to_reconciled = restarted.elapsed();
    let leader = new_leader.context("bench: no new leader")?;
    let rss_after =
        elasti_testbed::procs::rss_bytes(&super::pod_processes("elasti-operator", &leader.uid)?)?;

    // The wakes are timed once the restart's catch-up is over: the leader down to its
    // steady rate, each ElastiService once per poll (30 s), with half as much again.
    let steady = (3 * MANY / 30) as u64 * 3 / 2;
    let mut last = None;
    wait_for(
        "the new leader at its steady rate",
        RECONCILED_TIMEOUT,
        || {
            let now = leader_reconciles(&leader)?;
            let calm = matches!((last, now), (Some(a), Some(b)) if b.saturating_sub(a) <= steady);
            last = now;
            if !calm {
                std::thread::sleep(Duration::from_secs(3));
            }
            Ok(calm)
        },
    )?;
    let endpoint = super::wake_endpoint()?;
    let watch = Watch::start(
        "Deployment",
        &["deployments", "-n", NS],
        r#"{.metadata.name} {.spec.replicas}{"\n"}"#,
    )?;
    // The watch's first listing of every Deployment has gone by.
    std::thread::sleep(Duration::from_secs(2));
    // Each new replica judges the agent's token once (a TokenReview, then cached): one wake
    // sent to each pod first, so the wakes at once do not meet its review limit.
    for (i, pod) in operator_pods()?.iter().enumerate() {
        let url = format!("http://{}:8080/v1/wake", pod.ip);
        let body = format!(
            r#"{{"namespace":"{NS}","service":"{}"}}"#,
            name(MANY / 2 + i)
        );
        let (_, code) = super::curl_timed(&["-X", "POST", "-H", &endpoint.0, "-d", &body, &url])?;
        if code != 202 {
            bail!("bench: the warm-up wake to {} answered {code}", pod.name);
        }
    }
    let mut alone = Vec::new();
    for i in 0..5 {
        alone.extend(wakes_at_once(&[name(MANY - 1 - i)], &watch, &endpoint)?);
    }
    let many: Vec<String> = (0..WAKES).map(name).collect();
    let together = wakes_at_once(&many, &watch, &endpoint)?;
    // The baselines: as many straight patches at once, of services no wake touched.
    let straight_h1: Vec<String> = (WAKES..2 * WAKES).map(name).collect();
    let straight_h1 = patches_at_once(&straight_h1, &watch, "--http1.1")?;
    let straight_h2: Vec<String> = (2 * WAKES..3 * WAKES).map(name).collect();
    let straight_h2 = patches_at_once(&straight_h2, &watch, "--http2")?;
    p.done();

    let (a, t) = (summarize(&alone), summarize(&together));
    let (h1, h2) = (summarize(&straight_h1), summarize(&straight_h2));
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rows = format!(
        "| {MANY} ElastiServices applied ({:.1} s) → every one reconciled | | {:.1} s | |\n\
         | operator restart (pods deleted) → the new leader has reconciled all {MANY} | | {:.1} s | |\n\
         | leading operator's resident memory with {MANY} ElastiServices | | {:.1} MiB before the restart, {:.1} MiB after | |\n\
         | wake → `/scale` patch seen, {WAKES} wakes of different services at once, p50 / p99 | one wake alone (5): {:.1} / {:.1} ms | {:.1} / {:.1} ms | goal p99 ≤ 50 ms |\n\
         | … the same {WAKES} `/scale` patches sent straight at once, p50 / p99 | a connection each (HTTP/1.1): {:.1} / {:.1} ms; one connection (HTTP/2): {:.1} / {:.1} ms | | |\n",
        applied.as_secs_f64(),
        created_to_reconciled.as_secs_f64(),
        restart_to_reconciled.as_secs_f64(),
        mib(rss_before),
        mib(rss_after),
        a.p50,
        a.p99,
        t.p50,
        t.p99,
        h1.p50,
        h1.p99,
        h2.p50,
        h2.p99,
    );
    let json = json!({
        "elastiservices": MANY,
        "applied_s": applied.as_secs_f64(),
        "created_to_all_reconciled_s": created_to_reconciled.as_secs_f64(),
        "restart_to_all_reconciled_s": restart_to_reconciled.as_secs_f64(),
        "leader_rss_bytes": {"before_restart": rss_before, "after_restart": rss_after},
        "wake_to_patch_seen_ms": {"alone": summary(&alone), "concurrent": summary(&together), "concurrent_wakes": WAKES},
        "straight_patch_to_seen_ms": {"http1_concurrent": summary(&straight_h1), "http2_concurrent": summary(&straight_h2)},
    });
    Ok((rows, json))
}
