//! What the agent and the operator binaries share, so each is written once:
//!
//! - [`admin`]: the `/metrics`, `/healthz` and `/readyz` server;
//! - [`config_file`]: `--config` YAML files of flag values under clap;
//! - [`reflect`]: a reflector scoped to `WATCH_NAMESPACES` ([`reflect_stripped`]: each
//!   object stripped first);
//! - [`net`]: `SO_REUSEPORT` listeners;
//! - [`init_tracing`]: text or JSON logs, filtered by `RUST_LOG`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config_file;
pub mod net;
mod reflect;

pub use reflect::{Events, reflect, reflect_stripped};

/// An error and every cause under it, `: `-separated, for logs: `%e` alone drops the
/// causes that say what actually failed.
pub struct DisplayChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// Installs the global `tracing` subscriber: `RUST_LOG` (default `info`), text or JSON, on
/// stdout. Text is coloured only on a terminal: under `kubectl logs` escape codes are noise.
pub fn init_tracing(json: bool) {
    use std::io::IsTerminal;
    let ansi = std::io::stdout().is_terminal();
    let _ = tracing::subscriber::set_global_default(subscriber(json, ansi, std::io::stdout));
}

/// The subscriber [`init_tracing`] installs, writing to `writer`.
fn subscriber<W>(json: bool, ansi: bool, writer: W) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        Box::new(fmt.json().finish())
    } else {
        Box::new(fmt.with_ansi(ansi).finish())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_chain_shows_every_cause() {
        let inner = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(Wrapped(inner));
        assert_eq!(
            DisplayChain(&outer).to_string(),
            "wake failed: connection refused"
        );
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wake failed")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn logged(ansi: bool) -> String {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let sub = subscriber(false, ansi, move || out.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(service = "web", "held");
        });
        let bytes = buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn text_logs_off_a_terminal_carry_no_escape_codes() {
        let text = logged(false);
        assert!(
            text.contains("held") && text.contains("service=\"web\""),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "escape codes in {text:?}");
        assert!(logged(true).contains('\x1b'), "a terminal gets colour");
    }
}
