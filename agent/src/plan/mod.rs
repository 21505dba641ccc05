//! What the agent should do, pure:
//!
//! - [`desired`]: the ports to hold, from the ElastiServices and their Services;
//! - [`machine`]: the state machine that turns what was observed and `now` into actions
//!   (listen, map, feed, wake, close, forget).
pub mod desired;
pub mod machine;

pub use desired::{HeldPort, held_ports};
pub use machine::{Action, Decision, Failure, Machine, Observed, Refusal, Settings};
