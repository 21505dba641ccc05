//! The contracts between elasti's parts and its users:
//!
//! - [`ElastiService`]: the CRD, wire-compatible with KubeElasti's `elasti.truefoundry.com/v1alpha1`
//!   (existing manifests apply unchanged), plus Kubernetes-style status extensions.
//! - [`schedule`]: when `enabledPeriod` allows scale-to-zero, and when that next changes.
//! - [`probe`]: which `probeResponse` rule answers a request, and how.
//! - [`wake`]: the agent → operator scale-up notification (design §2.5).
//! - [`report`]: the agents' reports to the operator (activity counts, interception).
//! - [`conditions`]: the condition types and reasons the agent acts on.
//! - [`endpoints`]: a Service port's Ready endpoints, from its EndpointSlices.
//! - [`fallback`]: how the operator's fallback EndpointSlices are told apart (design §2.4).
#![forbid(unsafe_code)]

pub mod conditions;
mod elastiservice;
pub mod endpoints;
pub mod fallback;
pub mod probe;
pub mod report;
pub mod schedule;
pub mod wake;

pub use elastiservice::*;
