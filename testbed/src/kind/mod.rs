//! The cluster of record: kind, with one control plane and two workers by default.
//!
//! [`up`] creates it, [`Cluster::discover`] finds a running one (its nodes, their network
//! namespaces and cgroups), [`down`] removes it and everything it put on the machine, and
//! [`leftovers`] proves that nothing is left. See [`provider`] for podman (these machines)
//! versus Docker.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cmd, netns, paths};

mod config;
mod network;
pub mod provider;
mod sweep;

pub use provider::Provider;
pub use sweep::{BAKE_CONTAINER, CHECKED, down, leftovers};

/// The kind cluster's name: nodes are `elasti-control-plane`, `elasti-worker`,
/// `elasti-worker2`, …
pub const CLUSTER: &str = "elasti";
/// Workers in the test cluster: two, so a client and a pod can sit on different workers.
pub const DEFAULT_WORKERS: usize = 2;
/// The podman network the nodes share (inside [`netns`]); kind would make its own `kind`.
pub const NETWORK: &str = "elasti-kind";
/// That network's subnet. It exists only inside [`netns`].
pub const NETWORK_SUBNET: &str = "10.89.0.0/24";
/// The apiserver's port on the control-plane node.
const APISERVER_PORT: u16 = 6443;
/// `kind create cluster` takes 30–40 s here (three nodes, 2 cores). Once, in CI, its
/// `podman run`s hung with the nodes created but never started (each with a network
/// namespace holding only `lo`): past this it is stopped, torn down and tried once more.
const CREATE_LIMIT: Duration = Duration::from_secs(150);
/// Nodes Ready, CoreDNS rolled out: generous for 2 cores.
const READY_TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    ControlPlane,
    Worker,
}

/// One kind node: a container whose init is `pid` on this machine.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub role: Role,
    /// Its address on the nodes' network (its InternalIP).
    pub ip: String,
    /// The nodes' network's gateway: this machine's address as the nodes see it (in the
    /// cluster's namespace on podman), where [`Cluster::command`] processes listen.
    pub gateway: String,
    pub pid: u32,
}

impl Node {
    /// The node's network namespace: threads that enter it see what a hostNetwork pod on
    /// that node sees (its ClusterIP rules, its agent at 169.254.20.11).
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// The node's cgroup v2 root as this machine sees it: the cgroup namespace root of
    /// the node (`--cgroupns=private`), where the agent on that node attaches. Everything
    /// under it is the node's: its systemd, kubelet, containerd and pods.
    ///
    /// # Errors
    /// When the node's process is gone.
    pub fn cgroup(&self) -> Result<PathBuf> {
        let text = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid))
            .with_context(|| format!("node {}: /proc/{}/cgroup", self.name, self.pid))?;
        Ok(cgroup2_mount().join(node_cgroup(&text)?.trim_start_matches('/')))
    }
}

/// A running kind cluster.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub provider: Provider,
    /// Control plane first, then the workers by name.
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Finds the running cluster's nodes.
    ///
    /// # Errors
    /// When no node of [`CLUSTER`] runs, or the engine cannot be asked.
    pub fn discover() -> Result<Self> {
        let provider = Provider::detect();
        let names = cmd::output(
            "list kind nodes",
            provider.engine().args([
                "ps",
                "--filter",
                &format!("label=io.x-k8s.kind.cluster={CLUSTER}"),
                "--format",
                "{{.Names}}",
            ]),
        )?;
        let names: Vec<&str> = names.split_whitespace().collect();
        if names.is_empty() {
            bail!("no kind cluster `{CLUSTER}` runs: `cargo xtask cluster up` starts one");
        }
        let inspect = cmd::output(
            "inspect kind nodes",
            provider.engine().arg("inspect").args(&names),
        )?;
        let mut nodes = parse_inspect(&inspect)?;
        nodes.sort_by_key(|n| (n.role == Role::Worker, n.name.clone()));
        Ok(Self { provider, nodes })
    }

    pub fn control_plane(&self) -> &Node {
        &self.nodes[0]
    }

    /// The workers, by name (`elasti-worker`, `elasti-worker2`, …).
    pub fn workers(&self) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Worker)
            .collect()
    }

    /// The node the suites run on (their process enters its network namespace): the first
    /// worker, or the control plane of a one-node cluster.
    pub fn home(&self) -> &Node {
        self.workers()
            .first()
            .copied()
            .unwrap_or(self.control_plane())
    }

    /// This machine's address as pods and nodes see it (see [`Node::gateway`]).
    pub fn host_ip(&self) -> &str {
        &self.control_plane().gateway
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The admin kubeconfig; its server is the control plane's address, reachable from the
    /// cluster's namespace and from every node's.
    pub fn kubeconfig() -> PathBuf {
        paths::cluster_state().join("kubeconfig")
    }

    /// `program` where the cluster is reachable (the cluster's namespace on podman), as the
    /// cluster admin, with the cluster's tools on PATH.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = self.provider.command(program);
        c.env("KUBECONFIG", Self::kubeconfig())
            .env("ELASTI_CLUSTER", "kind");
        c
    }

    /// `program` in `node`'s network namespace, as [`Cluster::command`] otherwise.
    pub fn command_on(&self, node: &Node, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = netns::nsenter(&node.netns(), program);
        let probe = self.command("true");
        for (k, v) in probe.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c
    }

    pub fn kubectl(&self) -> Command {
        self.command(paths::kubernetes_bin().join("kubectl"))
    }

    /// Runs `f` on a thread where the cluster's addresses are reachable: inside the
    /// cluster's namespace on podman (from the machine's own namespace those addresses
    /// route out of the machine), directly on Docker.
    pub fn run_beside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        match self.provider {
            Provider::Podman => netns::run_in(&netns::path(), f),
            Provider::Docker => Ok(f()),
        }
    }

    /// `kind load image-archive` of each tarball into every node.
    pub fn load_images(&self, tarballs: &[PathBuf]) -> Result<()> {
        let p = cmd::Progress::start(format!(
            "kind load image-archive ({} images)",
            tarballs.len()
        ));
        for t in tarballs {
            cmd::output(
                &format!("kind load image-archive {}", t.display()),
                self.provider
                    .kind()
                    .args(["load", "image-archive", "--name", CLUSTER])
                    .arg(t),
            )?;
            p.beat(&format!("loaded {}", t.display()));
        }
        p.done();
        Ok(())
    }
}

/// Whether the cluster's nodes run.
pub fn is_up() -> bool {
    Cluster::discover().is_ok()
}

/// Creates the cluster with `workers` workers, cleaning up leftovers of an earlier one
/// first, and waits until every node is Ready and CoreDNS runs. A failure tears down what
/// was made, unless `ELASTI_KEEP_FAILED` is set.
pub fn up(workers: usize) -> Result<Cluster> {
    let provider = Provider::detect();
    eprintln!("kind provider: {} ({})", provider.name(), provider.reason());
    provider.prepare()?;
    let left = leftovers();
    if !left.is_empty() {
        eprintln!(
            "==> cleaning up leftovers of an earlier cluster:\n    {}",
            left.join("\n    ")
        );
        let still = sweep::sweep();
        if !still.is_empty() {
            bail!("cluster up: could not clean up: {}", still.join("; "));
        }
    }
    let created = match create(provider, workers) {
        Err(e) if e.downcast_ref::<cmd::TimedOut>().is_some() => {
            eprintln!("{e:#}\n==> tearing down the hung cluster and trying once more");
            let still = sweep::sweep();
            if !still.is_empty() {
                bail!("cluster up: could not clean up: {}", still.join("; "));
            }
            create(provider, workers)
        }
        other => other,
    };
    match created {
        Ok(c) => Ok(c),
        Err(e) => {
            if std::env::var_os("ELASTI_KEEP_FAILED").is_some() {
                eprintln!("cluster up failed; left running (ELASTI_KEEP_FAILED)");
            } else {
                eprintln!("cluster up failed; tearing down");
                let _ = sweep::sweep();
            }
            Err(e)
        }
    }
}

fn create(provider: Provider, workers: usize) -> Result<Cluster> {
    let image = provider.node_image();
    let state = paths::cluster_state();
    std::fs::create_dir_all(&state)?;
    if provider == Provider::Podman {
        let p = cmd::Progress::start(format!(
            "network namespace {} and podman network {NETWORK}",
            netns::NETNS
        ));
        sweep::ensure_lib_modules()?;
        netns::create()?;
        cmd::output(
            "podman network create",
            provider.engine().args([
                "network",
                "create",
                "--driver=bridge",
                &format!("--subnet={NETWORK_SUBNET}"),
                NETWORK,
            ]),
        )?;
        if !cmd::succeeds(provider.engine().args(["image", "exists", &image])) {
            bail!("cluster up: node image {image} missing; run `cargo xtask setup` first");
        }
        p.done();
    }
    let config = state.join("kind-config.yaml");
    std::fs::write(
        &config,
        serde_json::to_vec_pretty(&config::cluster(provider, workers))?,
    )?;
    let p = cmd::Progress::start(format!(
        "kind create cluster: 1 control plane, {workers} workers ({image})"
    ));
    let mut create = provider.kind();
    create
        .args(["create", "cluster", "--name", CLUSTER, "--image", &image])
        .arg("--config")
        .arg(&config)
        .arg("--kubeconfig")
        .arg(Cluster::kubeconfig())
        .env("KIND_EXPERIMENTAL_PODMAN_NETWORK", NETWORK);
    if std::env::var_os("ELASTI_KEEP_FAILED").is_some() {
        create.arg("--retain");
    }
    cmd::run_logged_within(
        "kind create cluster",
        &mut create,
        &state.join("kind-create.log"),
        CREATE_LIMIT,
        &|pid| describe_hang(provider, pid),
    )?;
    p.done();
    let cluster = Cluster::discover()?;
    point_kubeconfig_at(&Cluster::kubeconfig(), &cluster.control_plane().ip)?;
    if provider == Provider::Podman {
        // Before the pod network: CoreDNS cannot start until then, so it starts with this.
        network::coredns_without_forward(&cluster)?;
        let p = cmd::Progress::start("pod network: a podCIDR per node, routes between nodes");
        network::connect_nodes(&cluster)?;
        p.done();
    }
    let p = cmd::Progress::start("nodes Ready");
    cmd::run(
        "nodes Ready",
        cluster.kubectl().args([
            "wait",
            "--for=condition=Ready",
            "nodes",
            "--all",
            &format!("--timeout={}s", READY_TIMEOUT.as_secs()),
        ]),
    )?;
    p.done();
    cmd::run(
        "CoreDNS rollout",
        cluster.kubectl().args([
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/coredns",
            &format!("--timeout={}s", READY_TIMEOUT.as_secs()),
        ]),
    )?;
    Ok(cluster)
}

/// What a hung `kind create` is waiting for, for the log: the nodes' states and every
/// process it started (podman, netavark, runc) with where each waits.
fn describe_hang(provider: Provider, kind_pid: u32) {
    // `podman ps` may wait on the same lock as what hangs.
    let nodes = cmd::output(
        "podman ps",
        provider.command("timeout").args([
            "10",
            provider.name(),
            "ps",
            "-a",
            "--format",
            "{{.Names}} {{.State}} {{.Status}}",
        ]),
    )
    .unwrap_or_else(|e| format!("{e:#}"));
    eprintln!(
        "kind create cluster hangs; the nodes:\n    {}\nits processes (pid state wchan command):\n    {}",
        nodes.trim().replace('\n', "\n    "),
        cmd::process_group(kind_pid).join("\n    ")
    );
}

/// Points the kubeconfig kind wrote (127.0.0.1 and a published port) at the control
/// plane's own address, which every node's namespace reaches too. The apiserver's
/// certificate names that address (kubeadm's advertise address).
fn point_kubeconfig_at(kubeconfig: &Path, control_plane_ip: &str) -> Result<()> {
    let text = std::fs::read_to_string(kubeconfig)?;
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let server = format!("https://{control_plane_ip}:{APISERVER_PORT}");
    for cluster in kc["clusters"]
        .as_sequence_mut()
        .context("kubeconfig: no clusters")?
    {
        cluster["cluster"]["server"] = serde_yaml::Value::String(server.clone());
    }
    std::fs::write(kubeconfig, serde_yaml::to_string(&kc)?)?;
    Ok(())
}

/// The nodes in `podman inspect` / `docker inspect` JSON.
fn parse_inspect(json: &str) -> Result<Vec<Node>> {
    let items: Vec<Value> = serde_json::from_str(json).context("inspect JSON")?;
    items
        .iter()
        .map(|i| {
            let name = i["Name"]
                .as_str()
                .context("inspect: no Name")?
                .trim_start_matches('/')
                .to_string();
            let role = match i["Config"]["Labels"]["io.x-k8s.kind.role"].as_str() {
                Some("control-plane") => Role::ControlPlane,
                _ => Role::Worker,
            };
            let pid = i["State"]["Pid"]
                .as_u64()
                .context("inspect: no State.Pid")? as u32;
            let network = i["NetworkSettings"]["Networks"]
                .as_object()
                .and_then(|n| n.values().next())
                .with_context(|| format!("inspect: node {name} has no network"))?;
            let field = |key: &str| {
                network[key]
                    .as_str()
                    .filter(|v| !v.is_empty())
                    .map(String::from)
                    .with_context(|| format!("inspect: node {name} has no {key}"))
            };
            Ok(Node {
                ip: field("IPAddress")?,
                gateway: field("Gateway")?,
                name,
                role,
                pid,
            })
        })
        .collect()
}

/// The node's cgroup namespace root, from its init's `/proc/<pid>/cgroup`: systemd moves
/// itself into `init.scope` below the root the container was started in.
fn node_cgroup(proc_cgroup: &str) -> Result<String> {
    let path = proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 line")?;
    Ok(path.strip_suffix("/init.scope").unwrap_or(path).to_string())
}

/// This machine's cgroup v2 mount: `/sys/fs/cgroup/unified` on a hybrid host.
pub fn cgroup2_mount() -> PathBuf {
    if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        PathBuf::from("/sys/fs/cgroup/unified")
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_read_from_inspect_json() -> Result<()> {
        let json = r#"[{"Name":"elasti-worker","State":{"Pid":11654},
            "Config":{"Labels":{"io.x-k8s.kind.cluster":"elasti","io.x-k8s.kind.role":"worker"}},
            "NetworkSettings":{"Networks":{"elasti-kind":{"IPAddress":"10.89.0.10","Gateway":"10.89.0.1"}}}},
            {"Name":"/elasti-control-plane","State":{"Pid":7},
            "Config":{"Labels":{"io.x-k8s.kind.role":"control-plane"}},
            "NetworkSettings":{"Networks":{"kind":{"IPAddress":"172.18.0.2","Gateway":"172.18.0.1"}}}}]"#;
        let nodes = parse_inspect(json)?;
        assert_eq!(nodes[0].name, "elasti-worker");
        assert_eq!((nodes[0].role, nodes[0].pid), (Role::Worker, 11654));
        assert_eq!(
            (nodes[0].ip.as_str(), nodes[0].gateway.as_str()),
            ("10.89.0.10", "10.89.0.1")
        );
        assert_eq!(nodes[1].name, "elasti-control-plane");
        assert_eq!(nodes[1].role, Role::ControlPlane);
        Ok(())
    }

    #[test]
    fn the_node_cgroup_is_the_parent_of_its_init_scope() -> Result<()> {
        let text = "9:name=systemd:/libpod_parent/libpod-a9/init.scope\n0::/libpod_parent/libpod-a9/init.scope\n";
        assert_eq!(node_cgroup(text)?, "/libpod_parent/libpod-a9");
        assert_eq!(
            node_cgroup("0::/system.slice/docker-1.scope\n")?,
            "/system.slice/docker-1.scope"
        );
        assert!(node_cgroup("1:cpu:/x\n").is_err());
        Ok(())
    }
}
