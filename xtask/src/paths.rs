//! Where things live: the repository, the version-keyed cache outside it, and the local
//! cluster's state. Every pinned version is here.
use std::path::PathBuf;

/// Kubernetes release built from the Go module proxy (design §3).
pub const KUBERNETES_VERSION: &str = "1.35.4";
/// etcd release; Debian's 3.4 is below what Kubernetes 1.35 supports.
pub const ETCD_VERSION: &str = "3.6.16";
/// CoreDNS release, built with only the plugins the cluster uses.
pub const COREDNS_VERSION: &str = "1.14.7";
/// The pause image tag Kubernetes 1.35 expects.
pub const PAUSE_VERSION: &str = "3.10.1";
/// Helm, built from `helm.sh/helm/v3/cmd/helm` on the module proxy.
pub const HELM_VERSION: &str = "3.22.0";
/// bpf-linker release known to work with LLVM 22 (design §4).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The rustup name under which Debian's rustc-web (which ships rust-src) is linked.
pub const EBPF_TOOLCHAIN: &str = "debian-web";
/// Tag of every image this repository builds.
pub const IMAGE_TAG: &str = "0.1.0";
/// Registry-like prefix of our images; never pulled (`imagePullPolicy: Never`).
pub const IMAGE_PREFIX: &str = "elasti.local";

/// The workspace root (the parent of `xtask/`).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The version-keyed cache shared by every checkout on this machine.
pub fn cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("ELASTI_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/elasti")
}

pub fn kubernetes_bin() -> PathBuf {
    cache().join(format!("kubernetes-v{KUBERNETES_VERSION}/bin"))
}

pub fn etcd_bin() -> PathBuf {
    cache().join(format!("etcd-v{ETCD_VERSION}/bin"))
}

pub fn coredns_bin() -> PathBuf {
    cache().join(format!("coredns-v{COREDNS_VERSION}/bin"))
}

pub fn helm_bin() -> PathBuf {
    cache().join(format!("helm-v{HELM_VERSION}/bin"))
}

pub fn pause_bin() -> PathBuf {
    cache().join(format!("pause-{PAUSE_VERSION}/bin"))
}

pub fn bpf_linker_root() -> PathBuf {
    cache().join(format!("bpf-linker-{BPF_LINKER_VERSION}"))
}

/// Where `cargo xtask images` writes OCI tarballs.
pub fn image_dir() -> PathBuf {
    repo().join("target/images")
}

/// The eBPF object `cargo xtask build-ebpf` produces and the agent embeds.
pub fn ebpf_object() -> PathBuf {
    repo().join("target/bpfel-unknown-none/release/elasti")
}

/// A full image reference for one of our images.
pub fn image_ref(name: &str) -> String {
    format!("{IMAGE_PREFIX}/{name}:{IMAGE_TAG}")
}
