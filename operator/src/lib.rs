//! The elasti operator: the ElastiService control plane.
//!
//! - [`reconcile`]: the controller: proxy ports, mode, the fallback slice, conditions.
//! - [`scale`]: the scale-down verdict (pure), the `/scale` subresource, KEDA, the scaler.
//! - [`triggers`]: Prometheus triggers, read with KubeElasti's semantics.
//! - [`ports`]: proxy-port allocation (pure).
//! - [`wake`]: `POST /v1/wake` for agents, authenticated with TokenReview.
//! - [`leader`]: leader election with a Lease.
//! - [`status`]: conditions and the status patch; [`metrics`]: what is counted.
//! - [`run`]: the main loop.
#![forbid(unsafe_code)]

pub mod config;
pub mod leader;
pub mod metrics;
pub mod ports;
pub mod reconcile;
pub mod run;
pub mod scale;
pub mod status;
pub mod triggers;
pub mod wake;
