//! Which endpoint to try, and connecting with failover: a pod that died after it was
//! listed Ready (or refuses) costs one failed connect, not the request. Connects are paced:
//! a release of thousands of held connections has at most [`MAX_CONNECTS_IN_FLIGHT`]
//! handshakes in progress at a time.
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::{net::TcpStream, sync::Semaphore};

use crate::hold::{Endpoints, HeldService, HoldError};

/// A connect to one endpoint may take this long before the next is tried. Pod IPs are on
/// the node's network, so a healthy connect takes well under a millisecond.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Handshakes one service's forwarders may have in progress at once on this node.
/// Unpaced, releasing a full queue (10,000 by default) starts 10,000 connects in the same
/// instant: as many half-open sockets in the agent, and a SYN burst at one freshly started
/// pod whose SYN queue (`tcp_max_syn_backlog`, often 128 to 2048) may be far smaller.
/// Paced, the release costs nothing measurable: the bench drains 10,000 held connections
/// in 0.80 s, against 0.87 s unpaced.
pub const MAX_CONNECTS_IN_FLIGHT: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// There was no endpoint to try.
    #[error("no Ready endpoint")]
    NoEndpoints,
    /// Every endpoint refused or timed out; the last error is the source.
    #[error("all {tried} endpoints failed")]
    AllFailed {
        tried: usize,
        #[source]
        last: std::io::Error,
    },
    /// Every endpoint refused, and holding again for new ones failed (deadline, queue).
    #[error("every Ready endpoint refused, and holding for new ones failed")]
    Rehold(#[source] HoldError),
}

/// The order in which to try `len` endpoints, starting at the round-robin position `turn`.
pub fn rotation(len: usize, turn: usize) -> impl Iterator<Item = usize> {
    (0..len).map(move |i| (turn + i) % len.max(1))
}

/// Spreads connects across endpoints (round robin, one counter per service) and paces them
/// (at most a fixed number of handshakes in progress).
#[derive(Debug)]
pub struct Balancer {
    turn: AtomicUsize,
    handshakes: Semaphore,
}

impl Default for Balancer {
    fn default() -> Self {
        Self::with_max_in_flight(MAX_CONNECTS_IN_FLIGHT)
    }
}

impl Balancer {
    /// A balancer allowing `max` handshakes in progress at once.
    pub fn with_max_in_flight(max: usize) -> Self {
        Self {
            turn: AtomicUsize::new(0),
            handshakes: Semaphore::new(max.max(1)),
        }
    }

    /// Connects to the next endpoint, failing over to the others in turn. Waits for a
    /// handshake slot first; the wait is not charged to any endpoint's connect timeout.
    pub async fn connect(
        &self,
        endpoints: &[SocketAddr],
    ) -> Result<(TcpStream, SocketAddr), Error> {
        if endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        // The semaphore is never closed, so this only waits.
        let _slot = self.handshakes.acquire().await.ok();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in rotation(endpoints.len(), turn) {
            let addr = endpoints[i];
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, addr));
                }
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "endpoint refused; trying the next");
                    last = Some(e);
                }
                Err(_) => {
                    last = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect to {addr}"),
                    ))
                }
            }
        }
        Err(Error::AllFailed {
            tried: endpoints.len(),
            last: last.unwrap_or_else(|| std::io::Error::other("no endpoint tried")),
        })
    }

    /// [`Balancer::connect`] for a connection of `service`: when every endpoint listed
    /// Ready refuses (pods that exit at once on SIGTERM while their EndpointSlice still
    /// lists them, in a scale-down), the connection waits for the watch to show another
    /// set and tries that; if none is left it is held again like any cold connection (the
    /// queue counts it and the operator is woken). All within the service's hold deadline.
    ///
    /// # Errors
    /// The last connect's error once the deadline has passed, or why holding again failed.
    pub async fn connect_held(
        &self,
        service: &HeldService,
        mut endpoints: Endpoints,
    ) -> Result<(TcpStream, SocketAddr), Error> {
        let deadline = tokio::time::Instant::now() + service.deadline();
        loop {
            let failed = match self.connect(&endpoints).await {
                Ok(done) => return Ok(done),
                Err(e) => e,
            };
            let mut rx = service.watch_endpoints();
            let changed = tokio::time::timeout_at(deadline, async {
                // The watch's guard is dropped here, before any other await.
                rx.wait_for(|now| now[..] != endpoints[..])
                    .await
                    .map(|now| now.clone())
            })
            .await;
            endpoints = match changed {
                Ok(Ok(now)) => now,
                _ => return Err(failed),
            };
            tracing::debug!(service = %service.id(), endpoints = endpoints.len(), error = %elasti_runtime::DisplayChain(&failed), "every endpoint refused; trying the next set");
            if endpoints.is_empty() {
                endpoints = service.acquire(0).await.map_err(Error::Rehold)?.endpoints;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_service(
        deadline: Duration,
    ) -> (
        tokio::sync::watch::Sender<Endpoints>,
        std::sync::Arc<HeldService>,
    ) {
        let (tx, rx) = tokio::sync::watch::channel(Endpoints::from(Vec::new()));
        let limits = crate::hold::admission::Limits {
            deadline,
            ..crate::hold::admission::Limits::default()
        };
        let service = HeldService::new(
            crate::hold::ServiceId {
                namespace: "ns".into(),
                name: "web".into(),
                port: 80,
            },
            rx,
            limits,
            std::sync::Arc::new(crate::hold::Budget::new(100, 1 << 20)),
            std::sync::Arc::new(|| {}),
            prometheus_client::metrics::gauge::Gauge::default(),
        );
        (tx, std::sync::Arc::new(service))
    }

    fn refused_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn a_connection_whose_pods_all_refuse_waits_for_the_next_set_then_holds_again() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let live_addr = live.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let dead = Endpoints::from(vec![refused_addr()]);
        let (tx, service) = held_service(Duration::from_secs(10));
        tx.send_replace(dead.clone());
        let b = Balancer::default();
        let task = {
            let (service, dead) = (service.clone(), dead.clone());
            tokio::spawn(async move { Balancer::default().connect_held(&service, dead).await })
        };
        // The dying pod leaves the slice: nothing Ready, so the connection is held again
        // (counted in the queue, which is what wakes the operator).
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(Endpoints::from(Vec::new()));
        for _ in 0..100 {
            if service.held() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(service.held(), 1, "held again while nothing is Ready");
        tx.send_replace(Endpoints::from(vec![live_addr]));
        let (_, addr) = task
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(addr, live_addr);
        assert_eq!(service.held(), 0);
        // With no change before the deadline, the connect error is the answer.
        let (tx, service) = held_service(Duration::from_millis(100));
        tx.send_replace(dead.clone());
        let r = b.connect_held(&service, dead).await;
        assert!(matches!(r, Err(Error::AllFailed { .. })), "{r:?}");
    }

    #[test]
    fn rotation_visits_every_endpoint_once_starting_at_the_turn() {
        assert_eq!(rotation(3, 4).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(rotation(1, 7).collect::<Vec<_>>(), vec![0]);
        assert_eq!(rotation(0, 7).count(), 0);
    }

    #[tokio::test]
    async fn a_dead_endpoint_is_skipped() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let live_addr = live.local_addr().unwrap_or_else(|e| panic!("{e}"));
        // A port that was just free: connecting is refused.
        let dead_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            l.local_addr().unwrap_or_else(|e| panic!("{e}"))
        };
        let b = Balancer::default();
        for _ in 0..4 {
            let (_, addr) = b
                .connect(&[dead_addr, live_addr])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(addr, live_addr);
        }
    }

    /// A listener whose accept queue is full: the kernel drops further SYNs, so a connect
    /// to it stays in its handshake until [`CONNECT_TIMEOUT`].
    fn full_backlog() -> (socket2::Socket, std::net::TcpStream, SocketAddr) {
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .unwrap_or_else(|e| panic!("{e}"));
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!());
        l.bind(&any.into()).unwrap_or_else(|e| panic!("{e}"));
        l.listen(0).unwrap_or_else(|e| panic!("{e}"));
        let addr = l
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or_else(|| unreachable!());
        // Backlog 0 admits one unaccepted connection; it fills the queue.
        let filler = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        (l, filler, addr)
    }

    #[tokio::test]
    async fn handshakes_beyond_the_limit_wait_for_a_slot() {
        let (_l, _filler, stuck) = full_backlog();
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let live_addr = live.local_addr().unwrap_or_else(|e| panic!("{e}"));

        for (max, next_connects) in [(1, false), (2, true)] {
            let b = std::sync::Arc::new(Balancer::with_max_in_flight(max));
            let stalled = tokio::spawn({
                let b = b.clone();
                async move { b.connect(&[stuck]).await.map(|_| ()) }
            });
            // Let the stalled connect take its slot.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let next =
                tokio::time::timeout(Duration::from_millis(500), b.connect(&[live_addr])).await;
            assert_eq!(
                next.is_ok(),
                next_connects,
                "max {max}: with one handshake stalled, the next connect {}",
                if next_connects { "proceeds" } else { "waits" }
            );
            stalled.abort();
        }
    }
}
