//! `cargo xtask test`: the README's test command. It installs what is missing (cached),
//! builds the eBPF object and the images, runs the unit and root suites, brings the local
//! cluster up, runs the cluster suites inside its network namespace, and always tears the
//! cluster down again.
use std::{process::Command, time::Instant};

use anyhow::Result;

use crate::{cluster, cmd, ebpf, images, manifests, paths, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Skip `setup` (when you know everything is installed).
    #[arg(long, default_value_t = false)]
    pub skip_setup: bool,
    /// Run only the unit and root suites; no cluster.
    #[arg(long, default_value_t = false)]
    pub no_cluster: bool,
    /// Run the cluster suites against kind instead of the local cluster (needs Docker and a
    /// network; unverified on elasti's own machines, which have neither).
    #[arg(long, default_value_t = false)]
    pub kind: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let mut tally = cmd::Tally::default();
    let result = run_suites(args, &mut tally);
    // A plain closing line over every suite, so CI reads one total. The cluster suites
    // are `#[ignore]`d in the first pass and run in the second, so only what no pass ran
    // counts as skipped.
    println!(
        "\ntests: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    result
}

fn run_suites(args: &Args, tally: &mut cmd::Tally) -> Result<()> {
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
    timed("manifests up to date", &mut || {
        manifests::run(&manifests::Args { check: true })
    })?;
    timed("build-ebpf", &mut ebpf::build)?;
    timed("unit and root suites", &mut || {
        cmd::run_tests(
            "unit and root suites",
            // Default members: the eBPF crate only builds for bpfel-unknown-none.
            Command::new("cargo")
                .current_dir(paths::repo())
                .args(["test", "--locked"]),
            tally,
        )
    })?;
    if !args.no_cluster {
        // The cluster suites are `#[ignore]`d in the pass above and run in the next one:
        // what that pass runs is not a skip.
        let deferred = std::mem::take(&mut tally.ignored);
        let before = tally.passed + tally.failed;
        let mut tarballs = Vec::new();
        let result = timed("images", &mut || {
            tarballs = images::build()?;
            Ok(())
        })
        .and_then(|()| {
            if args.kind {
                timed("cluster suites (kind)", &mut || {
                    kind_suites(&tarballs, tally)
                })
            } else {
                timed("cluster suites", &mut || cluster_suites(tally))
            }
        });
        tally.ignored += deferred.saturating_sub(tally.passed + tally.failed - before);
        result?;
    }
    eprintln!("\ntimings:");
    for (name, secs) in &timings {
        eprintln!("  {name:<24} {secs:>7.1}s");
    }
    Ok(())
}

const SUITE_ARGS: [&str; 8] = [
    "test",
    "-p",
    "elasti-e2e",
    "--locked",
    "--offline",
    "--",
    "--ignored",
    "--test-threads=1",
];

pub fn build_suites() -> Result<()> {
    // Built in the host namespace: the cluster's has no route to crates.io.
    cmd::run(
        "build cluster suites",
        Command::new("cargo").current_dir(paths::repo()).args([
            "test",
            "-p",
            "elasti-e2e",
            "--locked",
            "--no-run",
        ]),
    )
}

/// The same suites against kind.
fn kind_suites(tarballs: &[std::path::PathBuf], tally: &mut cmd::Tally) -> Result<()> {
    build_suites()?;
    cluster::kind::up(tarballs)?;
    let result = cmd::run_tests(
        "cluster suites (kind)",
        cluster::kind::in_cluster("cargo")
            .current_dir(paths::repo())
            .args(SUITE_ARGS),
        tally,
    );
    result.and(cluster::kind::down())
}

/// The end-to-end scenarios' test names start with this; they run last, against elasti
/// installed from its manifests, so the in-process suites never meet the DaemonSet.
const SCENARIOS: &str = "scenario_";

/// Brings the cluster up, runs `tests/` with `--ignored` inside its netns (the suites,
/// then the end-to-end scenarios), tears it down.
fn cluster_suites(tally: &mut cmd::Tally) -> Result<()> {
    build_suites()?;
    cluster::up()?;
    let result = cmd::run_tests(
        "cluster suites",
        cluster::in_cluster("cargo")
            .current_dir(paths::repo())
            .args(SUITE_ARGS)
            .args(["--skip", SCENARIOS]),
        tally,
    )
    .and_then(|()| scenarios(tally));
    let down = cluster::down();
    result.and(down)
}

/// Runs the end-to-end scenarios on the cluster that is up, and prints their table.
pub fn scenarios(tally: &mut cmd::Tally) -> Result<()> {
    let table = paths::repo().join("target/e2e/scenarios.tsv");
    let _ = std::fs::remove_file(&table);
    let result = cmd::run_tests(
        "end-to-end scenarios",
        cluster::in_cluster("cargo")
            .current_dir(paths::repo())
            .args([
                "test",
                "-p",
                "elasti-e2e",
                "--locked",
                "--offline",
                "--test",
                "e2e",
                "--",
                "--ignored",
                "--test-threads=1",
                SCENARIOS,
            ]),
        tally,
    );
    print_scenarios(&table);
    result
}

/// The table the scenarios wrote: number, what, result, seconds.
fn print_scenarios(table: &std::path::Path) {
    let Ok(text) = std::fs::read_to_string(table) else {
        return;
    };
    let mut rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    rows.sort_by_key(|r| r.first().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0));
    println!("\n| # | scenario | result | seconds |\n|---|---|---|---|");
    for r in rows {
        if let [n, what, result, secs, ..] = r.as_slice() {
            println!("| {n} | {what} | {result} | {secs} |");
        }
    }
}
