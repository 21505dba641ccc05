//! `POST /v1/report`: what each agent tells the operator besides wakes. Authenticated like
//! [`crate::wake`] (the same projected token and audience).
//!
//! - **Activity:** connection counts for the Services of `activity` triggers, so the
//!   operator tells idle from busy with no Prometheus.
//! - **Interception:** which Services the agent steers now, so a scale-down patches
//!   `/scale` to zero only once every agent intercepts ([`crate::conditions::SCALE_DOWN_PENDING`]).
//!
//! An agent sends a report at once when its intercepted set changes, when a count changed
//! (at most once a [`REPORT_INTERVAL`]), and at least once a [`HEARTBEAT`] while it has
//! anything to report. The operator keeps each agent's latest report; one that has not
//! reported for [`EXPIRY`] no longer counts.
//!
//! Only the leading operator replica keeps reports (the decisions they feed are the
//! leader's). Another replica answers `503` with `Connection: close` and `Retry-After: 0`:
//! the agent retries at once on a new connection, which the operator Service may send to
//! the leader. The leader answers `202`; `413` for more than [`MAX_SERVICES`] services.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The request path on the operator's Service.
pub const PATH: &str = "/v1/report";
/// The shortest time between two reports of one agent whose intercepted set did not change.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The longest time between two reports of an agent with anything to report.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long a report counts without a newer one from the same agent.
pub const EXPIRY: Duration = Duration::from_secs(30);
/// At most this many services in one report (larger reports are refused).
pub const MAX_SERVICES: usize = 10_000;

/// One agent's report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    /// The reporting agent's node.
    pub node: String,
    /// Changes when the agent restarts (its pod UID and start time), so counters that start
    /// again from zero are not read as going backwards.
    pub incarnation: String,
    pub services: Vec<ServiceReport>,
}

/// One Service on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub namespace: String,
    /// The Service's name (`spec.service` of its ElastiService).
    pub service: String,
    /// `connect()`s to the Service since the agent started (monotonic), counted by its eBPF
    /// programs; only for Services with an `activity` trigger (0 otherwise).
    #[serde(default)]
    pub connects: u64,
    /// Connections to the Service open now (opened through a counted connect, not yet
    /// released); only for Services with an `activity` trigger (0 otherwise).
    #[serde(default)]
    pub open: u64,
    /// The agent steers connects to the Service's ClusterIPs to itself now (held, hand-back
    /// grace, or a pending scale-down).
    #[serde(default)]
    pub intercepting: bool,
}
