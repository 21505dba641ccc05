//! How many bytes a client has sent that nobody read yet (`SIOCINQ`): what a held
//! connection costs the node in socket buffers, charged to the node's budget.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

nix::ioctl_read_bad!(siocinq, nix::libc::FIONREAD, nix::libc::c_int);

/// The bytes queued unread on `socket` (0 if the kernel will not say).
pub fn queued_bytes(socket: &impl AsRawFd) -> usize {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `n`.
    match unsafe { siocinq(socket.as_raw_fd(), &mut n) } {
        Ok(_) => usize::try_from(n).unwrap_or(0),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn bytes_sent_and_not_read_are_counted() -> std::io::Result<()> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut c = std::net::TcpStream::connect(l.local_addr()?)?;
        let (s, _) = l.accept()?;
        assert_eq!(queued_bytes(&s), 0);
        c.write_all(b"GET / HTTP/1.1\r\n\r\n")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while queued_bytes(&s) < 18 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(queued_bytes(&s), 18);
        Ok(())
    }
}
