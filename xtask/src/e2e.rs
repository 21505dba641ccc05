//! `cargo xtask e2e`: the end-to-end scenarios alone — setup (cached), the eBPF object and
//! the images, the kind cluster up, the scenarios, their table, and the cluster down again.
use anyhow::Result;
use elasti_testbed::kind;

use crate::{cluster, ebpf, images, setup, tally::Tally, test};

#[derive(clap::Args)]
pub struct Args {
    /// Skip `setup` (when you know everything is installed).
    #[arg(long, default_value_t = false)]
    pub skip_setup: bool,
    /// Keep the cluster up afterwards (for a look, or a second run with `--reuse`).
    #[arg(long, default_value_t = false)]
    pub keep: bool,
    /// Run on the cluster that is up (elasti's images are loaded again) instead of a new one.
    #[arg(long, default_value_t = false)]
    pub reuse: bool,
    /// Run this test target of `tests/` instead of the scenarios' (`e2e`): `operator`,
    /// `crd`, `agent_hold`, … (the in-process suites against the cluster's apiserver).
    #[arg(long, default_value = "e2e")]
    pub suite: String,
    /// Only the tests whose name contains one of these (e.g. `scenario_26`).
    #[arg(trailing_var_arg = true)]
    pub only: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    if !args.skip_setup {
        setup::run(&setup::Args::default())?;
    }
    ebpf::build()?;
    let tarballs = images::build()?;
    test::build_suites()?;
    let cluster = match kind::Cluster::discover() {
        Ok(c) if args.reuse => {
            c.load_images(&tarballs)?;
            restart_elasti(&c)?;
            c
        }
        _ => cluster::up(kind::DEFAULT_WORKERS)?,
    };
    let mut tally = Tally::default();
    let result = test::scenarios(&cluster, &mut tally, &args.suite, &args.only);
    let down = if args.keep { Ok(()) } else { kind::down() };
    println!("\ne2e: {} passed, {} failed", tally.passed, tally.failed);
    result.and(down)
}

/// On a reused cluster, elasti installed by an earlier run still runs the images it was
/// started with (the tags do not change, so a Helm upgrade rolls nothing): restart the
/// agent and the operator on the images just loaded.
fn restart_elasti(cluster: &kind::Cluster) -> Result<()> {
    let installed = cluster
        .kubectl()
        .args(["-n", "elasti-system", "get", "daemonset/elasti-agent"])
        .output()?
        .status
        .success();
    if !installed {
        return Ok(());
    }
    for what in ["daemonset/elasti-agent", "deployment/elasti-operator"] {
        elasti_testbed::cmd::run(
            "restart elasti on the new images",
            cluster
                .kubectl()
                .args(["-n", "elasti-system", "rollout", "restart", what]),
        )?;
    }
    for what in ["daemonset/elasti-agent", "deployment/elasti-operator"] {
        elasti_testbed::cmd::run(
            "wait for the restarted elasti",
            cluster.kubectl().args([
                "-n",
                "elasti-system",
                "rollout",
                "status",
                what,
                "--timeout=300s",
            ]),
        )?;
    }
    Ok(())
}
