//! The elasti node agent.
//!
//! - [`intercept`]: the eBPF programs that steer connects to held Services here, and their maps.
//! - [`listen`]: one listener per allocated proxy port; classifies each connection.
//! - [`hold`]: per-service bounded queues that wait for Ready endpoints.
//! - [`forward`]: from a held connection or request straight to a Ready pod.
//! - [`wake`]: readiness from EndpointSlices, and the scale-up notification.
//! - [`plan`]: which (Service, port)s to hold, from the watched objects (pure).
//! - [`run`]: the agent's main loop: watches, listeners, map entries, admin server.
//! - [`metrics`]: every outcome, counted (served by `elasti_runtime::admin`).
#![forbid(unsafe_code)]

pub mod config;
pub mod forward;
pub mod hold;
pub mod intercept;
pub mod listen;
pub mod metrics;
pub mod plan;
pub mod run;
pub mod wake;
