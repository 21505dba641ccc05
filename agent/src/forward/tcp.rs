//! Raw TCP: once the service is Ready and a pod accepted, copy both ways until either side
//! closes. The bytes the client already sent (peeked, never consumed) go first. A splice
//! goes on after the hand-back until the client closes it.
//!
//! The bytes move with `splice(2)` through a pipe per direction, so they never enter the
//! agent's memory: socket → pipe → socket inside the kernel. Where a pipe cannot be made
//! (the descriptor limit), a userspace copy does the same job, slower.
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{SpliceFFlags, splice};
use tokio::{io::Interest, net::TcpStream};

use crate::hold::{RELEASE_TURN_MAX, ReleaseTurn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spliced connection broke (a reset by either side mid-stream).
    #[error("copying between client and pod failed")]
    Copy(#[source] std::io::Error),
}

/// Bytes copied client→pod and pod→client.
pub type Copied = (u64, u64);

/// The most one `splice` call moves, and each pipe's capacity: 256 KiB, a quarter of what
/// an unprivileged process may give a pipe (`/proc/sys/fs/pipe-max-size`, 1 MiB by
/// default). Four times the default pipe: a quarter of the calls and wake-ups per byte.
const PIPE_BYTES: usize = 256 << 10;

/// Copies both ways until either side closes. A held connection's `turn` in the release
/// is given back when the pod first has bytes for it (its answer is on its way), or after
/// [`RELEASE_TURN_MAX`] (a pod that waits for more, or never speaks first).
pub async fn copy(
    mut client: TcpStream,
    mut upstream: TcpStream,
    turn: Option<ReleaseTurn>,
) -> Result<Copied, Error> {
    let pipes = (pipe(), pipe());
    let (Ok(up), Ok(down)) = pipes else {
        drop(turn);
        tracing::debug!("no pipe for splice; copying through userspace");
        return tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .map_err(Error::Copy);
    };
    let give_back = async {
        if let Some(turn) = turn {
            let _ = tokio::time::timeout(RELEASE_TURN_MAX, upstream.readable()).await;
            drop(turn);
        }
        Ok(())
    };
    let (copied_up, copied_down, ()) = tokio::try_join!(
        one_way(&client, &upstream, up),
        one_way(&upstream, &client, down),
        give_back
    )
    .map_err(Error::Copy)?;
    Ok((copied_up, copied_down))
}

/// A non-blocking pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)?;
    // Best effort: a pipe left at its default size works, in smaller steps.
    let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES as i32));
    Ok((r, w))
}

/// Moves what `from` receives to `to` until `from` reaches its end, then shuts `to`'s
/// write side (as `copy_bidirectional` does). Returns the bytes moved.
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    (pipe_r, pipe_w): (OwnedFd, OwnedFd),
) -> std::io::Result<u64> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        let filled = from
            .async_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pipe_w.as_fd(), None, PIPE_BYTES, flags)
                    .map_err(std::io::Error::from)
            })
            .await?;
        if filled == 0 {
            nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(to),
                nix::sys::socket::Shutdown::Write,
            )
            .or_else(|e| {
                // The peer already went away: nothing left to tell it.
                if e == nix::errno::Errno::ENOTCONN {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            return Ok(total);
        }
        let mut left = filled;
        while left > 0 {
            let n = to
                .async_io(Interest::WRITABLE, || {
                    splice(pipe_r.as_fd(), None, to.as_fd(), None, left, flags)
                        .map_err(std::io::Error::from)
                })
                .await?;
            left -= n;
        }
        total += filled as u64;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A connected pair over loopback: (the side `copy` gets, the other end).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = tokio::join!(l.accept(), TcpStream::connect(addr));
        (
            a.unwrap_or_else(|e| panic!("{e}")).0,
            b.unwrap_or_else(|e| panic!("{e}")),
        )
    }

    #[tokio::test]
    async fn both_ways_are_copied_and_each_end_is_passed_on() {
        let (client_side, mut client) = pair().await;
        let (upstream_side, mut pod) = pair().await;
        let splice = tokio::spawn(copy(client_side, upstream_side, None));
        // More than one pipe's worth, so the loop turns.
        let big = vec![7u8; 3 * PIPE_BYTES + 5];
        client
            .write_all(&big)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        let mut got = Vec::new();
        pod.read_to_end(&mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.len(), big.len(), "the client's end reached the pod");
        pod.write_all(b"answer")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(pod);
        let mut back = Vec::new();
        client
            .read_to_end(&mut back)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, b"answer");
        let copied = splice
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(copied, (big.len() as u64, 6));
    }

    #[tokio::test]
    async fn a_released_connections_turn_is_given_back_once_the_pod_speaks_not_at_its_end() {
        let window = crate::hold::release::ReleaseWindow::default();
        let first = window.open();
        let turn = window.turn().await;
        assert!(turn.is_some() && window.open() == first - 1);
        let (client_side, mut client) = pair().await;
        let (upstream_side, mut pod) = pair().await;
        let splice = tokio::spawn(copy(client_side, upstream_side, turn));
        pod.write_all(b"hello")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut hello = [0u8; 5];
        client
            .read_exact(&mut hello)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Given back (and the window one wider), while the splice goes on.
        let start = std::time::Instant::now();
        while window.open() < first + 1 && start.elapsed() < std::time::Duration::from_secs(5) {
            tokio::task::yield_now().await;
        }
        assert_eq!(window.open(), first + 1);
        assert!(!splice.is_finished(), "the connection is still spliced");
        drop((client, pod));
        let _ = splice.await;
    }
}
