//! Which endpoint to try, and connecting with failover: a pod that died after it was
//! listed Ready (or refuses) costs one failed connect, not the request.
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::net::TcpStream;

/// A connect to one endpoint may take this long before the next is tried. Pod IPs are on
/// the node's network, so a healthy connect takes well under a millisecond.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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

/// Spreads connects across endpoints (round robin, one counter per service).
#[derive(Debug, Default)]
pub struct Balancer(AtomicUsize);

impl Balancer {
    /// Connects to the next endpoint, failing over to the others in turn.
    pub async fn connect(
        &self,
        endpoints: &[SocketAddr],
    ) -> Result<(TcpStream, SocketAddr), Error> {
        if endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let turn = self.0.fetch_add(1, Ordering::Relaxed);
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
}
