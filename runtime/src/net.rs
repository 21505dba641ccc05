//! Listening sockets.
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;

/// Binds `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`), non-blocking, for tokio: two
/// processes (an agent and its replacement) can serve the same port at once.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_reuseport_std(addr, backlog)?)
}

/// [`bind_reuseport`] without tokio: the socket is non-blocking, ready for
/// `TcpListener::from_std` wherever it ends up (the agent's supervisor hands it over).
pub fn bind_reuseport_std(
    addr: SocketAddr,
    backlog: i32,
) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}
