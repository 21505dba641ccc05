//! The Debian packages, installed only when missing.
use std::process::Command;

use anyhow::{Context, Result};

use elasti_testbed::{cmd, paths};

/// What the build, the test bed and the benchmarks use, and why.
pub const PACKAGES: &[&str] = &[
    // kind's provider here: rootful podman with runc (crun refuses this cgroup-v1 hybrid
    // host), netavark for its bridge, and Debian's CNI plugins for the node image
    "podman",
    "runc",
    "conmon",
    "fuse-overlayfs",
    "netavark",
    "aardvark-dns",
    "uidmap",
    "slirp4netns",
    "golang-github-containers-common",
    "containernetworking-plugins",
    // unpacking Go from the module proxy when the machine has none new enough
    "unzip",
    // the node image's root filesystem (Debian bookworm: systemd 252 still runs on cgroup v1)
    "debootstrap",
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
    let logs = paths::cache().join("apt");
    cmd::run_logged(
        "apt-get update",
        Command::new("apt-get").arg("update"),
        &logs.join("update.log"),
    )?;
    cmd::run_logged(
        "apt-get install",
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
        &logs.join("install.log"),
    )
}

/// Debian packages `setup` unpacks into the cache instead of installing: the bench's peer
/// reverse proxy (installed, Debian's nginx starts serving port 80 at once).
pub const UNPACKED: &[&str] = &["nginx"];

/// Unpacks `package`'s current Debian version into `<cache>/deb/<package>-<version>` (once
/// per version) and points `<cache>/deb/<package>` at it.
pub fn ensure_unpacked(package: &str) -> Result<()> {
    let show = cmd::output(
        "apt-cache show",
        Command::new("apt-cache").args(["show", "--no-all-versions", package]),
    )?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .with_context(|| format!("apt-cache show {package}: no Version"))?
        .trim()
        .to_string();
    let root = paths::cache().join("deb");
    let dir = root.join(format!("{package}-{version}"));
    let done = dir.join(".unpacked");
    if !done.exists() {
        let download = root.join("download");
        let _ = std::fs::remove_dir_all(&download);
        std::fs::create_dir_all(&download)?;
        cmd::output(
            "apt-get download",
            Command::new("apt-get")
                .current_dir(&download)
                .args(["download", &format!("{package}={version}")]),
        )?;
        let deb = std::fs::read_dir(&download)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download {package}: no .deb"))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        cmd::output(
            "dpkg-deb -x",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir),
        )?;
        std::fs::write(&done, &version)?;
        let _ = std::fs::remove_dir_all(&download);
    }
    let link = root.join(package);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&dir, &link)?;
    eprintln!("    {package} {version} unpacked at {}", link.display());
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}
