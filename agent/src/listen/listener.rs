//! A proxy port's listener: accept, peek, classify, and hand each connection to the TCP or
//! HTTP forwarder of its service. The port says which service a connection is for.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::classify::{self, Protocol};
use crate::{
    forward::{endpoints::Balancer, http::HttpForwarder, tcp},
    hold::{HeldService, HoldError},
    metrics::{self, Metrics, Outcome},
};

/// How long to wait for a client's first bytes before treating the connection as opaque.
/// Server-speaks-first protocols (MySQL, SMTP) send nothing until greeted, so they pay this
/// once, and only while the service is held.
pub const CLASSIFY_TIMEOUT: Duration = Duration::from_millis(300);
/// Room for the longest marker [`classify`] looks for (the 24-byte h2 preface).
const PEEK_BYTES: usize = 24;
/// Backlog of each proxy listener; bursts of cold connects queue here before accept.
const BACKLOG: i32 = 4096;

/// Binds `addr` with `SO_REUSEPORT`, so a surge agent of a rolling update listens beside
/// the old one and no connect is refused while they swap.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    elasti_runtime::net::bind_reuseport(addr, BACKLOG)
}

/// A running listener for one held service. Dropping it stops accepting; connections
/// already accepted run to completion.
pub struct ProxyListener {
    local: SocketAddr,
    task: JoinHandle<()>,
    /// Accepted connections still being served (held or forwarding).
    active: Arc<AtomicUsize>,
}

impl ProxyListener {
    /// Starts accepting on `listener` for `service`.
    pub fn spawn(
        listener: TcpListener,
        service: Arc<HeldService>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let balancer = Arc::new(Balancer::default());
        let http = Arc::new(HttpForwarder::new(
            service.clone(),
            metrics.clone(),
            balancer.clone(),
        ));
        let active = Arc::new(AtomicUsize::new(0));
        let counter = active.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off briefly rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (service, metrics, balancer, http) = (
                    service.clone(),
                    metrics.clone(),
                    balancer.clone(),
                    http.clone(),
                );
                let guard = ActiveGuard::new(counter.clone());
                tokio::spawn(async move {
                    handle(stream, peer, service, metrics, balancer, http).await;
                    drop(guard);
                });
            }
        });
        Ok(Self {
            local,
            task,
            active,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A counter of the connections this listener accepted that are still open; it stays
    /// valid after the listener is dropped, for draining.
    pub fn active(&self) -> Arc<AtomicUsize> {
        self.active.clone()
    }
}

/// Counts one accepted connection for as long as it is served.
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ProxyListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    service: Arc<HeldService>,
    metrics: Arc<Metrics>,
    balancer: Arc<Balancer>,
    http: Arc<HttpForwarder>,
) {
    match peek_protocol(&stream).await {
        Protocol::Http => {
            if let Err(e) = http.serve(stream).await {
                tracing::debug!(service = %service.id(), %peer, error = %e, "HTTP connection ended with an error");
            }
        }
        Protocol::Opaque | Protocol::NeedMore => {
            let id = service.id().clone();
            let outcome = match tcp::connect(&service, &balancer).await {
                Ok((upstream, waited)) => {
                    let outcome = if waited.is_zero() {
                        Outcome::Forwarded
                    } else {
                        metrics.waited(&id, waited);
                        Outcome::ForwardedAfterHold
                    };
                    // Counted when the splice starts: the outcome of the hold is decided.
                    metrics.outcome(&id, metrics::Protocol::Tcp, outcome);
                    if let Err(e) = tcp::copy(stream, upstream).await {
                        tracing::debug!(service = %id, %peer, error = %e, "spliced connection ended with an error");
                    }
                    return;
                }
                Err(tcp::Error::Hold(HoldError::QueueFull(_))) => Outcome::QueueFull,
                Err(tcp::Error::Hold(HoldError::Deadline(..))) => Outcome::Deadline,
                Err(tcp::Error::Connect(_) | tcp::Error::Copy(_)) => Outcome::UpstreamFailed,
            };
            tracing::warn!(service = %id, %peer, ?outcome, "raw TCP connection closed without forwarding");
            metrics.outcome(&id, metrics::Protocol::Tcp, outcome);
        }
    }
}

/// Peeks until the first bytes tell the protocol, the client stops sending, or
/// [`CLASSIFY_TIMEOUT`] passes.
async fn peek_protocol(stream: &TcpStream) -> Protocol {
    let mut buf = [0u8; PEEK_BYTES];
    let deadline = tokio::time::Instant::now() + CLASSIFY_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return Protocol::Opaque,
        };
        if n == 0 {
            return Protocol::Opaque;
        }
        match classify::classify(&buf[..n]) {
            Protocol::NeedMore if n < buf.len() => {
                // peek returns what is there; wait for more without spinning.
                if tokio::time::timeout_at(deadline, stream.readable())
                    .await
                    .is_err()
                {
                    return Protocol::Opaque;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Protocol::NeedMore => return Protocol::Opaque,
            decided => return decided,
        }
    }
}
