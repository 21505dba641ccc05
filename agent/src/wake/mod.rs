//! Waking: learning that a service is Ready, and asking for it to be scaled up.
//!
//! - [`readiness`]: Ready endpoints of a Service port from its EndpointSlices (pure).
//! - [`notify`]: the authenticated `POST /v1/wake` to the operator, retried with backoff.
pub mod notify;
pub mod readiness;
