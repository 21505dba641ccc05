//! Listening: one socket per allocated proxy port (`SO_REUSEPORT`, so a surge pod of a
//! rolling update can bind the same ports), open only while the port is held or in its
//! hand-back grace, and the dispatch of each accepted connection by its first bytes.
//!
//! - [`classify`]: which protocol a connection speaks, from a peek (pure).
//! - [`host`]: where listeners come from (the worker itself, or its supervisor).
//! - [`listener`]: accepting, peeking, holding unread, handing over to `forward`.
//! - `inq`: the unread bytes a held connection pins.
//! - [`probe`]: the `probeResponse` health checks answered at zero without waking (pure).
pub mod classify;
pub mod host;
mod inq;
pub mod listener;
pub mod probe;

pub use host::Host;
pub use listener::{Caps, Conn, Context, ProxyListener, bind_reuseport};
