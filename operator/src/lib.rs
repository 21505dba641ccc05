//! The elasti operator: the ElastiService control plane.
//!
//! - [`reconcile`]: the controller, as observe → decide (pure) → act: proxy ports, mode,
//!   the fallback slices, the two-phase scale-down, conditions.
//! - [`scale`]: the scale verdict (pure), the `/scale` subresource, KEDA, the scaler.
//! - [`triggers`]: `prometheus` triggers (KubeElasti's) and `activity` triggers (elasti's).
//! - [`activity`]: the agents' reports, and what they say (pure).
//! - [`group`]: `wakeWith`, who wakes whom (pure).
//! - [`ports`]: proxy-port allocation (pure).
//! - [`wake`]: `POST /v1/wake` and `POST /v1/report` for agents, authenticated.
//! - [`leader`]: leader election with a Lease; [`fence`]: work that stops with it;
//!   [`term`]: what the leader holds.
//! - [`status`]: conditions and the status patch; [`metrics`]: what is counted.
//! - [`run`]: the main loop.
#![forbid(unsafe_code)]

pub mod activity;
pub mod config;
pub mod fence;
pub mod group;
pub mod leader;
pub mod metrics;
pub mod ports;
pub mod reconcile;
pub mod run;
pub mod scale;
pub mod status;
pub mod term;
pub mod triggers;
pub mod wake;
