//! Where things live: the repository, the version-keyed cache outside it, and the kind
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
/// The Go `setup` fetches from the module proxy when none (or too old a one) is on PATH.
pub const GO_VERSION: &str = "1.26.8";
/// kind release, built from `sigs.k8s.io/kind` on the module proxy; its module zip also
/// carries the files of kind's base image (`images/base/files`).
pub const KIND_VERSION: &str = "0.33.0";
/// bpf-linker release known to work with LLVM 22 (design §4).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The rustup name under which Debian's rustc-web (which ships rust-src) is linked.
pub const EBPF_TOOLCHAIN: &str = "debian-web";
/// Tag of every image this repository builds.
pub const IMAGE_TAG: &str = "0.1.0";
/// Registry-like prefix of our images; never pulled (`imagePullPolicy: Never`).
pub const IMAGE_PREFIX: &str = "elasti.local";

/// Revision of the node image recipe (xtask/src/setup/node_image.rs); bump it when the
/// recipe changes so `setup` builds a new image instead of reusing the cached one.
pub const NODE_IMAGE_REVISION: u32 = 1;
/// kind's published node image for users with a Docker engine and a network: the v1.35
/// image built for kind v0.33.0 (its release notes; the digest pins the build).
pub const KINDEST_NODE_IMAGE: &str =
    "kindest/node:v1.35.8@sha256:07b2536e30b803ed61d1677a79df6115f798ce64c80f9e22f6ed45afd09323c0";

/// The workspace root (the parent of `testbed/`).
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

/// The node image `setup` builds from source for podman (no registry, no Docker here).
pub fn node_image() -> String {
    format!("{IMAGE_PREFIX}/kind-node:v{KUBERNETES_VERSION}-r{NODE_IMAGE_REVISION}")
}

/// Where `setup` keeps the node image's inputs (the debootstrap root filesystem).
pub fn node_image_work() -> PathBuf {
    cache().join(format!("kind-node-v{KUBERNETES_VERSION}"))
}

/// The kind cluster's files on this machine (configs, kubeconfig); removed by `down`.
pub fn cluster_state() -> PathBuf {
    repo().join("target/kind")
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

/// Where `setup` unpacks [`GO_VERSION`] when it has to.
pub fn go_root() -> PathBuf {
    cache().join(format!("go-{GO_VERSION}"))
}

/// nginx from Debian, unpacked (not installed: an installed nginx would start serving
/// port 80) by `setup` as the bench's peer reverse proxy. A link to the version unpacked.
pub fn nginx() -> PathBuf {
    cache().join("deb/nginx/usr/sbin/nginx")
}

pub fn kind_bin() -> PathBuf {
    cache().join(format!("kind-v{KIND_VERSION}/bin"))
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
