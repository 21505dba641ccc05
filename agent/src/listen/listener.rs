//! A proxy port's listener: accept (with a connection cap, and accept errors retried with
//! backoff), peek, hold the connection **without reading it** until the service is Ready,
//! then hand it to the TCP or HTTP forwarder. The port says which service a connection is
//! for.
//!
//! Nothing is read while a connection is held, so its request stays in the socket: the
//! supervisor keeps a duplicate of the descriptor until the worker starts reading, and a
//! worker that crashes meanwhile loses nothing (its successor is handed the connection
//! back, unread).
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
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};

use super::{
    classify::{self, Protocol},
    host::Host,
    inq, probe,
};
use crate::{
    forward::{endpoints::Balancer, http::HttpForwarder, tcp},
    hold::{HeldService, HoldError},
    metrics::{self, Metrics, Outcome},
    supervisor::client::Kept,
};

/// How long to wait for a client's first bytes before treating the connection as opaque.
/// Server-speaks-first protocols (MySQL, SMTP) send nothing until greeted, so they pay this
/// once, and only while the service is held.
pub const CLASSIFY_TIMEOUT: Duration = Duration::from_millis(300);
/// Room for the longest marker [`classify`] looks for (the 24-byte h2 preface).
const PEEK_BYTES: usize = 24;
/// First pause after a failed accept (`EMFILE`, `ENFILE`, `ENOBUFS`); doubles to
/// [`ACCEPT_BACKOFF_MAX`] while accepts keep failing, so the loop neither ends nor spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Connections open at once, per listener and on the whole node: past either, a new
/// connection is closed at once (and counted), so one tenant cannot take every descriptor.
#[derive(Debug)]
pub struct Caps {
    pub per_listener: usize,
    pub node: Arc<Semaphore>,
}

/// Binds `addr` with `SO_REUSEPORT`, so a surge pod of a rolling update listens beside the
/// old one and no connect is refused while they swap.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    elasti_runtime::net::bind_reuseport(addr, super::host::BACKLOG)
}

/// An accepted connection: from the listener, or handed back by the supervisor.
pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// The supervisor's hold on it, when it keeps it.
    pub kept: Option<Kept>,
}

/// Everything a listener's connections need.
#[derive(Clone)]
pub struct Context {
    pub service: Arc<HeldService>,
    pub metrics: Arc<Metrics>,
    pub host: Host,
    pub proxy_port: u16,
}

/// A running listener for one held service. Dropping it stops accepting; connections
/// already accepted run to completion.
pub struct ProxyListener {
    local: SocketAddr,
    task: JoinHandle<()>,
    /// Accepted connections still being served (held or forwarding).
    active: Arc<AtomicUsize>,
    inject: mpsc::UnboundedSender<Conn>,
}

impl ProxyListener {
    /// Starts accepting on `listener` for `ctx.service`.
    pub fn spawn(listener: TcpListener, ctx: Context, caps: &Caps) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let balancer = Arc::new(Balancer::default());
        let http = Arc::new(HttpForwarder::new(
            ctx.service.clone(),
            ctx.metrics.clone(),
            balancer.clone(),
        ));
        let active = Arc::new(AtomicUsize::new(0));
        let counter = active.clone();
        let mine = Arc::new(Semaphore::new(caps.per_listener.max(1)));
        let node = caps.node.clone();
        let (inject, mut injected) = mpsc::unbounded_channel::<Conn>();
        let task = tokio::spawn(async move {
            let mut backoff = ACCEPT_BACKOFF;
            loop {
                let conn = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            backoff = ACCEPT_BACKOFF;
                            Conn { stream, peer, kept: None }
                        }
                        Err(e) => {
                            tracing::warn!(proxy_port = ctx.proxy_port, error = %e, ?backoff, "accept failed; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                            continue;
                        }
                    },
                    Some(conn) = injected.recv() => conn,
                };
                let permits = (
                    mine.clone().try_acquire_owned(),
                    node.clone().try_acquire_owned(),
                );
                let (Ok(p1), Ok(p2)) = permits else {
                    ctx.metrics.outcome(
                        ctx.service.id(),
                        metrics::Protocol::Tcp,
                        Outcome::Overloaded,
                    );
                    tracing::warn!(service = %ctx.service.id(), peer = %conn.peer, "connection cap reached; closed");
                    continue;
                };
                let _ = conn.stream.set_nodelay(true);
                let (ctx, balancer, http) = (ctx.clone(), balancer.clone(), http.clone());
                let guard = ActiveGuard::new(counter.clone());
                tokio::spawn(async move {
                    handle(conn, ctx, balancer, http).await;
                    drop((guard, p1, p2));
                });
            }
        });
        Ok(Self {
            local,
            task,
            active,
            inject,
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

    /// Serves `conn` (handed back by the supervisor) as if this listener had accepted it.
    pub fn inject(&self, conn: Conn) {
        let _ = self.inject.send(conn);
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

/// Serves one connection outside any listener (handed back by the supervisor after its
/// port's listener closed), counted in the node's cap as the listeners' are (a drain waits
/// for it); past the cap it is served all the same: it was accepted long ago.
pub fn serve_one(conn: Conn, ctx: Context, node: &Arc<Semaphore>) {
    let permit = node.clone().try_acquire_owned().ok();
    let balancer = Arc::new(Balancer::default());
    let http = Arc::new(HttpForwarder::new(
        ctx.service.clone(),
        ctx.metrics.clone(),
        balancer.clone(),
    ));
    tokio::spawn(async move {
        handle(conn, ctx, balancer, http).await;
        drop(permit);
    });
}

async fn handle(conn: Conn, ctx: Context, balancer: Arc<Balancer>, http: Arc<HttpForwarder>) {
    let Conn {
        stream,
        peer,
        mut kept,
    } = conn;
    let service = &ctx.service;
    let cold = service.endpoints().is_empty();
    if cold && kept.is_none() {
        kept = ctx.host.keep(ctx.proxy_port, &stream).await;
    }
    let protocol = peek_protocol(&stream).await;
    let bytes = inq::queued_bytes(&stream);
    let head = if protocol == Protocol::Http && cold {
        inspect_head(&stream, &service.probe_rules()).await
    } else {
        probe::Head::Hold
    };
    if let probe::Head::Probe(answer) = head {
        // A health check the ElastiService answers itself: nothing held, nothing woken.
        drop(kept);
        let status = answer.status;
        Box::pin(http.answer_probe(stream, answer)).await;
        ctx.metrics.outcome(
            service.id(),
            metrics::Protocol::Http1,
            Outcome::ProbeAnswered,
        );
        tracing::debug!(service = %service.id(), %peer, status, "answered a probe at zero");
        return;
    }
    let held = if head == probe::Head::Invalid {
        // Bad HTTP is answered now (400, by hyper), not held until the pods come.
        Ok(crate::hold::Ready {
            endpoints: crate::hold::Endpoints::from(Vec::new()),
            waited: Duration::ZERO,
            cold_start: None,
            turn: None,
        })
    } else {
        tokio::select! {
            held = service.acquire(bytes) => held,
            () = client_gone(&stream) => {
                drop(kept);
                ctx.metrics.outcome(service.id(), metrics_protocol(protocol), Outcome::ClientGone);
                tracing::debug!(service = %service.id(), %peer, "the client left while held");
                return;
            }
        }
    };
    // From here on the connection is read: a crash can no longer hand it back intact.
    drop(kept);
    // Boxed: a task's allocation is the size of its largest state, and hyper's connection
    // and the splice are several times what a held connection needs (the bench measures
    // what one costs). Allocated only once released.
    Box::pin(forward(stream, peer, protocol, held, &ctx, &balancer, http)).await;
}

/// Serves a connection once its hold is over: forwarded, or answered with why not.
async fn forward(
    stream: TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    held: Result<crate::hold::Ready, HoldError>,
    ctx: &Context,
    balancer: &Balancer,
    http: Arc<HttpForwarder>,
) {
    let id = ctx.service.id().clone();
    if let Ok(crate::hold::Ready {
        cold_start: Some(d),
        ..
    }) = &held
    {
        ctx.metrics.cold_start(&id, *d);
    }
    match (protocol, held) {
        (Protocol::Http, Ok(ready)) => {
            if let Err(e) = http.serve(stream, peer, ready.waited, ready.turn).await {
                tracing::debug!(service = %id, %peer, error = %elasti_runtime::DisplayChain(&e), "HTTP connection ended with an error");
            }
        }
        (Protocol::Http, Err(refused)) => {
            let outcome = outcome_of(&refused);
            tracing::warn!(service = %id, %peer, error = %refused, "HTTP connection answered without forwarding");
            http.refuse(stream, &refused).await;
            ctx.metrics.outcome(&id, metrics::Protocol::Http1, outcome);
        }
        (Protocol::Opaque | Protocol::NeedMore, Ok(ready)) => {
            let connected = balancer.connect_held(&ctx.service, ready.endpoints).await;
            let outcome = match connected {
                Ok((upstream, _)) => {
                    let outcome = if ready.waited.is_zero() {
                        Outcome::Forwarded
                    } else {
                        ctx.metrics.waited(&id, ready.waited);
                        Outcome::ForwardedAfterHold
                    };
                    // Counted when the splice starts: the outcome of the hold is decided.
                    ctx.metrics.outcome(&id, metrics::Protocol::Tcp, outcome);
                    if let Err(e) = tcp::copy(stream, upstream, ready.turn).await {
                        tracing::debug!(service = %id, %peer, error = %elasti_runtime::DisplayChain(&e), "spliced connection ended with an error");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(service = %id, %peer, error = %elasti_runtime::DisplayChain(&e), "no endpoint took the connection; closed");
                    Outcome::UpstreamFailed
                }
            };
            ctx.metrics.outcome(&id, metrics::Protocol::Tcp, outcome);
        }
        (Protocol::Opaque | Protocol::NeedMore, Err(refused)) => {
            tracing::warn!(service = %id, %peer, error = %refused, "raw TCP connection closed without forwarding");
            ctx.metrics
                .outcome(&id, metrics::Protocol::Tcp, outcome_of(&refused));
        }
    }
}

/// How often a held connection is checked for a client that went away (it is not read
/// while held, so nothing else would notice until the pods are Ready).
const GONE_CHECK: Duration = Duration::from_secs(1);

/// Resolves once the client has closed or reset the connection (`POLLRDHUP`, which a
/// request waiting unread in the socket does not mask).
async fn client_gone(stream: &TcpStream) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    loop {
        tokio::time::sleep(GONE_CHECK).await;
        // nix names no POLLRDHUP; the kernel's bit is libc's.
        let rdhup = PollFlags::from_bits_retain(nix::libc::POLLRDHUP as _);
        let mut fds = [PollFd::new(
            stream.as_fd(),
            rdhup | PollFlags::POLLHUP | PollFlags::POLLERR,
        )];
        if poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0) {
            return;
        }
    }
}

/// The largest request head checked before holding; longer heads are held and left to
/// hyper's own limits once forwarded.
const HEAD_CHECK_BYTES: usize = 8 << 10;

/// What the request head is ([`probe::inspect`]): HTTP/1.x that cannot parse (answered
/// 400 at once), a probe a rule answers, or anything to hold (the h2 preface included).
/// With rules to match, a head still arriving in pieces is looked at again for up to
/// [`HEAD_WAIT`].
async fn inspect_head(stream: &TcpStream, rules: &elasti_api::probe::CompiledRules) -> probe::Head {
    let mut buf = vec![0u8; HEAD_CHECK_BYTES];
    let deadline = tokio::time::Instant::now() + HEAD_WAIT;
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return probe::Head::Hold,
        };
        if buf[..n].starts_with(classify::H2_PREFACE) {
            return probe::Head::Hold;
        }
        match probe::inspect(&buf[..n], rules) {
            probe::Head::Partial
                if !rules.is_empty()
                    && n > 0
                    && n < buf.len()
                    && tokio::time::Instant::now() < deadline =>
            {
                // peek() returns what is queued at once; wait a moment for the rest.
                tokio::time::sleep(HEAD_POLL).await;
            }
            probe::Head::Partial => return probe::Head::Hold,
            head => return head,
        }
    }
}

/// How long a head matched against `probeResponse` rules may take to arrive whole.
const HEAD_WAIT: Duration = Duration::from_millis(500);
/// How often a partial head is looked at again.
const HEAD_POLL: Duration = Duration::from_millis(2);

fn metrics_protocol(p: Protocol) -> metrics::Protocol {
    match p {
        Protocol::Http => metrics::Protocol::Http1,
        Protocol::Opaque | Protocol::NeedMore => metrics::Protocol::Tcp,
    }
}

/// How a refused hold is counted.
pub fn outcome_of(e: &HoldError) -> Outcome {
    match e {
        HoldError::QueueFull(_) | HoldError::NodeFull(_) => Outcome::QueueFull,
        HoldError::Deadline(..) => Outcome::Deadline,
        HoldError::TargetNotFound(_) => Outcome::TargetNotFound,
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
