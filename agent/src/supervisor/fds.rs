//! The two places where a raw descriptor number becomes an owned descriptor: one the
//! kernel just installed for us (received with `SCM_RIGHTS`), and the supervisor's socket
//! this worker inherited at exec. Everything else handles `OwnedFd`s only.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A descriptor received in an `SCM_RIGHTS` control message.
pub fn adopt_received(fd: RawFd) -> OwnedFd {
    // SAFETY: `recvmsg` just installed `fd` in this process for this message; nothing else
    // refers to it, so ownership is taken exactly once, here.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The supervisor's socket, inherited at exec as descriptor `fd`.
///
/// # Errors
/// When `fd` is not an open descriptor.
pub fn inherited(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: `fcntl(F_GETFD)` on any integer only reports whether it is open.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the supervisor passed `fd` to this process at exec and nothing else in the
    // process refers to it; this is called once, at start.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fd` registered with tokio's reactor.
///
/// # Errors
/// When the reactor refuses it.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns `fd` for as long as it is registered and deregisters it
    // before dropping it, so the descriptor cannot be closed or reused while registered.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
