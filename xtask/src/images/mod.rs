//! `cargo xtask images`: OCI image tarballs for the agent, the operator and the test
//! workloads, built without Docker and loaded into the kind cluster when it is up
//! (`kind load image-archive`). `deploy/docker/*.Dockerfile` build the same images with
//! Docker. The node image's own component images are written here too
//! (xtask/src/setup/node_image.rs).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use elasti_testbed::{cmd, kind, paths};

pub mod oci;

use oci::{ImageFile, ImageSpec};

#[derive(clap::Args)]
pub struct Args {
    /// Only write the tarballs; do not load them even if the cluster is up.
    #[arg(long, default_value_t = false)]
    pub no_import: bool,
}

/// The Rust binaries that become images: (image name, binaries with the entrypoint first,
/// user). The agent runs as root with named capabilities only (see deploy/daemonset).
const RUST_IMAGES: &[(&str, &[&str], &str)] = &[
    ("elasti-agent", &["elasti-agent"], "0:0"),
    ("elasti-operator", &["elasti-operator"], "65532:65532"),
    // http-get (and conn-flood, an abusive client) are what the suites `kubectl exec` in test
    // pods (no shell or curl here).
    (
        "elasti-http-workload",
        &["http-workload", "http-get", "conn-flood"],
        "65532:65532",
    ),
    ("elasti-tcp-echo", &["tcp-echo"], "65532:65532"),
];

pub fn run(args: &Args) -> Result<()> {
    let tarballs = build()?;
    if !args.no_import {
        if let Ok(cluster) = kind::Cluster::discover() {
            cluster.load_images(&tarballs)?;
        } else {
            eprintln!(
                "cluster is not up; tarballs left in {}",
                paths::image_dir().display()
            );
        }
    }
    Ok(())
}

/// Builds every image and returns the tarballs.
pub fn build() -> Result<Vec<PathBuf>> {
    let p = cmd::Progress::start("cargo build --release (agent, operator, workloads)");
    let mut build = Command::new("cargo");
    build
        .current_dir(paths::repo())
        .args(["build", "--release", "--locked"]);
    for pkg in ["elasti-agent", "elasti-operator", "elasti-workloads"] {
        build.args(["-p", pkg]);
    }
    cmd::run_logged(
        "cargo build --release",
        &mut build,
        &paths::image_dir().join("cargo-build.log"),
    )?;
    p.done();

    let p = cmd::Progress::start("write OCI tarballs");
    let out = paths::image_dir();
    let mut tarballs = Vec::new();
    for (image, binaries, user) in RUST_IMAGES {
        let mut files = Vec::new();
        for binary in *binaries {
            let bin = paths::repo().join("target/release").join(binary);
            files.extend(shared_libraries(&bin)?);
            files.push(ImageFile {
                dest: format!("/usr/local/bin/{binary}"),
                source: bin,
                mode: 0o755,
            });
        }
        files.sort_by(|a, b| a.dest.cmp(&b.dest));
        files.dedup_by(|a, b| a.dest == b.dest);
        tarballs.push(write(
            image,
            files,
            &format!("/usr/local/bin/{}", binaries[0]),
            user,
            &out,
        )?);
    }
    p.done();
    Ok(tarballs)
}

/// The image tarballs already built (loaded by `cluster up`).
pub fn existing() -> Vec<PathBuf> {
    std::fs::read_dir(paths::image_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "tar"))
                .collect()
        })
        .unwrap_or_default()
}

/// pause or CoreDNS, from the binaries `setup` builds, under their upstream names so
/// kubelet and kubeadm find them where they expect.
pub fn upstream_image(name: &str, out: &Path) -> Result<PathBuf> {
    let (bin, reference, user) = match name {
        "pause" => (
            paths::pause_bin().join("pause"),
            format!("registry.k8s.io/pause:{}", paths::PAUSE_VERSION),
            "65535:65535",
        ),
        "coredns" => (
            paths::coredns_bin().join("coredns"),
            format!(
                "registry.k8s.io/coredns/coredns:v{}",
                paths::COREDNS_VERSION
            ),
            "0:0",
        ),
        other => bail!("images: no upstream image {other}"),
    };
    if !bin.is_file() {
        bail!("images: {} missing; run `cargo xtask setup`", bin.display());
    }
    write_binary_image(
        &reference,
        &bin,
        &format!("/{name}"),
        user,
        None,
        &out.join(format!("{name}.tar")),
    )
}

/// An image holding one binary at `dest` (its entrypoint), optionally on `base_layer`.
pub fn write_binary_image(
    reference: &str,
    bin: &Path,
    dest: &str,
    user: &str,
    base_layer: Option<&Path>,
    out: &Path,
) -> Result<PathBuf> {
    let spec = ImageSpec {
        reference: reference.to_string(),
        files: vec![ImageFile {
            dest: dest.to_string(),
            source: bin.to_path_buf(),
            mode: 0o755,
        }],
        entrypoint: vec![dest.to_string()],
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into()],
        user: user.into(),
        base_layer: base_layer.map(Path::to_path_buf),
    };
    oci::write(&spec, out).with_context(|| format!("image {reference}"))?;
    eprintln!("    {reference} -> {}", out.display());
    Ok(out.to_path_buf())
}

fn write(
    image: &str,
    files: Vec<ImageFile>,
    entrypoint: &str,
    user: &str,
    out: &Path,
) -> Result<PathBuf> {
    let spec = ImageSpec {
        reference: paths::image_ref(image),
        files,
        entrypoint: vec![entrypoint.to_string()],
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
        user: user.into(),
        base_layer: None,
    };
    let path = out.join(format!("{image}.tar"));
    oci::write(&spec, &path).with_context(|| format!("image {image}"))?;
    eprintln!("    {} -> {}", spec.reference, path.display());
    Ok(path)
}

/// The dynamic libraries `bin` needs, at the same paths as on this (Debian) host, so the
/// image needs no base image.
fn shared_libraries(bin: &Path) -> Result<Vec<ImageFile>> {
    let out = cmd::output("ldd", Command::new("ldd").arg(bin))?;
    let mut files = Vec::new();
    for line in out.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(ImageFile {
                dest: p.to_string(),
                source: PathBuf::from(p),
                mode: 0o755,
            });
        }
    }
    Ok(files)
}
