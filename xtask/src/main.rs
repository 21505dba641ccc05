//! `cargo xtask <task>`: everything that is not `cargo build` — installing the toolchain and
//! test bed, building the eBPF programs and OCI images, running the kind cluster and the
//! suites. Each subcommand is one module.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cluster;
mod demo;
mod e2e;
mod ebpf;
mod images;
mod manifests;
mod setup;
mod tally;
mod test;

#[derive(Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the build, the demo and the tests need (idempotent, cached by
    /// version under $ELASTI_CACHE or ~/.cache/elasti).
    Setup(setup::Args),
    /// The README's main job: setup, the kind cluster, and a demo workload on it.
    Demo(demo::Args),
    /// Build the eBPF programs with Debian's rust-src toolchain; the agent embeds the object.
    BuildEbpf(ebpf::Args),
    /// Build OCI image tarballs (no Docker) and, if the cluster is up, load them.
    Images(images::Args),
    /// Render the Helm chart into deploy/daemonset (and copy the CRD into the chart).
    Manifests(manifests::Args),
    /// The kind cluster (one control plane, two workers) in its own network namespace.
    Cluster(cluster::Args),
    /// Benchmarks, each against a baseline from the same run (root: real eBPF programs).
    Bench(bench::Args),
    /// The README's test command: unit, root and cluster suites, with the cluster brought up
    /// and torn down around them.
    Test(test::Args),
    /// The end-to-end scenarios alone, on a fresh kind cluster, with their table.
    E2e(e2e::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(args) => setup::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::BuildEbpf(args) => ebpf::run(&args),
        Task::Images(args) => images::run(&args),
        Task::Cluster(args) => cluster::run(&args),
        Task::Test(args) => test::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::E2e(args) => e2e::run(&args),
        Task::Manifests(args) => manifests::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
