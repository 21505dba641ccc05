//! Holding: where connections and requests for a Service with no Ready endpoint wait.
//!
//! - [`admission`]: the pure bound decisions: each service's queue, the node's budget.
//! - [`service`]: [`HeldService`], one per held (Service, port): its Ready endpoints as a
//!   `watch` channel, its bounded queue, its deadline, and the signal that someone waits.
//! - [`release`]: the turns in which a Ready service's held callers go, narrow first.
pub mod admission;
pub mod release;
pub mod service;

pub use admission::Budget;
pub use release::{RELEASE_FIRST_TURNS, RELEASE_IN_FLIGHT, ReleaseTurn};
pub use service::{Endpoints, HeldService, HoldError, OnHeld, RELEASE_TURN_MAX, Ready, ServiceId};
