//! Cold starts, one at a time, alternating two kinds of round from zero replicas:
//!
//! - **elasti:** a client in the pods' cgroup sends one request to the ClusterIP. The agent
//!   holds it and wakes the operator, the operator scales `web` up, and the agent forwards
//!   the request the moment the EndpointSlice shows the new pod Ready.
//! - **baseline:** the same `/scale` patch sent straight to the apiserver, no request.
//!
//! Two watches time the pod's creation and its endpoint turning Ready, so each cold
//! request splits into: request → pod created (wake, operator, Kubernetes' controllers),
//! pod created → Ready (the pod's own start), and Ready → answered (the agent's hand-off).
use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};
use serde_json::json;

use super::{
    NS, kubectl, scale_patch, summary, wait, wait_intercepting,
    watch::{Watch, ms_between},
};

/// One round's figures, milliseconds.
#[derive(Clone, Copy, Debug)]
struct Round {
    /// Request sent → answered (curl's own timer); baseline: patch sent → Ready.
    total: f64,
    /// Request (or patch) sent → pod created.
    to_created: f64,
    /// Pod created → its endpoint Ready.
    start_to_ready: f64,
    /// Endpoint Ready → answer received (elasti rounds only).
    ready_to_answer: f64,
}

pub struct ColdStarts {
    elasti: Vec<Round>,
    baseline: Vec<Round>,
}

const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// `rounds` cold requests and `rounds` baseline cold starts, alternating.
pub fn measure(url: &str, rounds: usize) -> Result<ColdStarts> {
    let pods = Watch::start(
        "pod",
        &["pods", "-n", NS, "-l", "app=web"],
        r#"{.metadata.name}{"\n"}"#,
    )?;
    let slices = Watch::start(
        "EndpointSlice",
        &[
            "endpointslices",
            "-n",
            NS,
            "-l",
            "kubernetes.io/service-name=web",
        ],
        r#"{.metadata.name} {.endpoints[*].conditions.ready}{"\n"}"#,
    )?;
    let mut r = ColdStarts {
        elasti: Vec::new(),
        baseline: Vec::new(),
    };
    for i in 0..rounds * 2 {
        to_zero()?;
        let with_elasti = i % 2 == 0;
        let sent = SystemTime::now();
        // curl's own time, which starts after nsenter and exec; the request (or patch) is
        // dated from its answer back, the same way for both kinds of round.
        let curl_ms = if with_elasti {
            let (ms, code) = super::curl_in_pods_cgroup(&["--max-time", "60", url])?;
            if code != 200 {
                bail!("bench: cold request {i} answered {code}");
            }
            ms
        } else {
            scale_patch(1)?
        };
        let answered = SystemTime::now();
        let requested = answered - Duration::from_secs_f64(curl_ms / 1e3);
        // The old pods are gone (`to_zero`), so the first pod event after `sent` is the new
        // pod's creation.
        let (created, _) = pods.first(sent, EVENT_TIMEOUT, |_| true)?;
        let (ready, _) = slices.first(sent, EVENT_TIMEOUT, |l| {
            let mut words = l.split_whitespace();
            let name = words.next().unwrap_or_default();
            // The operator's fallback slice lists agents, not pods.
            !name.contains("-elasti-") && words.any(|w| w == "true")
        })?;
        let start_to_ready = ms_between(created, ready);
        let to_created = ms_between(requested, created);
        if with_elasti {
            r.elasti.push(Round {
                total: curl_ms,
                to_created,
                start_to_ready,
                ready_to_answer: ms_between(ready, answered),
            });
        } else {
            r.baseline.push(Round {
                total: ms_between(requested, ready),
                to_created,
                start_to_ready,
                ready_to_answer: 0.0,
            });
        }
    }
    Ok(r)
}

/// `web` at zero replicas, its pods gone and the agent intercepting its ClusterIP.
fn to_zero() -> Result<()> {
    scale_patch(0)?;
    wait("web's pods gone", || {
        Ok(kubectl(&["-n", NS, "get", "pods", "-l", "app=web", "-o", "name"])?.is_empty())
    })?;
    wait_intercepting()
}

impl ColdStarts {
    /// Markdown rows and JSON.
    pub fn report(&self) -> (String, serde_json::Value) {
        let col = |v: &[Round], f: fn(&Round) -> f64| v.iter().map(f).collect::<Vec<_>>();
        let e = &self.elasti;
        let b = &self.baseline;
        let added = col(e, |r| r.total - r.start_to_ready);
        let s = |v: &[f64]| summary(v);
        let raw = |v: &[Round]| {
            v.iter()
                .map(|r| [r.total, r.to_created, r.start_to_ready, r.ready_to_answer])
                .collect::<Vec<_>>()
        };
        let json = json!({
            "rounds_ms": {
                "columns": ["total", "to_pod_created", "pod_start_to_ready", "ready_to_answered"],
                "elasti": raw(e),
                "baseline": raw(b),
            },
            "elasti": {
                "cold_request_ms": s(&col(e, |r| r.total)),
                "request_to_pod_created_ms": s(&col(e, |r| r.to_created)),
                "pod_start_to_ready_ms": s(&col(e, |r| r.start_to_ready)),
                "ready_to_answered_ms": s(&col(e, |r| r.ready_to_answer)),
                "cold_request_minus_pod_start_to_ready_ms": s(&added),
            },
            "baseline_scale_patch": {
                "patch_to_ready_ms": s(&col(b, |r| r.total)),
                "patch_to_pod_created_ms": s(&col(b, |r| r.to_created)),
                "pod_start_to_ready_ms": s(&col(b, |r| r.start_to_ready)),
            },
        });
        let p = |v: &[f64]| {
            let st = elasti_testbed::stats::summarize(v);
            format!("{:.1} / {:.1}", st.p50, st.p99)
        };
        let n = e.len();
        let rows = [
            format!(
                "| cold request through elasti, p50 / p99 ({n} wakes) | `/scale` patched straight → pod Ready {} ms | {} ms | |",
                p(&col(b, |r| r.total)),
                p(&col(e, |r| r.total)),
            ),
            format!(
                "| … minus the pod's own start-to-Ready (per request) | | {} ms | goal p99 < 20 ms |",
                p(&added),
            ),
            format!(
                "| … of which request → pod created (agent wake, operator, Deployment and ReplicaSet controllers) | patch → pod created {} ms | {} ms | |",
                p(&col(b, |r| r.to_created)),
                p(&col(e, |r| r.to_created)),
            ),
            format!(
                "| … of which pod created → endpoint Ready (the pod's own start) | {} ms | {} ms | |",
                p(&col(b, |r| r.start_to_ready)),
                p(&col(e, |r| r.start_to_ready)),
            ),
            format!(
                "| … of which endpoint Ready → answered (agent hand-off and the response) | | {} ms | |",
                p(&col(e, |r| r.ready_to_answer)),
            ),
        ];
        (rows.join("\n") + "\n", json)
    }
}
