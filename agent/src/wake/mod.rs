//! Waking: learning that a service is Ready, and asking for it to be scaled up.
//!
//! - [`readiness`]: Ready endpoints of a Service port from its EndpointSlices (pure, shared
//!   with the operator in `elasti_api::endpoints`).
//! - [`notify`]: the authenticated `POST /v1/wake` to the operator, one at a time per
//!   service, when the plan says so.
pub mod notify;
pub use elasti_api::endpoints as readiness;
