//! The operator's Prometheus metrics.
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    /// `up` or `down`.
    pub direction: String,
    /// What caused it: `wake`, `trigger`, `idle` or `delete`.
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
pub struct WakeLabels {
    /// The HTTP status answered.
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// `idle`, `busy` or `unknown`.
    pub reading: String,
}

pub struct Metrics {
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub scales: Family<ScaleLabels, Counter>,
    pub wakes: Family<WakeLabels, Counter>,
    pub trigger_reads: Family<TriggerLabels, Counter>,
    pub leader: Gauge,
    pub proxy_ports: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            scales: Family::default(),
            wakes: Family::default(),
            trigger_reads: Family::default(),
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
            "scales",
            "Targets scaled, by direction and cause",
            m.scales.clone(),
        );
        r.register(
            "wake_requests",
            "POST /v1/wake requests, by HTTP status answered",
            m.wakes.clone(),
        );
        r.register(
            "trigger_reads",
            "Prometheus trigger readings, by outcome",
            m.trigger_reads.clone(),
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

    pub fn wake(&self, code: u16) {
        self.wakes.get_or_create(&WakeLabels { code }).inc();
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
        m.reconciled(ReconcileResult::Ok);
        m.wake(202);
        m.trigger_read("idle");
        m.leader.set(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .unwrap_or_else(|e| panic!("{e}"));
        for name in [
            "elasti_operator_reconciles_total{result=\"Ok\"} 1",
            "elasti_operator_scales_total{direction=\"up\",cause=\"wake\"} 1",
            "elasti_operator_wake_requests_total{code=\"202\"} 1",
            "elasti_operator_trigger_reads_total{reading=\"idle\"} 1",
            "elasti_operator_leader 1",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
