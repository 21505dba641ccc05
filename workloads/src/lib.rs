//! Test workloads for elasti's suites, as a library so in-process tests run the very same
//! servers the images run.

pub mod client;
pub mod http;
pub mod tcp_echo;

/// The pod name, from the downward API (`POD_NAME`), else the hostname.
pub fn pod_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Resolves on SIGTERM or Ctrl-C, so pods stop promptly.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
