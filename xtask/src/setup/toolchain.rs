//! The eBPF toolchain of design §4: Debian's rustc-web linked into rustup as `debian-web`,
//! and bpf-linker built against LLVM 22.
use std::process::Command;

use anyhow::{Result, bail};

use elasti_testbed::{cmd, paths};

pub fn ensure() -> Result<()> {
    let toolchains = cmd::output(
        "rustup toolchain list",
        Command::new("rustup").args(["toolchain", "list"]),
    )?;
    if !toolchains
        .lines()
        .any(|l| l.starts_with(paths::EBPF_TOOLCHAIN))
    {
        if !std::path::Path::new("/usr/bin/rustc").exists() {
            bail!("rustup toolchain link: /usr/bin/rustc missing; install rustc-web first");
        }
        cmd::run(
            "rustup toolchain link",
            Command::new("rustup").args(["toolchain", "link", paths::EBPF_TOOLCHAIN, "/usr"]),
        )?;
    }
    let root = paths::bpf_linker_root();
    if root.join("bin/bpf-linker").is_file() {
        eprintln!(
            "    bpf-linker {} cached at {}",
            paths::BPF_LINKER_VERSION,
            root.display()
        );
        return Ok(());
    }
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    cmd::run_logged(
        "build bpf-linker",
        Command::new("cargo")
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("PATH", path)
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                paths::BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--root"])
            .arg(&root),
        &root.with_extension("log"),
    )
}
