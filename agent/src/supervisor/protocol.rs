//! What the supervisor and its worker say to each other: one JSON message per
//! `SOCK_SEQPACKET` datagram, with the descriptors it hands over attached (`SCM_RIGHTS`).
use std::{
    io::IoSlice,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

/// The largest message either side sends (a few dozen bytes in practice).
const MAX_MESSAGE: usize = 4096;
/// The most descriptors one message carries (the three maps).
const MAX_FDS: usize = 4;

/// From the worker to the supervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The worker started; the supervisor answers [`ToWorker::Maps`].
    Hello,
    /// Open (or hand over the already open) listener of `port`.
    Listen { port: u16 },
    /// The worker stopped accepting on `port`: close the supervisor's copy too.
    Close { port: u16 },
    /// Keep this accepted, still unread connection (attached) for the worker's successor.
    Keep { id: u64, port: u16 },
    /// Connection `id` was read from, or closed: nothing is left to keep.
    Release { id: u64 },
    /// The worker made its first decision: listeners it did not ask for are closed, and
    /// what the predecessor left is handed back.
    Synced,
}

/// From the supervisor to the worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// The maps of the attached programs (attached, in `intercept::programs::MAPS`
    /// order), and the first connection id this worker may use (ids its predecessors kept
    /// stay theirs).
    Maps { first_id: u64 },
    /// The listener of `port` (attached), or why there is none.
    Listening { port: u16, error: Option<String> },
    /// A connection the worker's predecessor kept and never read (attached): serve it as
    /// if just accepted on `port`.
    Resume { id: u64, port: u16 },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer closed its end.
    #[error("the other end closed the control socket")]
    Closed,
    /// Sending or receiving failed.
    #[error("control socket")]
    Socket(#[source] nix::Error),
    /// The bytes were not a message.
    #[error("malformed control message")]
    Malformed(#[source] serde_json::Error),
    /// Waiting for the socket failed.
    #[error("waiting on the control socket")]
    Io(#[source] std::io::Error),
}

/// Sends `msg` with `fds` on the `SOCK_SEQPACKET` socket `sock`.
///
/// # Errors
/// When the socket is closed or full ([`nix::Error::EAGAIN`] on a non-blocking socket).
pub fn send<M: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &M,
    fds: &[BorrowedFd<'_>],
) -> Result<(), Error> {
    let bytes = serde_json::to_vec(msg).map_err(Error::Malformed)?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| match e {
        nix::Error::EPIPE | nix::Error::ECONNRESET => Error::Closed,
        e => Error::Socket(e),
    })?;
    Ok(())
}

/// Receives one message and the descriptors attached to it from `sock`.
///
/// # Errors
/// [`Error::Closed`] at end of stream; [`nix::Error::EAGAIN`] (as [`Error::Socket`]) when a
/// non-blocking socket has nothing yet.
pub fn recv<M: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<(M, Vec<OwnedFd>), Error> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(Error::Socket)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(Error::Socket)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            fds.extend(raw.into_iter().map(super::fds::adopt_received));
        }
    }
    let n = msg.bytes;
    if n == 0 {
        return Err(Error::Closed);
    }
    let parsed = serde_json::from_slice(&buf[..n]).map_err(Error::Malformed)?;
    Ok((parsed, fds))
}

/// A connected pair of `SOCK_SEQPACKET` sockets, close-on-exec (the worker's end is made
/// inheritable explicitly when it is spawned).
pub fn pair() -> Result<(OwnedFd, OwnedFd), Error> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(Error::Socket)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        os::fd::AsFd,
    };

    use super::*;

    #[test]
    fn a_message_carries_its_descriptors_across() -> Result<(), Box<dyn std::error::Error>> {
        let (a, b) = pair()?;
        let (mut r, mut w) = std::os::unix::net::UnixStream::pair()?;
        send(
            a.as_fd(),
            &FromWorker::Keep { id: 7, port: 24000 },
            &[w.as_fd()],
        )?;
        let (msg, fds): (FromWorker, _) = recv(b.as_fd())?;
        assert_eq!(msg, FromWorker::Keep { id: 7, port: 24000 });
        assert_eq!(fds.len(), 1);
        // The descriptor received is the same socket: writing through it reaches `r`.
        let mut via = std::os::unix::net::UnixStream::from(fds.into_iter().next().ok_or("fd")?);
        drop(w.flush());
        via.write_all(b"kept")?;
        let mut got = [0u8; 4];
        r.read_exact(&mut got)?;
        assert_eq!(&got, b"kept");
        drop(w);
        Ok(())
    }

    #[test]
    fn the_end_of_the_peer_is_closed_not_garbage() -> Result<(), Box<dyn std::error::Error>> {
        let (a, b) = pair()?;
        drop(a);
        assert!(matches!(recv::<ToWorker>(b.as_fd()), Err(Error::Closed)));
        Ok(())
    }
}
