//! `cargo xtask bench`: builds the eBPF object and `elasti-bench` (release) and runs it as
//! root, then the figures that need the local cluster ([`cluster`]). Results:
//! `target/bench/results.{json,md}` and `target/bench/cluster.{json,md}`; tables printed.
mod cluster;

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, ebpf, paths};

#[derive(clap::Args)]
pub struct Args {
    /// Only the cluster figures (skip elasti-bench's local ones).
    #[arg(long, default_value_t = false)]
    pub cluster_only: bool,
    /// Rounds of each cluster figure (0 skips the cluster part).
    #[arg(long, default_value_t = 3)]
    pub cluster_rounds: usize,
    /// Which cluster figures to measure (all by default).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [
        cluster::Figure::Warm,
        cluster::Figure::Grace,
        cluster::Figure::Wake,
        cluster::Figure::Cold,
        cluster::Figure::ScaleDown,
    ])]
    pub figures: Vec<cluster::Figure>,
    /// Extra arguments for elasti-bench (e.g. `--held 2000 --rounds 3` for a quick run).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub extra: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("bench: the connect() figures attach real eBPF programs; run as root");
    }
    ebpf::build()?;
    if !args.cluster_only {
        local(args)?;
    }
    if args.cluster_rounds == 0 {
        return Ok(());
    }
    cluster_figures(args)
}

/// elasti-bench: the figures measured without the cluster.
fn local(args: &Args) -> Result<()> {
    cmd::run(
        "build elasti-bench",
        Command::new("cargo").current_dir(paths::repo()).args([
            "build",
            "--release",
            "--locked",
            "-p",
            "elasti-bench",
        ]),
    )?;
    cmd::run(
        "elasti-bench",
        Command::new(paths::repo().join("target/release/elasti-bench"))
            .current_dir(paths::repo())
            .args(["--out", "target/bench"])
            .args(&args.extra),
    )
}

fn cluster_figures(args: &Args) -> Result<()> {
    let (rows, json) = cluster::run(args.cluster_rounds, &args.figures)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let md = format!(
        "Cluster figures, {cores} cores, {} rounds each, medians (min/median/max in cluster.json):\n\n| figure | baseline (same run) | elasti | ratio / difference |\n| --- | --- | --- | --- |\n{rows}",
        args.cluster_rounds
    );
    let out = paths::repo().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("cluster.md"), &md)?;
    std::fs::write(out.join("cluster.json"), serde_json::to_vec_pretty(&json)?)?;
    println!("\n{md}");
    Ok(())
}
