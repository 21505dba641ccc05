//! The elasti node agent.
//!
//! - [`intercept`]: the eBPF programs, their maps, and where they attach.
#![forbid(unsafe_code)]

pub mod intercept;
