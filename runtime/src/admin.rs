//! `/metrics` (Prometheus text), `/healthz` (the process makes progress) and `/readyz`
//! (synced and serving). Bounded like every other endpoint of elasti: a header-read
//! timeout, a cap on open connections, and accept errors retried with backoff instead of
//! ending the server.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

/// Connections the admin server serves at once; probes and a scraper need a handful. More
/// are closed at accept, so a flood of the port cannot exhaust the process.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections one client address may hold open: one pod cannot take every slot.
pub const MAX_PER_CLIENT: usize = 8;
/// A client must have sent its request head by then.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, whatever it does (a scrape takes milliseconds).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// First pause after a failed accept; doubles to one second while accepts keep failing.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// What `/readyz` and `/healthz` answer.
pub trait Health: Send + Sync {
    /// Synced and serving.
    fn ready(&self) -> bool;
    /// Making progress; the error says what stalled (the liveness probe restarts it).
    fn live(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Ready once set; always live.
impl Health for AtomicBool {
    fn ready(&self) -> bool {
        self.load(Ordering::Acquire)
    }
}

/// Serves the admin endpoints on `addr` until the task is dropped.
///
/// # Errors
/// Only when `addr` cannot be bound; accept errors are retried.
pub async fn serve<H: Health + ?Sized + 'static>(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<H>,
) -> std::io::Result<()> {
    // SO_REUSEPORT: during a rolling update the surge agent serves beside the old one.
    let listener = crate::net::bind_reuseport(addr, 128)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_client = Arc::new(PerClient::default());
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF;
                accepted
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, ?backoff, "admin accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(mine) = per_client.clone().enter(peer.ip()) else {
            // This client holds its share already: closed at once.
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: closed at once.
            continue;
        };
        let (registry, health) = (registry.clone(), health.clone());
        tokio::spawn(async move {
            // hyper times the head only once its first byte arrived: a client that sends
            // nothing at all is closed here.
            // (A peek, not `readable()`, which may wake spuriously.)
            let mut first = [0u8; 1];
            match tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let svc = service_fn(move |req| {
                let (registry, health) = (registry.clone(), health.clone());
                async move { Ok::<_, Infallible>(route(&req, &registry, health.as_ref())) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(16 << 10);
            builder.http2().max_concurrent_streams(16);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop((slot, mine));
        });
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

impl PerClient {
    fn enter(self: Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut open = self.0.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if *n >= MAX_PER_CLIENT {
            return None;
        }
        *n += 1;
        drop(open);
        Some(ClientSlot { of: self, ip })
    }
}

struct ClientSlot {
    of: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.of.0.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

fn route<H: Health + ?Sized>(
    req: &Request<Incoming>,
    registry: &Registry,
    health: &H,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding metrics failed\n".into(),
                );
            }
            let mut r = plain(StatusCode::OK, text);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/healthz" => match health.live() {
            Ok(()) => plain(StatusCode::OK, "ok\n".into()),
            Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/readyz" if health.ready() && health.live().is_ok() => {
            plain(StatusCode::OK, "ok\n".into())
        }
        "/readyz" => plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        _ => plain(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    struct Stalled;

    impl Health for Stalled {
        fn ready(&self) -> bool {
            true
        }
        fn live(&self) -> Result<(), String> {
            Err("the main loop made no progress for 45s".into())
        }
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    async fn start<H: Health + 'static>(health: Arc<H>) -> SocketAddr {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = probe.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(probe);
        tokio::spawn(serve(addr, Arc::new(Registry::default()), health));
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_that_stalled_fails_both_probes() {
        let addr = start(Arc::new(Stalled)).await;
        let (live, ready) =
            tokio::task::spawn_blocking(move || (get(addr, "/healthz"), get(addr, "/readyz")))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            live.starts_with("HTTP/1.1 503") && live.contains("no progress"),
            "{live}"
        );
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flooding_client_does_not_take_another_clients_slots() {
        let addr = start(Arc::new(AtomicBool::new(true))).await;
        let answer = tokio::task::spawn_blocking(move || {
            let idle: Vec<_> = (0..MAX_CONNECTIONS * 2)
                .filter_map(|_| std::net::TcpStream::connect(addr).ok())
                .collect();
            // Another address of the loopback network: another client.
            let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .unwrap_or_else(|e| panic!("{e}"));
            let from: SocketAddr = "127.0.0.2:0".parse().unwrap_or_else(|_| unreachable!());
            other.bind(&from.into()).unwrap_or_else(|e| panic!("{e}"));
            other
                .connect(&addr.into())
                .unwrap_or_else(|e| panic!("{e}"));
            let mut s: std::net::TcpStream = other.into();
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            write!(
                s,
                "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .ok();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            drop(idle);
            out
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_past_the_cap_do_not_stop_a_probe_for_long() {
        let addr = start(Arc::new(AtomicBool::new(true))).await;
        let answer = tokio::task::spawn_blocking(move || {
            // Far more than one client's share, each sending nothing (slowloris): the
            // share refuses the excess, the header-read timeout frees the rest.
            let idle: Vec<_> = (0..MAX_CONNECTIONS * 2)
                .filter_map(|_| std::net::TcpStream::connect(addr).ok())
                .collect();
            let start = std::time::Instant::now();
            let mut r = get(addr, "/healthz");
            while !r.starts_with("HTTP/1.1 200") && start.elapsed() < Duration::from_secs(15) {
                std::thread::sleep(Duration::from_millis(200));
                r = get(addr, "/healthz");
            }
            drop(idle);
            (r, start.elapsed())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(answer.0.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(
            answer.1 < HEADER_READ_TIMEOUT + Duration::from_secs(3),
            "answered within the header-read timeout: {:?}",
            answer.1
        );
    }
}
