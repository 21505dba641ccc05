//! `POST /v1/activity`: each agent's connection counts for the Services of `activity`
//! triggers, so the operator can tell idle from busy with no Prometheus. Authenticated like
//! [`crate::wake`] (the same projected token and audience).
//!
//! An agent sends a report when a count changed since its last one (at most once a
//! [`REPORT_INTERVAL`]) and at least once a [`HEARTBEAT`] while it has anything to report.
//! The operator keeps each agent's latest report; one that has not reported for
//! [`EXPIRY`] no longer counts.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The request path on the operator's Service.
pub const PATH: &str = "/v1/activity";
/// The shortest time between two reports of one agent.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The longest time between two reports of an agent with open connections or services.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long a report counts without a newer one from the same agent.
pub const EXPIRY: Duration = Duration::from_secs(30);
/// At most this many services in one report (larger reports are refused).
pub const MAX_SERVICES: usize = 10_000;

/// One agent's counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityReport {
    /// The reporting agent's node.
    pub node: String,
    /// Changes when the agent restarts (its pod UID and start), so counters that start
    /// again from zero are not read as going backwards.
    pub incarnation: String,
    pub services: Vec<ServiceActivity>,
}

/// One Service's connections on one node, counted by the agent's eBPF programs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceActivity {
    pub namespace: String,
    /// The Service's name (`spec.service` of its ElastiService).
    pub service: String,
    /// `connect()`s to the Service since the agent started (monotonic).
    pub connects: u64,
    /// Connections to the Service open now (opened through a counted connect, not yet
    /// released).
    pub open: u64,
}
