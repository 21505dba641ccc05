//! Host-side plumbing for the cluster: the network namespace, cgroups, daemons started by
//! PID, and the sweep that removes all of it again.
use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::net;
use crate::cmd;

/// Persistent state: etcd data, PKI, kubelet and containerd roots.
pub const STATE_DIR: &str = "/var/lib/elasti-e2e";
/// Runtime state: sockets, PID files.
pub const RUN_DIR: &str = "/run/elasti-e2e";
/// The cgroup v2 mount on this (hybrid or pure v2) host.
pub fn cgroup2_root() -> PathBuf {
    if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        PathBuf::from("/sys/fs/cgroup/unified")
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}
/// kubelet's `cgroupRoot`: every pod lands below it, in every hierarchy.
pub const PODS_CGROUP: &str = "elasti-e2e";
/// The cluster's own daemons (cgroup v2 only), so teardown can find every process.
pub const SYSTEM_CGROUP: &str = "elasti-e2e-system";

/// Logs of the cluster's daemons; kept after `down` for post-mortems.
pub fn log_dir() -> PathBuf {
    crate::paths::repo().join("target/cluster/logs")
}

fn pid_dir() -> PathBuf {
    Path::new(RUN_DIR).join("pids")
}

/// Creates the namespace with its loopback and node link, and a default route that ends in
/// the namespace itself.
pub fn create_netns() -> Result<()> {
    let ns = net::NETNS;
    cmd::run(
        "create netns",
        Command::new("ip").args(["netns", "add", ns]),
    )?;
    let ip = |args: &[&str]| -> Result<()> {
        cmd::run(
            "configure netns",
            Command::new("ip").args(["-n", ns]).args(args),
        )
    };
    ip(&["link", "set", "lo", "up"])?;
    ip(&[
        "link",
        "add",
        net::NODE_LINK,
        "type",
        "veth",
        "peer",
        "name",
        net::NODE_LINK_PEER,
    ])?;
    ip(&[
        "addr",
        "add",
        &format!("{}/{}", net::NODE_IP, net::NODE_PREFIX),
        "dev",
        net::NODE_LINK,
    ])?;
    ip(&["link", "set", net::NODE_LINK, "up"])?;
    ip(&["link", "set", net::NODE_LINK_PEER, "up"])?;
    // The peer has no address and no other link: anything "routed out" dies here.
    ip(&["route", "add", "default", "dev", net::NODE_LINK])?;
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.bridge.bridge-nf-call-iptables", "1"),
        ("net.ipv4.conf.all.route_localnet", "1"),
    ] {
        in_netns_sysctl(key, value)?;
    }
    Ok(())
}

fn in_netns_sysctl(key: &str, value: &str) -> Result<()> {
    cmd::run(
        "netns sysctl",
        Command::new("nsenter")
            .arg(format!("--net={}", net::netns_path()))
            .args(["--", "sysctl", "-qw", &format!("{key}={value}")]),
    )
}

/// Raises inotify limits (kubelet and containerd watch many files). Host-wide, only ever
/// raised, never lowered.
pub fn raise_inotify_limits() -> Result<()> {
    for (file, min) in [
        ("/proc/sys/fs/inotify/max_user_instances", 1024u64),
        ("/proc/sys/fs/inotify/max_user_watches", 524_288),
    ] {
        let current: u64 = fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if current < min {
            fs::write(file, min.to_string()).with_context(|| format!("raising {file}"))?;
        }
    }
    Ok(())
}

pub fn netns_exists() -> bool {
    Path::new(&net::netns_path()).exists()
}

/// Starts `program` as a daemon in the cluster's netns and in [`SYSTEM_CGROUP`], with its
/// output in `<log_dir>/<name>.log`, and records its PID.
pub fn spawn(name: &str, program: &Path, args: &[String]) -> Result<u32> {
    fs::create_dir_all(log_dir())?;
    fs::create_dir_all(pid_dir())?;
    let system = cgroup2_root().join(SYSTEM_CGROUP);
    fs::create_dir_all(&system)?;
    let log = fs::File::create(log_dir().join(format!("{name}.log")))?;
    let procs = system.join("cgroup.procs");
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", net::netns_path()))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls (setsid, open/write/close) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            fs::write(&procs, b"0")?;
            Ok(())
        });
    }
    let child = c
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))?;
    let pid = child.id();
    fs::write(pid_dir().join(format!("{name}.pid")), pid.to_string())?;
    Ok(pid)
}

/// The PIDs recorded by [`spawn`], by name.
pub fn recorded_pids() -> Vec<(String, u32)> {
    let Ok(entries) = fs::read_dir(pid_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.path().file_stem()?.to_string_lossy().into_owned();
            let pid = fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
            Some((name, pid))
        })
        .collect()
}

pub fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok() && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Stops `pid` (SIGTERM, then SIGKILL after `grace`).
pub fn stop(pid: u32, grace: Duration) {
    let p = Pid::from_raw(pid as i32);
    if kill(p, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = kill(p, Signal::SIGKILL);
    }
}

/// The root of every mounted cgroup hierarchy: the v2 one and, on hybrid hosts, each v1.
fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots = vec![cgroup2_root()];
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let p = e.path();
            if p.join("cgroup.procs").exists() && p != cgroup2_root() {
                roots.push(p);
            }
        }
    }
    roots
}

/// kubelet insists that its `cgroupRoot` exists in every hierarchy. A new v1 cpuset cgroup
/// starts with no CPUs or memory nodes, so those are copied from the parent.
pub fn create_pods_cgroup() -> Result<()> {
    for root in cgroup_roots() {
        let dir = root.join(PODS_CGROUP);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = fs::read_to_string(root.join(file)) {
                fs::write(dir.join(file), value.trim())
                    .with_context(|| format!("{}/{file}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// Every cgroup directory (in every mounted hierarchy) that belongs to the cluster.
pub fn cluster_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in cgroup_roots() {
        for name in [PODS_CGROUP, SYSTEM_CGROUP] {
            let top = root.join(name);
            if top.is_dir() {
                collect_dirs(&top, &mut found);
            }
        }
    }
    found
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// PIDs of every process in the cluster's cgroups: its daemons and every container.
pub fn cgroup_pids() -> Vec<u32> {
    let mut pids: Vec<u32> = cluster_cgroups()
        .iter()
        .filter_map(|cg| fs::read_to_string(cg.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Mount points the cluster created: under its state and run dirs, kubelet's pod volumes,
/// containerd's rootfs and shm mounts, and the pod network namespaces (`/run/netns/cni-*`).
pub fn cluster_mounts() -> Vec<String> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mount)
        .filter(|m| {
            m.starts_with(STATE_DIR)
                || m.starts_with(RUN_DIR)
                || m.starts_with("/run/netns/cni-")
                || m.starts_with("/var/run/netns/cni-")
                || *m == net::netns_path()
        })
        .collect();
    // Deepest first, so nested mounts go before their parents.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts.dedup();
    mounts
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// CNI's cached results and host-local IPAM leases for our network.
pub fn cni_state_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let ours = format!("{}-", net::CNI_NETWORK);
    if let Ok(entries) = fs::read_dir("/var/lib/cni/results") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&ours) {
                out.push(e.path());
            }
        }
    }
    out
}

/// Removes everything the cluster put on the machine. Safe to run at any time, including
/// after a crash; returns what it could not remove.
pub fn sweep() -> Vec<String> {
    // 1. Daemons we recorded, then everything left in our cgroups (containers, shims).
    for (_, pid) in recorded_pids() {
        stop(pid, Duration::from_secs(5));
    }
    for _ in 0..3 {
        let pids = cgroup_pids();
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(300));
    }
    // 2. Mounts (lazily, deepest first), then the namespace, cgroups and files.
    for m in cluster_mounts() {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        if m.contains("/netns/") {
            let _ = fs::remove_file(&m);
        }
    }
    if netns_exists() {
        let _ = Command::new("ip")
            .args(["netns", "del", net::NETNS])
            .status();
    }
    let mut cgroups = cluster_cgroups();
    cgroups.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for cg in &cgroups {
        let _ = fs::remove_dir(cg);
    }
    for f in cni_state_files() {
        let _ = fs::remove_file(f);
    }
    let _ = fs::remove_dir_all(format!("/var/lib/cni/networks/{}", net::CNI_NETWORK));
    // libcni's cache dirs, only if nothing else uses them (remove_dir fails when not empty).
    for dir in [
        "/var/lib/cni/results",
        "/var/lib/cni/networks",
        "/var/lib/cni",
    ] {
        let _ = fs::remove_dir(dir);
    }
    for dir in [STATE_DIR, RUN_DIR] {
        let _ = fs::remove_dir_all(dir);
    }
    // containerd 1.6 puts shim sockets and FIFOs under /run/containerd whatever its state
    // dir; ours is the only containerd on the machine when none is left running.
    if !containerd_running() {
        let _ = fs::remove_dir_all(SHARED_CONTAINERD_DIR);
    }
    leftovers()
}

/// What of the cluster is still on the machine, one line per kind; empty when clean.
pub fn leftovers() -> Vec<String> {
    let mut out = Vec::new();
    let live: Vec<String> = recorded_pids()
        .into_iter()
        .filter(|(_, p)| alive(*p))
        .map(|(n, p)| format!("{n}({p})"))
        .collect();
    if !live.is_empty() {
        out.push(format!("processes: {}", live.join(" ")));
    }
    let pids = cgroup_pids();
    if !pids.is_empty() {
        out.push(format!("processes in cluster cgroups: {pids:?}"));
    }
    let mounts = cluster_mounts();
    if !mounts.is_empty() {
        out.push(format!("mounts: {}", mounts.join(" ")));
    }
    if netns_exists() {
        out.push(format!("network namespace: {}", net::NETNS));
    }
    let cgroups = cluster_cgroups();
    if !cgroups.is_empty() {
        out.push(format!(
            "cgroups: {}",
            cgroups
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    let cni = cni_state_files();
    if !cni.is_empty() {
        out.push(format!("CNI state files: {}", cni.len()));
    }
    for dir in [STATE_DIR, RUN_DIR, SHARED_CONTAINERD_DIR] {
        if Path::new(dir).exists() {
            out.push(format!("directory: {dir}"));
        }
    }
    if let Some(chains) = host_kube_chains() {
        out.push(chains);
    }
    out
}

/// Where containerd-shim puts its sockets regardless of containerd's configured state.
const SHARED_CONTAINERD_DIR: &str = "/run/containerd";

fn containerd_running() -> bool {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "containerd")
                && !is_zombie(e.file_name().to_string_lossy().parse().unwrap_or(0))
        })
}

/// kube-proxy's chains must never appear in the host's own namespace.
fn host_kube_chains() -> Option<String> {
    let shows = |program: &str, args: &[&str], needle: &str| {
        cmd::have(program)
            && Command::new(program)
                .args(args)
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(needle))
    };
    let mut found = Vec::new();
    if shows("iptables-save", &[], "KUBE-") {
        found.push("iptables");
    }
    if shows("nft", &["list", "tables"], "kube-proxy") {
        found.push("nftables");
    }
    (!found.is_empty()).then(|| {
        format!(
            "kube-proxy rules in the host namespace: {}",
            found.join(", ")
        )
    })
}

/// Waits until `check` succeeds, failing with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(250));
    }
    bail!("timed out after {}s waiting for {what}", timeout.as_secs())
}
