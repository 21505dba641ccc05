//! `cargo xtask test`: the README's test command. It installs what is missing (cached),
//! builds the eBPF object and the images, runs the unit and root suites, brings the kind
//! cluster up, runs the cluster suites from inside a worker node's network namespace, and
//! always tears the cluster down again.
use std::{process::Command, time::Instant};

use anyhow::Result;
use elasti_testbed::{
    kind::{self, Cluster},
    paths,
};

use crate::{
    cluster, ebpf, images, manifests, setup,
    tally::{Tally, run_tests},
};

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
    let mut tally = Tally::default();
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

fn run_suites(args: &Args, tally: &mut Tally) -> Result<()> {
    let mut timings: Vec<(&str, f64)> = Vec::new();
    let mut timed = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let start = Instant::now();
        let r = f();
        timings.push((name, start.elapsed().as_secs_f64()));
        r
    };
    if !args.skip_setup {
        timed("setup", &mut || setup::run(&setup::Args::default()))?;
    }
    timed("manifests up to date", &mut || {
        manifests::run(&manifests::Args { check: true })
    })?;
    timed("build-ebpf", &mut ebpf::build)?;
    timed("unit and root suites", &mut || {
        run_tests(
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
        let result = timed("images", &mut || images::build().map(drop))
            .and_then(|()| timed("cluster suites", &mut || cluster_suites(tally)));
        tally.ignored += deferred.saturating_sub(tally.passed + tally.failed - before);
        result?;
    }
    eprintln!("\ntimings:");
    for (name, secs) in &timings {
        eprintln!("  {name:<24} {secs:>7.1}s");
    }
    Ok(())
}

pub fn build_suites() -> Result<()> {
    // Built in the host namespace: the cluster's has no route to crates.io.
    elasti_testbed::cmd::run(
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

/// The end-to-end scenarios' test names start with this; they run last, against elasti
/// installed from its chart, so the in-process suites never meet the DaemonSet.
const SCENARIOS: &str = "scenario_";

/// `cargo test -p elasti-e2e … -- --ignored` from inside the cluster's first worker (its
/// network namespace: ClusterIPs, its agent, the other nodes), as a hostNetwork pod there
/// would be.
/// `cargo_args` pick test targets, `test_args` filter tests by name.
fn suites(cluster: &Cluster, cargo_args: &[&str], test_args: &[&str]) -> Command {
    let mut c = cluster.command_on(cluster.home(), "cargo");
    c.current_dir(paths::repo())
        .args(["test", "-p", "elasti-e2e", "--locked", "--offline"])
        .args(cargo_args)
        .args(["--", "--ignored", "--test-threads=1"])
        .args(test_args);
    c
}

/// Brings the cluster up, runs `tests/` with `--ignored` (the suites, then the
/// end-to-end scenarios), tears it down.
fn cluster_suites(tally: &mut Tally) -> Result<()> {
    build_suites()?;
    let cluster = cluster::up(kind::DEFAULT_WORKERS)?;
    let result = run_tests(
        "cluster suites",
        &mut suites(&cluster, &[], &["--skip", SCENARIOS]),
        tally,
    )
    .and_then(|()| scenarios(&cluster, tally, "e2e", &[]));
    let down = kind::down();
    result.and(down)
}

/// Runs the tests of one target of `tests/` (`e2e`: the end-to-end scenarios) whose names
/// contain one of `only` (or all) on the cluster that is up, and prints the scenarios' table.
pub fn scenarios(cluster: &Cluster, tally: &mut Tally, suite: &str, only: &[String]) -> Result<()> {
    let table = paths::repo().join("target/e2e/scenarios.tsv");
    let _ = std::fs::remove_file(&table);
    let mut filter: Vec<&str> = only.iter().map(String::as_str).collect();
    if filter.is_empty() && suite == "e2e" {
        filter.push(SCENARIOS);
    }
    // Streamed as they run: each scenario says what it waits for and what it measured.
    filter.push("--nocapture");
    let result = run_tests(
        "end-to-end scenarios",
        &mut suites(cluster, &["--test", suite], &filter),
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
