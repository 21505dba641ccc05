//! The operator's scale-down reaction: with a real Prometheus (Debian's, in the cluster's
//! netns) already reading the trigger under its threshold, how long after the cooldown's
//! end is the target at zero? Each round creates the ElastiService afresh, so its cooldown
//! ends at `creationTimestamp + cooldownPeriod`, exactly as the operator computes it.
//!
//! Baseline, the same run: the two calls the operator must make, sent straight: the
//! trigger's Prometheus query and the `/scale` patch.
//!
//! A value that falls under the threshold *after* the cooldown is read at the next poll,
//! so there the poll interval (30 s by default) bounds the reaction, by design.
//!
//! Each round is traced through the operator's and the agents' own log lines, which the
//! machine's one clock dates like the watch: the operator's cooldown end (its timestamps
//! keep whole seconds, and it rounds them up so that a cooldown is never cut short) →
//! `ScaleDownPending` written (the triggers read) → the last agent intercepting → the
//! Service drained (`Draining` written; then `--drain-delay-ms` for kube-proxy's sync, by
//! design) → `/scale` patched → replicas 0 seen.
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde_json::json;

use elasti_testbed::{cmd, elasti, kube::kube, objects, paths, prometheus::Prometheus};

use super::{
    NS, cluster, curl_timed, delete_elastiservice, jsonpath, scale_patch, summary, wait,
    watch::{Watch, ms_between},
};

/// Prometheus's port beside the cluster.
const PROMETHEUS_PORT: u16 = 9091;

const COOLDOWN_SECS: u64 = 3;

const SERVING_STATUS: &str = r#"{.status.conditions[?(@.type=="Serving")].status}"#;
const SERVING_SINCE: &str = r#"{.status.conditions[?(@.type=="Serving")].lastTransitionTime}"#;

pub struct ScaleDowns {
    /// The operator's cooldown end → replicas 0 seen, ms.
    reaction: Vec<f64>,
    /// Prometheus query + `/scale` patch sent straight, ms.
    baseline: Vec<f64>,
    steps: Vec<Steps>,
}

/// One round's trace, ms.
#[derive(Clone, Copy, Debug)]
struct Steps {
    /// The cooldown's end as the operator reckons it, after the end counted from the
    /// precise moment the target was seen Ready (its `Serving` line).
    rounding: f64,
    /// The operator's cooldown end → `ScaleDownPending` written.
    to_pending: f64,
    /// → the last agent's "holding" line.
    to_intercepted: f64,
    /// → `Draining` written (the drain follows it at once).
    to_drained: f64,
    /// → the operator's "scaled to zero" line (the `/scale` patch answered).
    to_patched: f64,
    /// The reconcile that wrote `ScaleDownPending`, from its start to the write, and its
    /// reads and trigger query within that (its log line says).
    pending_reconcile: f64,
    pending_reads: f64,
    pending_triggers: f64,
}

/// The number after `name=` in a log line (the operator's timings).
fn number_field(line: &str, name: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// A `metav1.Time` read back, as the operator reads it (`operator/src/reconcile/decide.rs`,
/// `stored`): the end of its second.
fn end_of_second(t: &str) -> Result<SystemTime> {
    let t: jiff::Timestamp = t.parse().with_context(|| format!("timestamp {t:?}"))?;
    let t = if t.subsec_nanosecond() == 0 {
        t + jiff::SignedDuration::from_secs(1)
    } else {
        t
    };
    Ok(t.into())
}

/// Every line of the pods labelled `app.kubernetes.io/name=<app>` in elasti's namespace,
/// as (pod, its own timestamp, line).
fn log_lines(app: &str) -> Result<Vec<(String, SystemTime, String)>> {
    let out = super::kubectl(&[
        "-n",
        elasti::NAMESPACE,
        "logs",
        "-l",
        &format!("app.kubernetes.io/name={app}"),
        "--tail=-1",
        "--prefix",
        "--max-log-requests=20",
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (pod, rest) = l.split_once("] ")?;
            let t: jiff::Timestamp = rest.split_whitespace().next()?.parse().ok()?;
            Some((pod.to_owned(), t.into(), rest.to_owned()))
        })
        .collect())
}

/// The first line at or after `since` holding every one of `words`, per pod.
fn first_per_pod(
    lines: &[(String, SystemTime, String)],
    since: SystemTime,
    words: &[&str],
) -> std::collections::BTreeMap<String, SystemTime> {
    let mut first = std::collections::BTreeMap::new();
    for (pod, t, l) in lines {
        if *t >= since && words.iter().all(|w| l.contains(w)) {
            first.entry(pod.clone()).or_insert(*t);
        }
    }
    first
}

/// The earliest line at or after `since` holding every one of `words`, in any pod.
fn first_line(
    lines: &[(String, SystemTime, String)],
    since: SystemTime,
    words: &[&str],
    what: &str,
) -> Result<SystemTime> {
    first_per_pod(lines, since, words)
        .into_values()
        .min()
        .with_context(|| format!("bench: no {what} line in the logs"))
}

/// Traces the round of `web`'s ElastiService created at `created` and `Serving` since
/// `serving_at` (its `lastTransitionTime`), once at zero; returns the operator's cooldown end and the steps.
fn trace(created: SystemTime, serving_at: &str) -> Result<(SystemTime, Steps)> {
    let created_at = jsonpath("elastiservice/web", "{.metadata.creationTimestamp}")?;
    let cooldown = Duration::from_secs(COOLDOWN_SECS);
    let reckoned = end_of_second(&created_at)?.max(end_of_second(serving_at)?) + cooldown;
    let ns = format!("namespace={NS}");
    let op = log_lines("elasti-operator")?;
    let ours = |since, words: &[&str], what| {
        let words: Vec<&str> = [ns.as_str(), "elastiservice=web"]
            .into_iter()
            .chain(words.iter().copied())
            .collect();
        first_line(&op, since, &words, what)
    };
    let serving = ours(
        created,
        &["condition changed", "condition=Serving", "status=True"],
        "Serving True",
    )?;
    let pending = ours(
        created,
        &[
            "condition changed",
            "condition=ScaleDownPending",
            "reason=Intercepting",
        ],
        "ScaleDownPending",
    )?;
    let pending_line = op
        .iter()
        .find(|(_, t, l)| {
            *t == pending
                && l.contains("condition=ScaleDownPending")
                && l.contains("reason=Intercepting")
        })
        .map(|(_, _, l)| l.as_str())
        .unwrap_or_default();
    let timing = |name| number_field(pending_line, name).unwrap_or(f64::NAN);
    let drained = ours(
        pending,
        &[
            "condition changed",
            "condition=ScaleDownPending",
            "reason=Draining",
        ],
        "Draining",
    )?;
    let patched = ours(drained, &["scaled to zero"], "scaled to zero")?;
    let service = format!("service={NS}/web:");
    let agents = log_lines("elasti-agent")?;
    let intercepted = first_per_pod(
        &agents,
        pending - Duration::from_millis(50),
        &["holding: connects to the ClusterIP", &service],
    )
    .into_values()
    .max()
    .context("bench: no agent's holding line in the logs")?;
    Ok((
        reckoned,
        Steps {
            rounding: ms_between(serving + cooldown, reckoned),
            to_pending: ms_between(reckoned, pending),
            to_intercepted: ms_between(reckoned, intercepted),
            to_drained: ms_between(reckoned, drained),
            to_patched: ms_between(reckoned, patched),
            pending_reconcile: timing("reconcile_ms"),
            pending_reads: timing("reads_ms"),
            pending_triggers: timing("triggers_ms"),
        },
    ))
}

/// The ElastiService whose trigger always reads idle (`vector(0)`).
fn elastiservice(prometheus: &str) -> elasti_api::ElastiService {
    let mut es = objects::App::http("web").elastiservice();
    es.spec.cooldown_period = COOLDOWN_SECS as i32;
    es.spec.triggers = vec![objects::prometheus_trigger(prometheus, "vector(0)", "0.5")];
    es
}

/// `rounds` scale-downs at the cooldown's end. Starts Prometheus; leaves `web` at one
/// replica with no ElastiService.
pub fn measure(rounds: usize) -> Result<ScaleDowns> {
    let prometheus = Prometheus::start(
        cluster(),
        PROMETHEUS_PORT,
        paths::cluster_state().join("bench-prometheus"),
    )?;
    delete_elastiservice()?;
    let replicas = Watch::start(
        "Deployment",
        &["deployment", "web", "-n", NS],
        r#"{.spec.replicas}{"\n"}"#,
    )?;
    let query_url = format!("{}/api/v1/query", prometheus.url);
    // Prometheus must have scraped itself once for `up{job="prometheus"}`.
    wait("Prometheus' own up series", || {
        let out = cmd::output(
            "curl",
            cluster().command("/usr/bin/curl").args([
                "-s",
                "-G",
                "--data-urlencode",
                r#"query=up{job="prometheus"}"#,
                &query_url,
            ]),
        )?;
        Ok(out.contains(r#""1"]"#))
    })?;
    let mut r = ScaleDowns {
        reaction: Vec::new(),
        baseline: Vec::new(),
        steps: Vec::new(),
    };
    for i in 0..rounds {
        scale_patch(1)?;
        wait("web Ready", || {
            Ok(jsonpath("deploy/web", "{.status.readyReplicas}")? == "1")
        })?;
        let (query_ms, code) =
            curl_timed(&["-G", "--data-urlencode", "query=vector(0)", &query_url])?;
        if code != 200 {
            bail!("bench: Prometheus answered {code}");
        }
        let patch_ms = scale_patch(1)?;
        r.baseline.push(query_ms + patch_ms);

        kube()?.apply(NS, &elastiservice(&prometheus.url))?;
        let created = jsonpath("elastiservice/web", "{.metadata.creationTimestamp}")?;
        let created: SystemTime = created
            .parse::<jiff::Timestamp>()
            .with_context(|| format!("creationTimestamp {created:?}"))?
            .into();
        // Read before the scale-down turns it False: the cooldown counts from it.
        wait("web's ElastiService Serving", || {
            Ok(jsonpath("elastiservice/web", SERVING_STATUS)? == "True")
        })?;
        let serving_at = jsonpath("elastiservice/web", SERVING_SINCE)?;
        let (zero, _) = replicas.first(created, Duration::from_secs(60), |l| l.trim() == "0")?;
        let (cooldown_end, steps) = trace(created, &serving_at)?;
        if zero < cooldown_end {
            bail!("bench: round {i} scaled to zero before the cooldown ended");
        }
        r.reaction.push(ms_between(cooldown_end, zero));
        r.steps.push(steps);
        // Deleting it at zero makes the operator scale `web` back up.
        delete_elastiservice()?;
    }
    Ok(r)
}

impl ScaleDowns {
    pub fn report(&self) -> (String, serde_json::Value) {
        let st = |v: &[f64]| elasti_testbed::stats::summarize(v);
        let (b, x) = (st(&self.baseline), st(&self.reaction));
        let step = |f: fn(&Steps) -> f64| self.steps.iter().map(f).collect::<Vec<_>>();
        let mut rows = format!(
            "| operator reaction: its cooldown end, trigger under threshold → scaled to 0 (median of {}, min–max) | Prometheus query + `/scale` patch sent straight {:.1} ms | {:.0} ms ({:.0}–{:.0}) | +{:.0} ms (traced below) |\n",
            x.n,
            b.p50,
            x.p50,
            x.min,
            x.max,
            x.p50 - b.p50
        );
        let steps = [
            (
                "`ScaleDownPending` written (triggers read)",
                step(|s| s.to_pending),
            ),
            ("the last agent intercepting", step(|s| s.to_intercepted)),
            ("the Service drained", step(|s| s.to_drained)),
            (
                "`/scale` patched (after the drain delay, 2,000 ms by default)",
                step(|s| s.to_patched),
            ),
        ];
        for (what, v) in steps {
            let v = st(&v);
            rows += &format!(
                "| … cooldown end → {what}, p50 / max | | {:.1} / {:.1} ms | |\n",
                v.p50, v.max
            );
        }
        let (rec, reads, trig) = (
            st(&step(|s| s.pending_reconcile)),
            st(&step(|s| s.pending_reads)),
            st(&step(|s| s.pending_triggers)),
        );
        let start = st(&step(|s| s.to_pending - s.pending_reconcile));
        rows += &format!(
            "| … of which: cooldown end → that reconcile's start; the reconcile (its reads at once; the trigger query), p50 | | {:.1} ms; {:.1} ms ({:.1}; {:.1}) | |\n",
            start.p50, rec.p50, reads.p50, trig.p50
        );
        let r = st(&step(|s| s.rounding));
        rows += &format!(
            "| the operator's cooldown end after the one counted from the precise moment `web` was seen Ready (`metav1.Time` keeps whole seconds; rounded up, never cut short) | | {:.0} ms ({:.0}–{:.0}) | |\n",
            r.p50.max(0.0),
            r.min.max(0.0),
            r.max.max(0.0)
        );
        let json = json!({
            "cooldown_end_to_zero_ms": summary(&self.reaction),
            "baseline_query_plus_patch_ms": summary(&self.baseline),
            "cooldown_end_to_pending_written_ms": summary(&step(|s| s.to_pending)),
            "cooldown_end_to_last_agent_intercepting_ms": summary(&step(|s| s.to_intercepted)),
            "cooldown_end_to_drained_ms": summary(&step(|s| s.to_drained)),
            "cooldown_end_to_scale_patched_ms": summary(&step(|s| s.to_patched)),
            "whole_second_rounding_ms": summary(&step(|s| s.rounding)),
            "pending_reconcile_ms": summary(&step(|s| s.pending_reconcile)),
            "pending_reads_ms": summary(&step(|s| s.pending_reads)),
            "pending_triggers_ms": summary(&step(|s| s.pending_triggers)),
            "cooldown_end_to_pending_reconcile_start_ms": summary(&step(|s| s.to_pending - s.pending_reconcile)),
        });
        (rows, json)
    }
}
