//! `cargo xtask test`: the README's test command. It installs what is missing (cached),
//! builds the eBPF object and the images, runs the unit and root suites, brings the local
//! cluster up, runs the cluster suites inside its network namespace, and always tears the
//! cluster down again.
use std::{process::Command, time::Instant};

use anyhow::Result;

use crate::{cluster, cmd, ebpf, images, paths, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Skip `setup` (when you know everything is installed).
    #[arg(long, default_value_t = false)]
    pub skip_setup: bool,
    /// Run only the unit and root suites; no cluster.
    #[arg(long, default_value_t = false)]
    pub no_cluster: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let mut timings: Vec<(&str, f64)> = Vec::new();
    let mut timed = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let start = Instant::now();
        let r = f();
        timings.push((name, start.elapsed().as_secs_f64()));
        r
    };
    if !args.skip_setup {
        timed("setup", &mut || {
            setup::run(&setup::Args {
                skip_apt: false,
                skip_ebpf_toolchain: false,
            })
        })?;
    }
    timed("build-ebpf", &mut ebpf::build)?;
    timed("unit and root suites", &mut || {
        cmd::run(
            "unit and root suites",
            Command::new("cargo").current_dir(paths::repo()).args([
                "test",
                "--workspace",
                "--locked",
            ]),
        )
    })?;
    if !args.no_cluster {
        timed("images", &mut || images::build().map(|_| ()))?;
        timed("cluster suites", &mut cluster_suites)?;
    }
    eprintln!("\ntimings:");
    for (name, secs) in &timings {
        eprintln!("  {name:<24} {secs:>7.1}s");
    }
    Ok(())
}

/// Brings the cluster up, runs `tests/` with `--ignored` inside its netns, tears it down.
fn cluster_suites() -> Result<()> {
    // Build first, in the host namespace (the cluster's has no route to crates.io).
    cmd::run(
        "build cluster suites",
        Command::new("cargo").current_dir(paths::repo()).args([
            "test",
            "-p",
            "elasti-e2e",
            "--locked",
            "--no-run",
        ]),
    )?;
    cluster::up()?;
    let result = cmd::run(
        "cluster suites",
        cluster::in_cluster("cargo")
            .current_dir(paths::repo())
            .args([
                "test",
                "-p",
                "elasti-e2e",
                "--locked",
                "--offline",
                "--",
                "--ignored",
                "--test-threads=1",
            ]),
    );
    let down = cluster::down();
    result.and(down)
}
