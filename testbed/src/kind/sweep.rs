//! Teardown, and the proof that it left nothing: the node containers and their volumes,
//! the podman network, every process in the cluster's namespace, the namespace itself,
//! podman's cgroups and container namespaces, eBPF programs the agents attached, the
//! `/lib/modules` folder kind needed, and the cluster's files.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};

use super::{CLUSTER, NETWORK, Provider};
use crate::{cmd, netns, paths};

/// Set when `up` had to create `/lib/modules` (kind always bind-mounts it), so `down`
/// removes only what it made.
const LIB_MODULES_MARKER: &str = "/run/elasti-kind.created-lib-modules";
/// The container `setup` bakes the node image in.
pub const BAKE_CONTAINER: &str = "elasti-node-bake";
/// The eBPF programs elasti attaches (ebpf/src/main.rs); none may outlive the nodes.
const PROGRAMS: [&str; 4] = ["connect4", "connect6", "getpeername4", "getpeername6"];

/// Removes the cluster and everything of it; fails naming what is left.
pub fn down() -> Result<()> {
    let p = cmd::Progress::start("cluster down");
    let left = sweep();
    p.done();
    if !left.is_empty() {
        bail!("cluster down left behind:\n  {}", left.join("\n  "));
    }
    eprintln!("nothing of the cluster is left on this machine");
    Ok(())
}

/// Removes everything the cluster put on the machine; safe at any time, including after a
/// crash. Returns what it could not remove.
pub fn sweep() -> Vec<String> {
    let provider = Provider::detect();
    let _ = provider.prepare();
    let nodes = node_containers(provider);
    if !nodes.is_empty() {
        let _ = cmd::output(
            "kind delete cluster",
            provider
                .kind()
                .args(["delete", "cluster", "--name", CLUSTER]),
        );
    }
    let mut stale = node_containers(provider);
    if provider == Provider::Podman && container_exists(provider, BAKE_CONTAINER) {
        stale.push(BAKE_CONTAINER.to_string());
    }
    if !stale.is_empty() {
        let _ = provider
            .engine()
            .args(["rm", "-f", "-v"])
            .args(&stale)
            .output();
    }
    if provider == Provider::Podman {
        let volumes = node_volumes(provider);
        if !volumes.is_empty() {
            let _ = provider
                .engine()
                .args(["volume", "rm", "-f"])
                .args(&volumes)
                .output();
        }
        if network_exists(provider) {
            let _ = provider
                .engine()
                .args(["network", "rm", "-f", NETWORK])
                .output();
        }
        for pid in processes_in_netns() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        netns::delete();
        if no_containers_at_all(provider) {
            for m in stale_podman_netns() {
                let _ = nix::mount::umount2(m.as_path(), nix::mount::MntFlags::MNT_DETACH);
                let _ = fs::remove_file(&m);
            }
        }
        for cg in empty_podman_cgroups() {
            let _ = fs::remove_dir(cg);
        }
        if Path::new(LIB_MODULES_MARKER).exists() {
            let _ = fs::remove_dir("/lib/modules");
            let _ = fs::remove_file(LIB_MODULES_MARKER);
        }
    }
    let _ = fs::remove_dir_all(paths::cluster_state());
    leftovers()
}

/// What of the cluster is still on the machine, one line per kind; empty when clean.
pub fn leftovers() -> Vec<String> {
    let provider = Provider::detect();
    let _ = provider.prepare();
    let mut out = Vec::new();
    let nodes = node_containers(provider);
    if !nodes.is_empty() {
        out.push(format!(
            "{} containers: {}",
            provider.name(),
            nodes.join(" ")
        ));
    }
    if provider == Provider::Podman {
        if container_exists(provider, BAKE_CONTAINER) {
            out.push(format!("podman container: {BAKE_CONTAINER}"));
        }
        let volumes = node_volumes(provider);
        if !volumes.is_empty() {
            out.push(format!("podman volumes: {}", volumes.join(" ")));
        }
        if network_exists(provider) {
            out.push(format!("podman network: {NETWORK}"));
        }
        let pids = processes_in_netns();
        if !pids.is_empty() {
            out.push(format!("processes in netns {}: {pids:?}", netns::NETNS));
        }
        if netns::exists() {
            out.push(format!("network namespace: {}", netns::NETNS));
        }
        if no_containers_at_all(provider) {
            let ns: Vec<String> = stale_podman_netns()
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            if !ns.is_empty() {
                out.push(format!("podman container namespaces: {}", ns.join(" ")));
            }
            let mounts = overlay_mounts();
            if !mounts.is_empty() {
                out.push(format!("container mounts: {}", mounts.join(" ")));
            }
        }
        let cgroups: Vec<String> = empty_podman_cgroups()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        if !cgroups.is_empty() {
            out.push(format!("cgroups: {}", cgroups.join(" ")));
        }
        if Path::new(LIB_MODULES_MARKER).exists() {
            out.push("/lib/modules (created for kind)".into());
        }
        if let Some(chains) = host_chains() {
            out.push(chains);
        }
    }
    if nodes.is_empty() {
        let programs = attached_programs();
        if !programs.is_empty() {
            out.push(format!(
                "eBPF programs still loaded: {}",
                programs.join(" ")
            ));
        }
    }
    if paths::cluster_state().exists() {
        out.push(format!("directory: {}", paths::cluster_state().display()));
    }
    out
}

/// What `cluster status` says it checked.
pub const CHECKED: &str = "kind node containers (and setup's bake container), their volumes, the podman network, processes in the cluster's netns, the netns, podman's container namespaces and overlay mounts, podman's cgroups in every hierarchy, the /lib/modules kind needed, netavark and kube-proxy chains in the host namespace, elasti's eBPF programs, the cluster's files";

/// Creates `/lib/modules` if missing (kind bind-mounts it into every node).
pub fn ensure_lib_modules() -> Result<()> {
    if !Path::new("/lib/modules").exists() {
        fs::create_dir_all("/lib/modules")?;
        fs::write(LIB_MODULES_MARKER, b"")?;
    }
    Ok(())
}

fn node_containers(provider: Provider) -> Vec<String> {
    provider
        .engine()
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=io.x-k8s.kind.cluster={CLUSTER}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn container_exists(provider: Provider, name: &str) -> bool {
    cmd::succeeds(provider.engine().args(["container", "exists", name]))
}

fn no_containers_at_all(provider: Provider) -> bool {
    provider
        .engine()
        .args(["ps", "-aq"])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.trim_ascii().is_empty())
}

fn network_exists(provider: Provider) -> bool {
    cmd::succeeds(provider.engine().args(["network", "exists", NETWORK]))
}

/// kind labels each node's `/var` volume with `<node name>=true`.
fn node_volumes(provider: Provider) -> Vec<String> {
    let Ok(out) = provider
        .engine()
        .args(["volume", "ls", "--format", "json"])
        .output()
    else {
        return Vec::new();
    };
    let volumes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let prefix = format!("{CLUSTER}-");
    volumes
        .iter()
        .filter(|v| {
            v["Labels"]
                .as_object()
                .is_some_and(|l| l.keys().any(|k| k.starts_with(&prefix)))
        })
        .filter_map(|v| v["Name"].as_str().map(String::from))
        .collect()
}

/// PIDs of processes in the cluster's network namespace (aardvark-dns, Prometheus, …).
fn processes_in_netns() -> Vec<u32> {
    let Ok(ours) = fs::metadata(netns::path()) else {
        return Vec::new();
    };
    let link = format!("net:[{}]", ours.ino());
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.to_string_lossy() == link)
        })
        .collect()
}

/// Container network namespaces podman left in /run/netns (`netns-<uuid>`).
fn stale_podman_netns() -> Vec<PathBuf> {
    fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("netns-"))
        })
        .collect()
}

/// Overlay mounts of podman's storage (there are none once no container exists).
fn overlay_mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with("/var/lib/containers/storage/overlay"))
        .map(String::from)
        .collect()
}

/// podman's parent cgroup (cgroupfs manager) in every hierarchy, when no container is
/// left in it.
fn empty_podman_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = root.path().join("libpod_parent");
        let empty = fs::read_dir(&dir).is_ok_and(|entries| {
            !entries
                .flatten()
                .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        });
        if empty {
            found.push(dir);
        }
    }
    let top = PathBuf::from("/sys/fs/cgroup/libpod_parent");
    if top.join("cgroup.procs").exists()
        && fs::read_dir(&top).is_ok_and(|e| !e.flatten().any(|e| e.path().is_dir()))
    {
        found.push(top);
    }
    found.sort();
    found.dedup();
    found
}

/// netavark's and kube-proxy's chains belong in the cluster's namespaces, never the
/// host's.
fn host_chains() -> Option<String> {
    let out = Command::new("iptables-save").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let found: Vec<&str> = ["NETAVARK", "KUBE-"]
        .into_iter()
        .filter(|c| text.contains(c))
        .collect();
    (!found.is_empty()).then(|| {
        format!(
            "iptables chains in the host namespace: {}",
            found.join(", ")
        )
    })
}

/// elasti's cgroup programs still loaded anywhere (bpftool, when installed).
fn attached_programs() -> Vec<String> {
    let Ok(out) = Command::new("bpftool")
        .args(["prog", "list", "--json"])
        .output()
    else {
        return Vec::new();
    };
    let progs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    progs
        .iter()
        .filter(|p| p["type"] == "cgroup_sock_addr")
        .filter_map(|p| p["name"].as_str())
        .filter(|n| PROGRAMS.contains(n))
        .map(String::from)
        .collect()
}
