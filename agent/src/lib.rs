//! The elasti node agent.
//!
//! - [`intercept`]: the eBPF programs that steer connects to held Services here, and their maps.
//! - [`listen`]: one listener per allocated proxy port; classifies each connection.
//! - [`hold`]: per-service bounded queues that wait for Ready endpoints.
//! - [`forward`]: from a held connection or request straight to a Ready pod.
//! - [`wake`]: readiness from EndpointSlices, and the scale-up notification.
//! - [`report`]: connection counts (`activity` triggers) and interception, to the operator.
//! - [`operator`]: the authenticated client of the operator's agent API.
//! - [`plan`]: which (Service, port)s to hold and the state machine that decides what to do
//!   about them (pure).
//! - [`run`]: the worker's loop: observe, decide, act; the admin server.
//! - [`watches`]: what the loop observes, narrowed to the managed services and stripped.
//! - [`supervisor`]: the process that keeps sockets, programs and unread held connections
//!   across the worker's crashes.
//! - [`health`]: progress of the loop and the watches, and the fail-open watchdog.
//! - [`metrics`]: every outcome, counted (served by `elasti_runtime::admin`).
#![deny(unsafe_code)]

pub mod config;
pub mod forward;
pub mod health;
pub mod hold;
pub mod intercept;
pub mod listen;
pub mod metrics;
pub mod operator;
pub mod plan;
pub mod report;
pub mod run;
pub mod supervisor;
pub mod wake;
pub mod watches;
