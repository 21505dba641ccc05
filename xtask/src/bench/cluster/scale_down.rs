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
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde_json::json;

use elasti_testbed::{cmd, kube::kube, objects, paths, prometheus::Prometheus};

use super::{
    NS, cluster, curl_timed, delete_elastiservice, jsonpath, scale_patch, summary, wait,
    watch::{Watch, ms_between},
};

/// Prometheus's port beside the cluster.
const PROMETHEUS_PORT: u16 = 9091;

const COOLDOWN_SECS: u64 = 3;

pub struct ScaleDowns {
    /// Cooldown end → replicas 0 seen, ms.
    reaction: Vec<f64>,
    /// Prometheus query + `/scale` patch sent straight, ms.
    baseline: Vec<f64>,
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
        let cooldown_end = created + Duration::from_secs(COOLDOWN_SECS);
        let (zero, _) = replicas.first(created, Duration::from_secs(60), |l| l.trim() == "0")?;
        if zero < cooldown_end {
            bail!("bench: round {i} scaled to zero before the cooldown ended");
        }
        r.reaction.push(ms_between(cooldown_end, zero));
        // Deleting it at zero makes the operator scale `web` back up.
        delete_elastiservice()?;
    }
    Ok(r)
}

impl ScaleDowns {
    pub fn report(&self) -> (String, serde_json::Value) {
        let st = |v: &[f64]| elasti_testbed::stats::summarize(v);
        let (b, x) = (st(&self.baseline), st(&self.reaction));
        let row = format!(
            "| operator reaction: cooldown over, trigger under threshold → scaled to 0 (median of {}, min–max) | Prometheus query + `/scale` patch sent straight {:.1} ms | {:.0} ms ({:.0}–{:.0}) | +{:.0} ms |\n",
            x.n,
            b.p50,
            x.p50,
            x.min,
            x.max,
            x.p50 - b.p50
        );
        let json = json!({
            "cooldown_end_to_zero_ms": summary(&self.reaction),
            "baseline_query_plus_patch_ms": summary(&self.baseline),
        });
        (row, json)
    }
}
