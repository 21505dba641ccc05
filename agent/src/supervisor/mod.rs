//! The supervisor: a small process that outlives crashes of the agent's worker.
//!
//! It owns what held work depends on: the attached programs and their maps (so held
//! Services stay steered here), the proxy link, the listening sockets (so new connects
//! wait in the backlog instead of being refused), and a duplicate of every accepted
//! connection the worker has not read yet. The worker holds a connection without reading
//! from it until a pod is Ready; if the worker dies meanwhile, the supervisor restarts it
//! at once and hands every kept connection back, unread, and the new worker holds and
//! forwards it as if just accepted. This is how systemd socket activation and seamless
//! proxy reloads keep connections.
//!
//! - [`protocol`]: the messages, with descriptors passed by `SCM_RIGHTS`;
//! - [`keeper`]: what is kept, pure bookkeeping;
//! - [`client`]: the worker's side.
pub mod client;
mod fds;
pub mod keeper;
pub mod protocol;

use std::{
    collections::VecDeque,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use tokio::{io::unix::AsyncFd, process::Command};

use crate::{
    config::Args,
    intercept::{Interceptor, proxy_addr::ProxyInterface},
};
use keeper::Keeper;
use protocol::{FromWorker, ToWorker};

pub use fds::inherited;

/// The variable naming the supervisor's socket in the worker.
pub const FD_ENV: &str = "ELASTI_SUPERVISOR_FD";
/// Crashes within [`CRASH_WINDOW`] before restarts are spaced out: a worker that crashes
/// at start must not spin.
const CRASHES_BEFORE_BACKOFF: usize = 3;
const CRASH_WINDOW: Duration = Duration::from_secs(30);
/// The longest pause between two restarts of a crash-looping worker.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);
/// Backlog of the proxy listeners the supervisor opens (as the worker's own would be).
const BACKLOG: i32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Setting up interception (cgroup, programs, link) failed.
    #[error("setting up interception failed")]
    Setup(#[from] crate::run::Error),
    /// The control socket could not be made or failed.
    #[error("the worker's control socket")]
    Control(#[from] protocol::Error),
    /// The worker could not be started.
    #[error("starting the worker failed")]
    Spawn(#[source] std::io::Error),
}

/// Runs the supervisor until SIGTERM has been passed on and the worker has drained.
pub async fn run(args: Args) -> Result<(), Error> {
    let cgroup = crate::run::resolve_cgroup(&args.cgroup_path)?;
    crate::run::raise_fd_limit();
    let link = if args.proxy_interface.is_empty() {
        None
    } else {
        Some(
            ProxyInterface::ensure(&args.proxy_interface, args.proxy_address)
                .await
                .map_err(crate::run::Error::from)?,
        )
    };
    let mut interceptor = Interceptor::attach(&cgroup).map_err(crate::run::Error::from)?;
    if let Some(logger) = interceptor.take_logger() {
        tokio::spawn(crate::intercept::programs::drain_logs(logger));
    }
    if let Ok(own) = crate::run::own_cgroup_id() {
        // The worker is in this container's cgroup too.
        interceptor
            .exclude_cgroup(own)
            .map_err(crate::run::Error::from)?;
    }
    tracing::info!(cgroup = %cgroup.display(), "supervisor: programs attached; starting the worker");

    let mut keeper = Keeper::default();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Spawn)?;
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    let code = loop {
        let (ours, theirs) = protocol::pair()?;
        let mut child = spawn_worker(&theirs)?;
        drop(theirs);
        let sock = fds::async_fd(set_nonblocking(ours)?).map_err(Error::Spawn)?;
        keeper.worker_started();
        let mut terminating = false;
        let status = loop {
            tokio::select! {
                ready = sock.readable() => {
                    let Ok(mut guard) = ready else { continue };
                    match guard.try_io(|s| match protocol::recv::<FromWorker>(s.get_ref().as_fd()) {
                        Err(protocol::Error::Socket(nix::Error::EAGAIN)) => Err(std::io::ErrorKind::WouldBlock.into()),
                        other => Ok(other),
                    }) {
                        Ok(Ok(Ok((msg, fds)))) => handle(&mut keeper, &interceptor, &args, &sock, msg, fds),
                        Ok(Ok(Err(_closed))) => {
                            // The worker is gone or going; its exit status follows.
                            let status = child.wait().await;
                            break status;
                        }
                        Ok(Err(_)) | Err(_) => {}
                    }
                }
                status = child.wait() => break status,
                _ = term.recv(), if !terminating => {
                    terminating = true;
                    tracing::info!("supervisor: SIGTERM; the worker drains");
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                }
            }
        };
        let status = status.map_err(Error::Spawn)?;
        if terminating {
            break status.code().unwrap_or(0);
        }
        tracing::error!(
            %status,
            kept = keeper.kept(),
            listeners = keeper.listeners(),
            "supervisor: the worker died; restarting it with what it held"
        );
        let now = Instant::now();
        crashes.push_back(now);
        while crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            crashes.pop_front();
        }
        if crashes.len() > CRASHES_BEFORE_BACKOFF {
            let delay =
                Duration::from_millis(100 << (crashes.len() - CRASHES_BEFORE_BACKOFF).min(6))
                    .min(MAX_RESTART_DELAY);
            tokio::time::sleep(delay).await;
        }
    };
    drop(interceptor);
    if let Some(link) = link
        && args.remove_interface_on_exit
    {
        let _ = link.remove().await;
    }
    std::process::exit(code);
}

/// Answers one message of the worker.
fn handle(
    keeper: &mut Keeper,
    interceptor: &Interceptor,
    args: &Args,
    sock: &AsyncFd<OwnedFd>,
    msg: FromWorker,
    mut fds: Vec<OwnedFd>,
) {
    let reply = |msg: &ToWorker, fds: &[std::os::fd::BorrowedFd<'_>]| {
        if let Err(e) = protocol::send(sock.get_ref().as_fd(), msg, fds) {
            tracing::warn!(error = %elasti_runtime::DisplayChain(&e), ?msg, "supervisor: reply to the worker failed");
        }
    };
    match msg {
        FromWorker::Hello => match interceptor.map_fds() {
            Ok(maps) => {
                let borrowed: Vec<_> = maps.iter().map(AsFd::as_fd).collect();
                reply(
                    &ToWorker::Maps {
                        first_id: keeper.max_id() + 1,
                    },
                    &borrowed,
                );
            }
            Err(e) => {
                tracing::error!(error = %elasti_runtime::DisplayChain(&e), "supervisor: cannot hand the maps over");
            }
        },
        FromWorker::Listen { port } => {
            if let Some(fd) = keeper.listener(port) {
                reply(&ToWorker::Listening { port, error: None }, &[fd.as_fd()]);
                return;
            }
            let addr = std::net::SocketAddr::new(args.listen_address, port);
            match elasti_runtime::net::bind_reuseport_std(addr, BACKLOG) {
                Ok(listener) => {
                    let fd = OwnedFd::from(listener);
                    reply(&ToWorker::Listening { port, error: None }, &[fd.as_fd()]);
                    keeper.add_listener(port, fd);
                }
                Err(e) => reply(
                    &ToWorker::Listening {
                        port,
                        error: Some(format!("binding {addr}: {e}")),
                    },
                    &[],
                ),
            }
        }
        FromWorker::Close { port } => keeper.close(port),
        FromWorker::Keep { id, port } => {
            if let Some(fd) = fds.pop() {
                keeper.keep(id, port, fd);
            }
        }
        FromWorker::Release { id } => keeper.release(id),
        FromWorker::Synced => {
            let back = keeper.synced();
            if !back.is_empty() {
                tracing::info!(
                    connections = back.len(),
                    "supervisor: handing kept connections back to the worker"
                );
            }
            for (id, port) in back {
                if let Some(fd) = keeper.kept_fd(id) {
                    reply(&ToWorker::Resume { id, port }, &[fd.as_fd()]);
                }
            }
        }
    }
}

/// Starts this binary again as the worker, its end of the control socket inherited.
fn spawn_worker(theirs: &OwnedFd) -> Result<tokio::process::Child, Error> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    // Inheritable for exactly this exec: the supervisor starts no other process.
    fcntl(theirs, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| Error::Spawn(e.into()))?;
    let exe = std::env::current_exe().map_err(Error::Spawn)?;
    let child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(FD_ENV, theirs.as_raw_fd().to_string())
        .kill_on_drop(false)
        .spawn()
        .map_err(Error::Spawn)?;
    Ok(child)
}

fn set_nonblocking(fd: OwnedFd) -> Result<OwnedFd, Error> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(|e| Error::Spawn(e.into()))?;
    fcntl(
        &fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| Error::Spawn(e.into()))?;
    Ok(fd)
}
