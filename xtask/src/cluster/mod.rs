//! `cargo xtask cluster up | down | status | kubeconfig | exec`: the kind cluster of record
//! (elasti_testbed::kind): one control plane and two workers, in a network namespace of its
//! own on podman, or on Docker where an engine runs.
use anyhow::{Result, bail};
use elasti_testbed::kind::{self, Cluster};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Create the cluster (cleaning up leftovers first), load elasti's images if they are
    /// built, and wait until every node is Ready and CoreDNS runs.
    Up {
        /// Worker nodes beside the control plane.
        #[arg(long, default_value_t = kind::DEFAULT_WORKERS)]
        workers: usize,
    },
    /// Remove the cluster and everything of it: containers, volumes, network, netns, files.
    Down,
    /// Show the nodes and pods; with no cluster, prove nothing of one is left (exit 1 if
    /// something is).
    Status,
    /// Print the admin kubeconfig's path (its server is reachable from inside the cluster's
    /// netns: see `exec`).
    Kubeconfig,
    /// Run a command where the cluster is reachable, with KUBECONFIG set, e.g.
    /// `cargo xtask cluster exec -- kubectl get pods -A`.
    Exec {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

pub fn run(args: &Args) -> Result<()> {
    match &args.action {
        Action::Up { workers } => up(*workers).map(|_| ()),
        Action::Down => kind::down(),
        Action::Status => status(),
        Action::Kubeconfig => {
            println!("{}", Cluster::kubeconfig().display());
            Ok(())
        }
        Action::Exec { command } => {
            let cluster = Cluster::discover()?;
            let status = cluster.command(&command[0]).args(&command[1..]).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}

/// Brings the cluster up and loads the image tarballs already built.
pub fn up(workers: usize) -> Result<Cluster> {
    let start = std::time::Instant::now();
    let cluster = kind::up(workers)?;
    let tarballs = crate::images::existing();
    if !tarballs.is_empty() {
        cluster.load_images(&tarballs)?;
    }
    eprintln!(
        "cluster up in {:.0}s ({} nodes); `cargo xtask cluster exec -- kubectl get pods -A`",
        start.elapsed().as_secs_f64(),
        cluster.nodes.len()
    );
    Ok(cluster)
}

fn status() -> Result<()> {
    if let Ok(cluster) = Cluster::discover() {
        println!(
            "kind cluster `{}` on {}:",
            kind::CLUSTER,
            cluster.provider.name()
        );
        for n in &cluster.nodes {
            println!("  {:<24} {:<15} pid {}", n.name, n.ip, n.pid);
        }
        let _ = cluster
            .kubectl()
            .args(["get", "nodes,pods", "-A", "-o", "wide"])
            .status();
        return Ok(());
    }
    println!("checked: {}", kind::CHECKED);
    let left = kind::leftovers();
    if left.is_empty() {
        println!("no cluster runs and nothing of one is left on this machine");
        Ok(())
    } else {
        bail!(
            "no cluster runs, but these are left:\n  {}",
            left.join("\n  ")
        )
    }
}
