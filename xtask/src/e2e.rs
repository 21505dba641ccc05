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
}

pub fn run(args: &Args) -> Result<()> {
    if !args.skip_setup {
        setup::run(&setup::Args::default())?;
    }
    ebpf::build()?;
    images::build()?;
    test::build_suites()?;
    let cluster = cluster::up(kind::DEFAULT_WORKERS)?;
    let mut tally = Tally::default();
    let result = test::scenarios(&cluster, &mut tally);
    let down = kind::down();
    println!("\ne2e: {} passed, {} failed", tally.passed, tally.failed);
    result.and(down)
}
