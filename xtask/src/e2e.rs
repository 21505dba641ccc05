//! `cargo xtask e2e`: the end-to-end scenarios alone — setup (cached), the eBPF object and
//! the images, the local cluster up, elasti installed from `deploy/local`, the scenarios,
//! their table, and the cluster down again.
use anyhow::Result;

use crate::{cluster, cmd, ebpf, images, setup, test};

#[derive(clap::Args)]
pub struct Args {
    /// Skip `setup` (when you know everything is installed).
    #[arg(long, default_value_t = false)]
    pub skip_setup: bool,
}

pub fn run(args: &Args) -> Result<()> {
    if !args.skip_setup {
        setup::run(&setup::Args {
            skip_apt: false,
            skip_ebpf_toolchain: false,
        })?;
    }
    ebpf::build()?;
    images::build()?;
    test::build_suites()?;
    cluster::up()?;
    let mut tally = cmd::Tally::default();
    let result = test::scenarios(&mut tally);
    let down = cluster::down();
    println!("\ne2e: {} passed, {} failed", tally.passed, tally.failed);
    result.and(down)
}
