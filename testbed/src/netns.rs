//! The network namespace the whole cluster lives in. Podman runs inside it, so the node
//! containers' bridge, its NAT rules and every route of the cluster exist only there. It has
//! no link out of the machine and no default route: a packet for any address outside it
//! fails with "network unreachable" before it is sent.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::cmd;

/// `/run/netns/<NETNS>`, created by [`create`].
pub const NETNS: &str = "elasti-kind";

/// `/run/netns/<NETNS>`.
pub fn path() -> PathBuf {
    PathBuf::from(format!("/run/netns/{NETNS}"))
}

pub fn exists() -> bool {
    path().exists()
}

/// Whether this thread is in the machine's own network namespace (PID 1's), where an
/// address of the cluster routes out of the machine.
pub fn on_host() -> bool {
    let link = |p: &str| std::fs::read_link(p).ok();
    let here = link("/proc/thread-self/ns/net");
    here.is_some() && here == link("/proc/1/ns/net")
}

/// Fails when a connection to `addr` from this thread would leave the machine: `addr` is
/// not loopback and the thread is in the machine's own network namespace. Every plain
/// socket the test bed opens to a cluster address checks this first.
///
/// # Errors
/// The refusal, naming the address.
pub fn ensure_reachable_here(addr: std::net::SocketAddr) -> Result<()> {
    if !addr.ip().is_loopback() && on_host() {
        anyhow::bail!(
            "refusing to connect to {addr} from the machine's own network namespace: it would route out of the machine (run it inside {NETNS} or a node's namespace)"
        );
    }
    Ok(())
}

/// Creates the namespace with only its loopback up.
pub fn create() -> Result<()> {
    cmd::run(
        "create netns",
        Command::new("ip").args(["netns", "add", NETNS]),
    )?;
    cmd::run(
        "netns loopback",
        Command::new("ip").args(["-n", NETNS, "link", "set", "lo", "up"]),
    )
}

/// Creates the namespace unless it exists; returns whether it created it.
pub fn ensure() -> Result<bool> {
    if exists() {
        return Ok(false);
    }
    create()?;
    Ok(true)
}

/// Deletes the namespace (its links and rules go with it).
pub fn delete() {
    if exists() {
        let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    }
}

/// `program` run inside the namespace. `nsenter --net` enters the network namespace only;
/// `ip netns exec` would also unshare the mount namespace, and podman's overlay mounts
/// would vanish between calls.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    nsenter(&path(), program)
}

/// `program` run in the network namespace at `netns` (a node's, for instance).
pub fn nsenter(netns: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program);
    c
}

/// Runs `f` on a thread that has entered the network namespace at `netns`: sockets it
/// opens live there. Returns what `f` returns.
///
/// # Errors
/// When the namespace cannot be opened or entered.
pub fn run_in<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let netns = netns.to_path_buf();
    let file =
        std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::spawn(move || {
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {}", netns.display()))?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}
