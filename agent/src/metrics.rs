//! The agent's Prometheus metrics. Every outcome of a held connection or request is
//! counted here with its service, never dropped silently.
use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::hold::ServiceId;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub namespace: String,
    pub service: String,
    pub port: u16,
}

impl From<&ServiceId> for ServiceLabels {
    fn from(id: &ServiceId) -> Self {
        Self {
            namespace: id.namespace.clone(),
            service: id.name.clone(),
            port: id.port,
        }
    }
}

/// What the agent did with a connection or request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    /// Forwarded without waiting (the service was already Ready: the grace window).
    Forwarded,
    /// Held until an endpoint became Ready, then forwarded.
    ForwardedAfterHold,
    /// Refused because the service's queue was full (HTTP 503 + Retry-After; TCP closed).
    QueueFull,
    /// No endpoint became Ready within the deadline (HTTP 504; TCP closed).
    Deadline,
    /// No endpoint accepted the connection, or the pod failed mid-forward (HTTP 502).
    UpstreamFailed,
    /// The client sent something that is not HTTP where HTTP was expected, or too slowly.
    Malformed,
    /// The client closed its connection before its answer (while held, or mid-forward).
    ClientGone,
    /// Refused at accept: the listener's or the node's connection cap was reached.
    Overloaded,
    /// The ElastiService's target does not exist (HTTP 503): nothing was held.
    TargetNotFound,
    /// A request the pod closed on before answering, sent again to another endpoint.
    Retried,
    /// Answered by the agent itself from a `probeResponse` rule while the service is at
    /// zero (a health check): nothing was held, nothing woken.
    ProbeAnswered,
}

/// What became of one `POST /v1/wake`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum WakeResult {
    /// 202: the scale-up is done or under way.
    Accepted,
    /// 404: the operator does not manage this service (yet).
    UnknownService,
    /// 401/403: the operator refused our token.
    Refused,
    /// The token file could not be read.
    NoToken,
    /// No answer (connection refused, timeout).
    Unreachable,
    /// Any other answer.
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WakeLabels {
    pub namespace: String,
    pub service: String,
    pub result: WakeResult,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Protocol {
    Http1,
    Http2,
    Tcp,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub namespace: String,
    pub service: String,
    pub port: u16,
    pub protocol: Protocol,
    pub outcome: Outcome,
}

impl OutcomeLabels {
    fn new(id: &ServiceId, protocol: Protocol, outcome: Outcome) -> Self {
        Self {
            namespace: id.namespace.clone(),
            service: id.name.clone(),
            port: id.port,
            protocol,
            outcome,
        }
    }
}

/// Upper bounds (seconds) for the hold-time histogram: sub-millisecond hand-offs up to
/// multi-minute cold starts.
const HOLD_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub namespace: String,
    pub service: String,
    pub port: u16,
    pub reason: String,
}

pub struct Metrics {
    refused: Family<RefusedLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    held: Family<ServiceLabels, Gauge>,
    hold_seconds: Family<ServiceLabels, Histogram>,
    cold_start_seconds: Family<ServiceLabels, Histogram>,
    wakes: Family<WakeLabels, Counter>,
    steered: Family<ServiceLabels, Counter>,
    peernames: Family<ServiceLabels, Counter>,
    intercepting: Family<ServiceLabels, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them under `elasti_agent_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            refused: Family::default(),
            outcomes: Family::default(),
            held: Family::default(),
            hold_seconds: Family::new_with_constructor(|| Histogram::new(HOLD_BUCKETS)),
            cold_start_seconds: Family::new_with_constructor(|| Histogram::new(HOLD_BUCKETS)),
            wakes: Family::default(),
            steered: Family::default(),
            peernames: Family::default(),
            intercepting: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("elasti_agent");
        r.register(
            "outcomes",
            "Held connections and requests by what became of them",
            m.outcomes.clone(),
        );
        r.register(
            "refused_ports",
            "Service ports the agent would not hold, by reason (proxy port taken or out of range, target missing, bind failed)",
            m.refused.clone(),
        );
        r.register(
            "held",
            "Connections and requests waiting for a Ready endpoint",
            m.held.clone(),
        );
        r.register(
            "hold_seconds",
            "Time from a connection or request being held to it being forwarded",
            m.hold_seconds.clone(),
        );
        r.register(
            "cold_start_seconds",
            "Per cold period: from its first held connection or request to the first one released to a Ready pod",
            m.cold_start_seconds.clone(),
        );
        r.register(
            "wake_requests",
            "Wake notifications sent to the operator, by result",
            m.wakes.clone(),
        );
        r.register(
            "ebpf_connects_steered",
            "connect() calls the eBPF programs steered to this agent",
            m.steered.clone(),
        );
        r.register(
            "ebpf_peernames_rewritten",
            "getpeername() calls the eBPF programs answered with the ClusterIP",
            m.peernames.clone(),
        );
        r.register(
            "intercepting",
            "1 while connects to the service port's ClusterIP are steered to this agent",
            m.intercepting.clone(),
        );
        m
    }

    /// Whether connects to `id`'s ClusterIP are steered here now.
    pub fn intercepting(&self, id: &ServiceId, on: bool) {
        self.intercepting
            .get_or_create(&id.into())
            .set(i64::from(on));
    }

    pub fn wake(&self, id: &ServiceId, result: WakeResult) {
        self.wakes
            .get_or_create(&WakeLabels {
                namespace: id.namespace.clone(),
                service: id.name.clone(),
                result,
            })
            .inc();
    }

    pub fn outcome(&self, id: &ServiceId, protocol: Protocol, outcome: Outcome) {
        self.outcomes
            .get_or_create(&OutcomeLabels::new(id, protocol, outcome))
            .inc();
    }

    /// `id` is not held, because of `reason`.
    pub fn refused(&self, id: &ServiceId, reason: &str) {
        self.refused
            .get_or_create(&RefusedLabels {
                namespace: id.namespace.clone(),
                service: id.name.clone(),
                port: id.port,
                reason: reason.into(),
            })
            .inc();
    }

    /// Adds what the eBPF counters grew by since the last export.
    pub fn rewrites(&self, id: &ServiceId, connects: u64, peernames: u64) {
        let l = ServiceLabels::from(id);
        self.steered.get_or_create(&l).inc_by(connects);
        self.peernames.get_or_create(&l).inc_by(peernames);
    }

    /// Drops `id`'s gauges once it is no longer managed: a gauge of a service that is gone
    /// would otherwise report its last value forever, and an agent that sees services come
    /// and go would keep a series for each. Counters and the histogram stay, as
    /// cumulative series do in Prometheus, until the agent restarts.
    pub fn forget(&self, id: &ServiceId) {
        let labels = ServiceLabels::from(id);
        self.held.remove(&labels);
        self.intercepting.remove(&labels);
    }

    /// The gauge a [`crate::hold::HeldService`] keeps its queue length in.
    pub fn held_gauge(&self, id: &ServiceId) -> Gauge {
        self.held.get_or_create(&ServiceLabels::from(id)).clone()
    }

    /// One cold period of `id` ended after `d` (first held → first released).
    pub fn cold_start(&self, id: &ServiceId, d: Duration) {
        self.cold_start_seconds
            .get_or_create(&ServiceLabels::from(id))
            .observe(d.as_secs_f64());
    }

    pub fn waited(&self, id: &ServiceId, waited: Duration) {
        self.hold_seconds
            .get_or_create(&ServiceLabels::from(id))
            .observe(waited.as_secs_f64());
    }

    /// The count for one outcome (tests and the bench read it).
    pub fn count(&self, id: &ServiceId, protocol: Protocol, outcome: Outcome) -> u64 {
        self.outcomes
            .get_or_create(&OutcomeLabels::new(id, protocol, outcome))
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered() -> (Registry, Metrics) {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        (registry, m)
    }

    fn web() -> ServiceId {
        ServiceId {
            namespace: "ns".into(),
            name: "web".into(),
            port: 80,
        }
    }

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry)
            .unwrap_or_else(|e| panic!("{e}"));
        text
    }

    #[test]
    fn every_family_is_registered_and_encodes() {
        let (registry, m) = registered();
        let id = web();
        m.outcome(&id, Protocol::Tcp, Outcome::QueueFull);
        m.rewrites(&id, 2, 1);
        m.wake(&id, WakeResult::Accepted);
        m.waited(&id, Duration::from_millis(3));
        m.held_gauge(&id).set(4);
        m.intercepting(&id, true);
        let text = encode(&registry);
        for line in [
            r#"elasti_agent_outcomes_total{namespace="ns",service="web",port="80",protocol="Tcp",outcome="QueueFull"} 1"#,
            r#"elasti_agent_ebpf_connects_steered_total{namespace="ns",service="web",port="80"} 2"#,
            r#"elasti_agent_ebpf_peernames_rewritten_total{namespace="ns",service="web",port="80"} 1"#,
            r#"elasti_agent_wake_requests_total{namespace="ns",service="web",result="Accepted"} 1"#,
            r#"elasti_agent_held{namespace="ns",service="web",port="80"} 4"#,
            r#"elasti_agent_intercepting{namespace="ns",service="web",port="80"} 1"#,
            r#"elasti_agent_hold_seconds_count{namespace="ns",service="web",port="80"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line} in:\n{text}"
            );
        }
    }

    #[test]
    fn a_forgotten_service_keeps_its_counters_and_loses_its_gauges() {
        let (registry, m) = registered();
        let id = web();
        m.outcome(&id, Protocol::Http1, Outcome::ForwardedAfterHold);
        m.held_gauge(&id).set(0);
        m.intercepting(&id, false);
        m.forget(&id);
        let text = encode(&registry);
        assert!(
            text.lines()
                .any(|l| l.starts_with("elasti_agent_outcomes_total{namespace=\"ns\"")),
            "{text}"
        );
        for gone in ["elasti_agent_held{", "elasti_agent_intercepting{"] {
            assert!(
                !text.lines().any(|l| l.starts_with(gone)),
                "{gone} in:\n{text}"
            );
        }
    }
}
