//! The worker's side of the supervisor: listeners and maps come from it, and every
//! accepted connection is handed to it for safekeeping until the worker reads from it.
use std::{
    collections::HashMap,
    os::fd::{AsFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
};

use super::protocol::{self, FromWorker, ToWorker};

/// A connection the supervisor handed back, to be served as if just accepted on `port`.
#[derive(Debug)]
pub struct Resumed {
    pub id: u64,
    pub port: u16,
    pub stream: std::net::TcpStream,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control socket failed or closed.
    #[error("talking to the supervisor failed")]
    Protocol(#[from] protocol::Error),
    /// The descriptor given in `ELASTI_SUPERVISOR_FD` is not usable.
    #[error("the supervisor's socket")]
    Socket(#[source] std::io::Error),
    /// The supervisor answered something else than asked.
    #[error("the supervisor answered {0}")]
    Unexpected(String),
}

type Pending = Arc<Mutex<HashMap<u16, oneshot::Sender<Result<OwnedFd, String>>>>>;

/// The worker's handle on its supervisor.
pub struct Supervisor {
    sock: Arc<AsyncFd<OwnedFd>>,
    pending: Pending,
    next_id: AtomicU64,
}

impl Supervisor {
    /// Greets the supervisor on its socket `fd` and receives the maps' descriptors. Kept
    /// connections it hands back later arrive on the returned channel.
    pub async fn connect(
        fd: OwnedFd,
    ) -> Result<
        (
            Self,
            [OwnedFd; crate::intercept::programs::MAP_COUNT],
            mpsc::UnboundedReceiver<Resumed>,
        ),
        Error,
    > {
        set_nonblocking(&fd).map_err(Error::Socket)?;
        let sock = Arc::new(super::fds::async_fd(fd).map_err(Error::Socket)?);
        send(&sock, &FromWorker::Hello, &[]).await?;
        let (msg, fds) = recv(&sock).await?;
        let ToWorker::Maps { first_id } = msg else {
            return Err(Error::Unexpected(format!("{msg:?}")));
        };
        let maps: [OwnedFd; crate::intercept::programs::MAP_COUNT] = fds
            .try_into()
            .map_err(|f: Vec<OwnedFd>| Error::Unexpected(format!("{} map descriptors", f.len())))?;
        let pending: Pending = Arc::default();
        let (resumed_tx, resumed_rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(sock.clone(), pending.clone(), resumed_tx));
        Ok((
            Self {
                sock,
                pending,
                next_id: AtomicU64::new(first_id),
            },
            maps,
            resumed_rx,
        ))
    }

    /// The listener of `port`: the supervisor's (kept across crashes) or a new one.
    pub async fn listen(&self, port: u16) -> std::io::Result<std::net::TcpListener> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(port, tx);
        }
        send(&self.sock, &FromWorker::Listen { port }, &[])
            .await
            .map_err(std::io::Error::other)?;
        match rx.await {
            Ok(Ok(fd)) => Ok(std::net::TcpListener::from(fd)),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(std::io::Error::other("the supervisor went away")),
        }
    }

    /// Tells the supervisor `port` is no longer listened on.
    pub async fn close(&self, port: u16) {
        let _ = send(&self.sock, &FromWorker::Close { port }, &[]).await;
    }

    /// Hands a duplicate of `stream` (accepted on `port`, unread) to the supervisor; the
    /// guard gives it up when dropped (read from, or closed).
    pub async fn keep(self: &Arc<Self>, port: u16, stream: &impl AsFd) -> Option<Kept> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        send(
            &self.sock,
            &FromWorker::Keep { id, port },
            &[stream.as_fd()],
        )
        .await
        .ok()?;
        Some(Kept {
            id,
            supervisor: self.clone(),
        })
    }

    /// The guard of a connection the supervisor handed back (it keeps it already).
    pub fn resumed(self: &Arc<Self>, id: u64) -> Kept {
        Kept {
            id,
            supervisor: self.clone(),
        }
    }

    /// The first decision is made: the supervisor may close what is no longer listened on
    /// and hand back what it kept.
    pub async fn synced(&self) {
        let _ = send(&self.sock, &FromWorker::Synced, &[]).await;
    }
}

/// A connection the supervisor keeps for this worker; dropping it releases it.
pub struct Kept {
    id: u64,
    supervisor: Arc<Supervisor>,
}

impl Kept {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let (sock, id) = (self.supervisor.sock.clone(), self.id);
        // A release is one small datagram; it goes on a task so a drop never blocks.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = send(&sock, &FromWorker::Release { id }, &[]).await;
            });
        }
    }
}

async fn read_loop(
    sock: Arc<AsyncFd<OwnedFd>>,
    pending: Pending,
    resumed: mpsc::UnboundedSender<Resumed>,
) {
    loop {
        let (msg, mut fds) = match recv(&sock).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %elasti_runtime::DisplayChain(&e), "the supervisor's socket closed; exiting so it restarts this worker");
                std::process::exit(70);
            }
        };
        match msg {
            ToWorker::Listening { port, error } => {
                let reply = match (error, fds.pop()) {
                    (None, Some(fd)) => Ok(fd),
                    (Some(e), _) => Err(e),
                    (None, None) => Err("no descriptor attached".into()),
                };
                let waiter = pending.lock().ok().and_then(|mut p| p.remove(&port));
                if let Some(w) = waiter {
                    let _ = w.send(reply);
                }
            }
            ToWorker::Resume { id, port } => {
                if let Some(fd) = fds.pop() {
                    let stream = std::net::TcpStream::from(fd);
                    let _ = resumed.send(Resumed { id, port, stream });
                }
            }
            ToWorker::Maps { .. } => {
                tracing::warn!("the supervisor sent the maps twice; ignored");
            }
        }
    }
}

async fn send(
    sock: &AsyncFd<OwnedFd>,
    msg: &FromWorker,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(), protocol::Error> {
    loop {
        let mut guard = sock.writable().await.map_err(protocol::Error::Io)?;
        let attempt = guard.try_io(|s| match protocol::send(s.get_ref().as_fd(), msg, fds) {
            Err(protocol::Error::Socket(nix::Error::EAGAIN)) => {
                Err(std::io::ErrorKind::WouldBlock.into())
            }
            other => Ok(other),
        });
        if let Ok(result) = attempt {
            return result.map_err(protocol::Error::Io)?;
        }
    }
}

async fn recv(sock: &AsyncFd<OwnedFd>) -> Result<(ToWorker, Vec<OwnedFd>), protocol::Error> {
    loop {
        let mut guard = sock.readable().await.map_err(protocol::Error::Io)?;
        let attempt = guard.try_io(|s| match protocol::recv(s.get_ref().as_fd()) {
            Err(protocol::Error::Socket(nix::Error::EAGAIN)) => {
                Err(std::io::ErrorKind::WouldBlock.into())
            }
            other => Ok(other),
        });
        if let Ok(result) = attempt {
            return result.map_err(protocol::Error::Io)?;
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}
