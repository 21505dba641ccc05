//! Holding: where connections and requests for a Service with no Ready endpoint wait.
//!
//! - [`admission`]: the pure queue-bound decision.
//! - [`service`]: [`HeldService`], one per held (Service, port): its Ready endpoints as a
//!   `watch` channel, its bounded queue, its deadline, and its wake signal.
pub mod admission;
pub mod service;

pub use service::{Endpoints, HeldService, HoldError, Ready, ServiceId, Wake};
