//! The Debian packages, installed only when missing.
use std::process::Command;

use anyhow::Result;

use crate::cmd;

/// What the build, the test bed and the benchmarks use, and why.
pub const PACKAGES: &[&str] = &[
    // container runtime and pod networking for the local kubelet
    "containerd",
    "runc",
    "containernetworking-plugins",
    // kube-proxy's data plane and its helpers; nsenter comes with util-linux
    "iptables",
    "nftables",
    "conntrack",
    "ethtool",
    "socat",
    "iproute2",
    "util-linux",
    // static pause binary
    "gcc",
    "libc6-dev",
    // eBPF: Debian's rustc 1.96 ships rust-src (build-std); bpf-linker links against LLVM 22
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    // benchmarks and the demo's scale-down trigger (curl: readiness and timed API calls)
    "curl",
    "wrk",
    "hey",
    "prometheus",
];

/// Installs whichever of `packages` are not installed yet.
pub fn ensure(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("    all {} packages present", packages.len());
        return Ok(());
    }
    eprintln!("    installing: {}", missing.join(" "));
    cmd::run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    cmd::run(
        "apt-get install",
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}
