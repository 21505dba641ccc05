//! `cargo xtask build-ebpf`: builds `ebpf/` for bpfel-unknown-none with Debian's rustc-web
//! toolchain (it ships rust-src, which `-Z build-std=core` needs; design §4) and bpf-linker.
//! The agent's build script embeds the object from [`paths::ebpf_object`].
use std::process::Command;

use anyhow::{Result, bail};

use elasti_testbed::{cmd, paths};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: &Args) -> Result<()> {
    build()
}

pub fn build() -> Result<()> {
    let linker = paths::bpf_linker_root().join("bin");
    if !linker.join("bpf-linker").is_file() {
        bail!(
            "build-ebpf: bpf-linker not found in {}; run `cargo xtask setup`",
            linker.display()
        );
    }
    let path = format!(
        "{}:{}",
        linker.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd::run(
        "build-ebpf",
        Command::new("cargo")
            .current_dir(paths::repo().join("ebpf"))
            .env("PATH", path)
            // Debian's rustc is stable; build-std is a nightly flag (design §4).
            .env("RUSTC_BOOTSTRAP", "1")
            .env_remove("RUSTC")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .args([&format!("+{}", paths::EBPF_TOOLCHAIN), "build", "--release"]),
    )?;
    let obj = paths::ebpf_object();
    if !obj.is_file() {
        bail!(
            "build-ebpf: cargo succeeded but {} is missing",
            obj.display()
        );
    }
    eprintln!("eBPF object: {}", obj.display());
    Ok(())
}
