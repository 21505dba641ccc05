//! `cargo xtask cluster up | down | status | kubeconfig | exec`: a real single-node
//! Kubernetes cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
//! containerd + runc, kubelet, CNI bridge, kube-proxy, CoreDNS) running as plain processes
//! inside a network namespace of its own, with its pods in a cgroup subtree of their own.
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cmd, paths};

mod config;
pub mod host;
pub mod kind;
pub mod net;
mod pki;

#[derive(clap::Args)]
pub struct Args {
    /// Use a kind cluster instead of the local one (needs Docker and a network; unverified
    /// on elasti's own machines, which have neither).
    #[arg(long, default_value_t = false)]
    kind: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Start the cluster (cleaning up any leftovers first) and wait until the node is Ready
    /// and CoreDNS runs.
    Up,
    /// Stop every process and remove every mount, namespace, cgroup and file of the cluster.
    Down,
    /// Show what runs; after `down`, prove nothing is left (exit 1 if something is).
    Status,
    /// Print the admin kubeconfig's path (use it from inside the netns: see `exec`).
    Kubeconfig,
    /// Run a command inside the cluster's network namespace with KUBECONFIG set, e.g.
    /// `cargo xtask cluster exec -- kubectl get pods -A`.
    Exec {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

pub fn run(args: &Args) -> Result<()> {
    if args.kind {
        return match &args.action {
            Action::Up => kind::up(&crate::images::build()?),
            Action::Down => kind::down(),
            Action::Status => cmd::run(
                "kind status",
                kind::in_cluster("kubectl").args(["get", "nodes,pods", "-A"]),
            ),
            Action::Kubeconfig => {
                println!("{}", kind::kubeconfig().display());
                Ok(())
            }
            Action::Exec { command } => {
                let status = kind::in_cluster(&command[0]).args(&command[1..]).status()?;
                std::process::exit(status.code().unwrap_or(1));
            }
        };
    }
    match &args.action {
        Action::Up => up(),
        Action::Down => down(),
        Action::Status => status(),
        Action::Kubeconfig => {
            println!("{}", config::kubeconfig("admin"));
            Ok(())
        }
        Action::Exec { command } => {
            let status = in_cluster(&command[0]).args(&command[1..]).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}

/// A command that runs inside the cluster's network namespace as the cluster admin, with
/// the cluster's binaries (and Helm) first on PATH.
pub fn in_cluster(program: &str) -> Command {
    let mut c = Command::new("nsenter");
    let path = format!(
        "{}:{}:{}",
        paths::kubernetes_bin().display(),
        paths::helm_bin().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.arg(format!("--net={}", net::netns_path()))
        .arg("--")
        .arg(program)
        .env("KUBECONFIG", config::kubeconfig("admin"))
        .env("ELASTI_CLUSTER", "local")
        .env("PATH", path);
    c
}

pub fn kubectl() -> Command {
    in_cluster(
        &paths::kubernetes_bin()
            .join("kubectl")
            .display()
            .to_string(),
    )
}

/// Whether the cluster's containerd is running (the images can be imported).
pub fn is_up() -> bool {
    host::netns_exists()
        && host::recorded_pids()
            .iter()
            .any(|(n, p)| n == "containerd" && host::alive(*p))
}

/// Imports OCI tarballs into the cluster's containerd (namespace `k8s.io`).
pub fn import_images(tarballs: &[PathBuf]) -> Result<()> {
    let p = cmd::Progress::start(format!("import {} images into containerd", tarballs.len()));
    for t in tarballs {
        cmd::output(
            &format!("ctr images import {}", t.display()),
            Command::new("ctr")
                .args([
                    "--address",
                    &config::containerd_socket(),
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                    "--no-unpack=false",
                ])
                .arg(t),
        )?;
    }
    p.done();
    Ok(())
}

fn binary(name: &str) -> PathBuf {
    match name {
        "etcd" => paths::etcd_bin().join("etcd"),
        other => paths::kubernetes_bin().join(other),
    }
}

pub fn up() -> Result<()> {
    let start = Instant::now();
    for b in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "kubectl",
    ] {
        if !binary(b).is_file() {
            bail!(
                "cluster up: {} missing; run `cargo xtask setup` first",
                binary(b).display()
            );
        }
    }
    for tool in [
        "containerd",
        "runc",
        "ctr",
        "nsenter",
        "ip",
        "iptables",
        "conntrack",
    ] {
        if !cmd::have(tool) {
            bail!("cluster up: `{tool}` not on PATH; run `cargo xtask setup` first");
        }
    }
    let left = host::leftovers();
    if !left.is_empty() {
        eprintln!(
            "==> cleaning up leftovers of an earlier cluster:\n    {}",
            left.join("\n    ")
        );
        let still = host::sweep();
        if !still.is_empty() {
            bail!("cluster up: could not clean up: {}", still.join("; "));
        }
    }
    if let Err(e) = start_everything() {
        // ELASTI_KEEP_FAILED=1 leaves a failed cluster running for debugging.
        if std::env::var_os("ELASTI_KEEP_FAILED").is_some() {
            eprintln!(
                "cluster up failed; left running (ELASTI_KEEP_FAILED); logs in {}",
                host::log_dir().display()
            );
        } else {
            eprintln!(
                "cluster up failed; tearing down (logs in {})",
                host::log_dir().display()
            );
            let _ = host::sweep();
        }
        return Err(e);
    }
    eprintln!(
        "cluster up in {:.0}s; `cargo xtask cluster exec -- kubectl get pods -A`",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

const COREDNS_READY_TIMEOUT_SECS: u64 = 180;

fn start_everything() -> Result<()> {
    let p = cmd::Progress::start("network namespace, PKI, configs");
    host::raise_inotify_limits()?;
    host::create_netns()?;
    pki::write_all(PathBuf::from(config::pki()).as_path())?;
    config::write_kubeconfigs()?;
    config::write_cni_config()?;
    p.done();

    let p = cmd::Progress::start("etcd");
    host::spawn("etcd", &binary("etcd"), &config::etcd_args())?;
    wait_alive_and("etcd", Duration::from_secs(60), || {
        cmd::succeeds(in_cluster("bash").args(["-c", "exec 3<>/dev/tcp/127.0.0.1/2379"]))
    })?;
    p.done();

    let p = cmd::Progress::start("kube-apiserver");
    host::spawn(
        "kube-apiserver",
        &binary("kube-apiserver"),
        &config::apiserver_args(),
    )?;
    wait_alive_and("kube-apiserver", Duration::from_secs(120), || {
        cmd::succeeds(kubectl().args(["get", "--raw", "/readyz"]))
    })?;
    p.done();

    let p = cmd::Progress::start("kube-controller-manager, kube-scheduler");
    host::spawn(
        "kube-controller-manager",
        &binary("kube-controller-manager"),
        &config::controller_manager_args(),
    )?;
    host::spawn(
        "kube-scheduler",
        &binary("kube-scheduler"),
        &config::scheduler_args(),
    )?;
    p.done();

    let p = cmd::Progress::start("containerd");
    let containerd_config = config::write_containerd_config()?;
    host::spawn(
        "containerd",
        &PathBuf::from("/usr/bin/containerd"),
        &["--config".into(), containerd_config],
    )?;
    wait_alive_and("containerd", Duration::from_secs(60), || {
        cmd::succeeds(Command::new("ctr").args([
            "--address",
            &config::containerd_socket(),
            "version",
        ]))
    })?;
    p.done();
    let tarballs = existing_images();
    import_images(&tarballs)?;

    let p = cmd::Progress::start("kubelet, kube-proxy");
    host::create_pods_cgroup()?;
    let kubelet_config = config::write_kubelet_config()?;
    host::spawn(
        "kubelet",
        &binary("kubelet"),
        &config::kubelet_args(&kubelet_config),
    )?;
    let proxy_config = config::write_kube_proxy_config()?;
    host::spawn(
        "kube-proxy",
        &binary("kube-proxy"),
        &[format!("--config={proxy_config}")],
    )?;
    wait_alive_and("node Ready", Duration::from_secs(180), || {
        kubectl()
            .args([
                "get",
                "node",
                net::NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .output()
            .is_ok_and(|o| o.stdout == b"True")
    })?;
    p.done();

    let p = cmd::Progress::start("system objects and CoreDNS");
    apply(&config::system_manifests())?;
    wait_alive_and(
        "CoreDNS Ready",
        Duration::from_secs(COREDNS_READY_TIMEOUT_SECS),
        || {
            cmd::succeeds(kubectl().args([
                "-n",
                "kube-system",
                "rollout",
                "status",
                "deploy/coredns",
                "--timeout=2s",
            ]))
        },
    )?;
    p.done();
    Ok(())
}

/// The image tarballs already built; pause and CoreDNS at least must be there.
fn existing_images() -> Vec<PathBuf> {
    std::fs::read_dir(paths::image_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "tar"))
                .collect()
        })
        .unwrap_or_default()
}

/// `kubectl apply -f -` with `manifest`.
pub fn apply(manifest: &str) -> Result<()> {
    use std::io::Write;
    let mut child = kubectl()
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("kubectl apply")?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(manifest.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("kubectl apply exited with {status}");
    }
    Ok(())
}

/// Waits for `check`, failing early (with the log's tail) if any recorded daemon died.
fn wait_alive_and(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let mut died = None;
    let r = host::wait_for(what, timeout, || {
        if let Some((name, _)) = host::recorded_pids()
            .into_iter()
            .find(|(_, p)| !host::alive(*p))
        {
            died = Some(name);
            return true;
        }
        check()
    });
    if let Some(name) = died {
        let log = host::log_dir().join(format!("{name}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!(
            "{name} exited while waiting for {what}; {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    r
}

pub fn down() -> Result<()> {
    let p = cmd::Progress::start("cluster down");
    let left = host::sweep();
    p.done();
    if !left.is_empty() {
        bail!("cluster down left behind:\n  {}", left.join("\n  "));
    }
    eprintln!("nothing of the cluster is left on this machine");
    Ok(())
}

fn status() -> Result<()> {
    let pids = host::recorded_pids();
    if host::netns_exists() && !pids.is_empty() {
        println!("cluster netns {} at {}", net::NETNS, net::netns_path());
        for (name, pid) in &pids {
            println!(
                "  {name:<24} pid {pid:<8} {}",
                if host::alive(*pid) { "running" } else { "DEAD" }
            );
        }
        let _ = kubectl()
            .args(["get", "nodes,pods", "-A", "-o", "wide"])
            .status();
        return Ok(());
    }
    println!(
        "checked: daemons by PID file, processes in cgroups {} and {} (every hierarchy), mounts under {} and {} and pod netns (/run/netns/cni-*), netns {}, CNI state, state dirs, kube-proxy rules in the host namespace",
        host::PODS_CGROUP,
        host::SYSTEM_CGROUP,
        host::STATE_DIR,
        host::RUN_DIR,
        net::NETNS
    );
    let left = host::leftovers();
    if left.is_empty() {
        println!("cluster is down and nothing of it is left on this machine");
        Ok(())
    } else {
        bail!("cluster is down but left behind:\n  {}", left.join("\n  "))
    }
}
