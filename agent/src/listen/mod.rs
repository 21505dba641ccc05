//! Listening: one socket per allocated proxy port (`SO_REUSEPORT`, so a surge pod of a
//! rolling update can bind the same ports), and the dispatch of each accepted connection
//! by its first bytes.
//!
//! - [`classify`]: which protocol a connection speaks, from a peek (pure).
//! - [`listener`]: binding, accepting, peeking and handing over to `forward`.
pub mod classify;
pub mod listener;

pub use listener::{ProxyListener, bind_reuseport};
