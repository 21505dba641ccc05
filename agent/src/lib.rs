//! The elasti node agent.
//!
//! - [`intercept`]: the eBPF programs that steer connects to held Services here, and their maps.
//! - [`listen`]: one listener per allocated proxy port; classifies each connection.
//! - [`hold`]: per-service bounded queues that wait for Ready endpoints.
//! - [`forward`]: from a held connection or request straight to a Ready pod.
//! - [`metrics`]: every outcome, counted.
#![forbid(unsafe_code)]

pub mod forward;
pub mod hold;
pub mod intercept;
pub mod listen;
pub mod metrics;
