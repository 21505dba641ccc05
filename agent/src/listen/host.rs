//! Where the worker's sockets come from: bound by itself (standalone, as the in-process
//! suites run it), or from its supervisor, which keeps them, and every accepted connection
//! not yet read, across the worker's crashes (`crate::supervisor`).
use std::{net::SocketAddr, sync::Arc};

use tokio::net::{TcpListener, TcpStream};

use crate::supervisor::client::{Kept, Supervisor};

/// The backlog of each proxy listener: bursts of cold connects queue here before accept.
pub const BACKLOG: i32 = 4096;

#[derive(Clone)]
pub enum Host {
    /// The worker binds its own listeners on `listen_address`.
    Standalone { listen_address: std::net::IpAddr },
    /// The supervisor binds them and keeps what the worker has not read.
    Supervised(Arc<Supervisor>),
}

impl Host {
    /// The listener of proxy port `port`.
    pub async fn listener(&self, port: u16) -> std::io::Result<TcpListener> {
        match self {
            Self::Standalone { listen_address } => {
                elasti_runtime::net::bind_reuseport(SocketAddr::new(*listen_address, port), BACKLOG)
            }
            Self::Supervised(s) => TcpListener::from_std(s.listen(port).await?),
        }
    }

    /// The worker stopped accepting on `port`.
    pub async fn closed(&self, port: u16) {
        if let Self::Supervised(s) = self {
            s.close(port).await;
        }
    }

    /// Has the supervisor keep `stream` (accepted on `port`, unread) until the guard goes.
    pub async fn keep(&self, port: u16, stream: &TcpStream) -> Option<Kept> {
        match self {
            Self::Standalone { .. } => None,
            Self::Supervised(s) => s.keep(port, stream).await,
        }
    }
}
