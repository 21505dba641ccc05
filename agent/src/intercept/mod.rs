//! Interception: the eBPF programs that steer connects aimed at held Services to this
//! agent, and the maps through which the agent tells them which Services are held.
//!
//! - [`ids`]: numeric ids of held ports, the index of the rewrite counters (pure).
//! - [`keys`]: pure encoding of addresses into the map's key and value types.
//! - [`proxy_addr`]: the link-local address (on a link of the agent's own) connects are
//!   steered to.
//! - [`programs`]: loading the object, attaching at a cgroup, and the [`Interceptor`] handle
//!   that owns the maps.
pub mod ids;
pub mod keys;
pub mod programs;
pub mod proxy_addr;

pub use programs::{Error, Interceptor};
