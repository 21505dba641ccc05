//! `cargo xtask bench`: builds the eBPF object and `elasti-bench` (release) and runs it as
//! root. Results: `target/bench/results.{json,md}`; the table is printed.
use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, ebpf, paths};

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for elasti-bench (e.g. `--held 2000 --rounds 3` for a quick run).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub extra: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("bench: the connect() figures attach real eBPF programs; run as root");
    }
    ebpf::build()?;
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
