//! What the agent and the operator binaries share, so each is written once:
//!
//! - [`admin`]: the `/metrics`, `/healthz` and `/readyz` server;
//! - [`config_file`]: `--config` YAML files of flag values under clap;
//! - [`reflect`]: a reflector scoped to `WATCH_NAMESPACES`;
//! - [`net`]: `SO_REUSEPORT` listeners;
//! - [`init_tracing`]: text or JSON logs, filtered by `RUST_LOG`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config_file;
pub mod net;
mod reflect;

pub use reflect::{Events, reflect};

/// Installs the global `tracing` subscriber: `RUST_LOG` (default `info`), text or JSON.
pub fn init_tracing(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}
