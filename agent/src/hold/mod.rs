//! Holding: where connections and requests for a Service with no Ready endpoint wait.
//!
//! - [`admission`]: the pure bound decisions: each service's queue, the node's budget.
//! - [`service`]: [`HeldService`], one per held (Service, port): its Ready endpoints as a
//!   `watch` channel, its bounded queue, its deadline, and the signal that someone waits.
pub mod admission;
pub mod service;

pub use admission::Budget;
pub use service::{
    Endpoints, HeldService, HoldError, OnHeld, RELEASE_IN_FLIGHT, RELEASE_TURN_MAX, Ready,
    ReleaseTurn, ServiceId,
};
