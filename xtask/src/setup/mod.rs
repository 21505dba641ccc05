//! `cargo xtask setup`: one idempotent command that installs what the build, the demo and
//! the tests need on a fresh Debian machine. Everything built is cached by version under
//! [`paths::cache`], so a second run only checks stamps.
use std::time::Instant;

use anyhow::Result;
use elasti_testbed::{cmd::Progress, kind::Provider, paths};

mod apt;
mod gobuild;
mod node_image;
mod toolchain;

#[derive(clap::Args, Default)]
pub struct Args {
    /// Skip the Debian packages (for machines where they are managed elsewhere).
    #[arg(long, default_value_t = false)]
    pub skip_apt: bool,
    /// Skip the eBPF toolchain (bpf-linker, Debian rustc-web).
    #[arg(long, default_value_t = false)]
    pub skip_ebpf_toolchain: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    eprintln!("cache: {}", paths::cache().display());
    if !args.skip_apt {
        let p = Progress::start("Debian packages");
        apt::ensure(apt::PACKAGES)?;
        for package in apt::UNPACKED {
            apt::ensure_unpacked(package)?;
        }
        p.done();
    }
    if !args.skip_ebpf_toolchain {
        let p = Progress::start("eBPF toolchain (rustc-web link, bpf-linker)");
        toolchain::ensure()?;
        p.done();
    }
    let provider = Provider::detect();
    eprintln!("kind provider: {} ({})", provider.name(), provider.reason());
    gobuild::ensure_go()?;
    for program in gobuild::programs(provider)? {
        let p = Progress::start(format!("{} {}", program.name, program.version));
        program.ensure()?;
        p.done();
    }
    if provider == Provider::Podman {
        let p = Progress::start(format!("pause {}", paths::PAUSE_VERSION));
        gobuild::ensure_pause()?;
        p.done();
        let p = Progress::start(format!("kind node image {}", paths::node_image()));
        node_image::ensure()?;
        p.done();
    }
    eprintln!(
        "setup complete in {:.0}s; cache at {}",
        start.elapsed().as_secs_f64(),
        paths::cache().display()
    );
    Ok(())
}
