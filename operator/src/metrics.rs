//! The operator's Prometheus metrics.
use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    /// `up` or `down`.
    pub direction: String,
    /// What caused it: `wake`, `trigger`, `schedule`, `group`, `idle` or `delete`.
    pub cause: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ReconcileResult {
    Ok,
    Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub result: ReconcileResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// What failed (`crate::reconcile::Error::metric_label`).
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// The HTTP status answered.
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// `idle`, `recent`, `busy` or `unknown`.
    pub reading: String,
}

pub struct Metrics {
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub scales: Family<ScaleLabels, Counter>,
    pub wakes: Family<CodeLabels, Counter>,
    pub reports: Family<CodeLabels, Counter>,
    pub trigger_reads: Family<TriggerLabels, Counter>,
    pub intercept_timeouts: Counter,
    pub wake_to_ready: Histogram,
    pub accept_errors: Counter,
    pub connections_refused: Counter,
    pub leader: Gauge,
    pub proxy_ports: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            // 1 ms .. 32 s.
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            scales: Family::default(),
            wakes: Family::default(),
            reports: Family::default(),
            trigger_reads: Family::default(),
            intercept_timeouts: Counter::default(),
            // 100 ms .. 410 s.
            wake_to_ready: Histogram::new(exponential_buckets(0.1, 2.0, 13)),
            accept_errors: Counter::default(),
            connections_refused: Counter::default(),
            leader: Gauge::default(),
            proxy_ports: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("elasti_operator");
        r.register(
            "reconciles",
            "ElastiService reconciliations, by result",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciliations, by what failed",
            m.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "How long one reconciliation took",
            m.reconcile_duration.clone(),
        );
        r.register(
            "scales",
            "Targets scaled, by direction and cause",
            m.scales.clone(),
        );
        r.register(
            "wake_requests",
            "POST /v1/wake requests (and requests for unknown paths), by HTTP status answered",
            m.wakes.clone(),
        );
        r.register(
            "report_requests",
            "POST /v1/report requests, by HTTP status answered",
            m.reports.clone(),
        );
        r.register(
            "trigger_reads",
            "Trigger readings, by outcome",
            m.trigger_reads.clone(),
        );
        r.register(
            "intercept_timeouts",
            "Scale-downs that went ahead without every Ready agent reporting that it intercepts",
            m.intercept_timeouts.clone(),
        );
        r.register(
            "wake_to_ready_seconds",
            "From a target's scale-up from zero to its first Ready endpoint",
            m.wake_to_ready.clone(),
        );
        r.register(
            "wake_accept_errors",
            "Failed accepts on the wake port (retried with backoff)",
            m.accept_errors.clone(),
        );
        r.register(
            "wake_connections_refused",
            "Wake-port connections closed at accept: over the cap or the client's share",
            m.connections_refused.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        r.register(
            "proxy_ports_allocated",
            "Proxy ports allocated to ElastiServices",
            m.proxy_ports.clone(),
        );
        m
    }

    pub fn scaled(&self, direction: &str, cause: &str) {
        self.scales
            .get_or_create(&ScaleLabels {
                direction: direction.into(),
                cause: cause.into(),
            })
            .inc();
    }

    pub fn reconciled(&self, result: ReconcileResult) {
        self.reconciles
            .get_or_create(&ReconcileLabels { result })
            .inc();
    }

    /// One reconcile that took `took` and failed with `error` (a metric label), if it did.
    pub fn reconcile_done(&self, took: Duration, error: Option<&str>) {
        self.reconcile_duration.observe(took.as_secs_f64());
        self.reconciled(if error.is_some() {
            ReconcileResult::Error
        } else {
            ReconcileResult::Ok
        });
        if let Some(e) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { error: e.into() })
                .inc();
        }
    }

    /// One `POST /v1/wake` (or unknown path) answered with `code`.
    pub fn wake(&self, code: u16) {
        self.wakes.get_or_create(&CodeLabels { code }).inc();
    }

    /// One request to the wake server, by path.
    pub fn request(&self, path: &str, code: u16) {
        if path == elasti_api::report::PATH {
            self.reports.get_or_create(&CodeLabels { code }).inc();
        } else {
            self.wake(code);
        }
    }

    pub fn trigger_read(&self, reading: &str) {
        self.trigger_reads
            .get_or_create(&TriggerLabels {
                reading: reading.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_encodes() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.scaled("up", "wake");
        m.reconcile_done(Duration::from_millis(3), None);
        m.reconcile_done(Duration::from_millis(3), Some("api"));
        m.request("/v1/wake", 202);
        m.request("/v1/report", 503);
        m.trigger_read("idle");
        m.intercept_timeouts.inc();
        m.wake_to_ready.observe(2.5);
        m.leader.set(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .unwrap_or_else(|e| panic!("{e}"));
        for name in [
            "elasti_operator_reconciles_total{result=\"Ok\"} 1",
            "elasti_operator_reconcile_errors_total{error=\"api\"} 1",
            "elasti_operator_reconcile_duration_seconds_count 2",
            "elasti_operator_scales_total{direction=\"up\",cause=\"wake\"} 1",
            "elasti_operator_wake_requests_total{code=\"202\"} 1",
            "elasti_operator_report_requests_total{code=\"503\"} 1",
            "elasti_operator_trigger_reads_total{reading=\"idle\"} 1",
            "elasti_operator_intercept_timeouts_total 1",
            "elasti_operator_wake_to_ready_seconds_count 1",
            "elasti_operator_leader 1",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
