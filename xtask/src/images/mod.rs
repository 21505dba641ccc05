//! `cargo xtask images`: OCI image tarballs for the agent, the operator, the test workloads,
//! CoreDNS and pause, built without Docker and imported into the local cluster's
//! containerd when it is up. `deploy/docker/*.Dockerfile` build the same images with Docker.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cluster, cmd, paths};

mod oci;

use oci::{ImageFile, ImageSpec};

#[derive(clap::Args)]
pub struct Args {
    /// Only write the tarballs; do not import them even if the cluster is up.
    #[arg(long, default_value_t = false)]
    pub no_import: bool,
}

/// The Rust binaries that become images: (image name, binaries with the entrypoint first,
/// user). The agent runs as root with named capabilities only (see deploy/daemonset).
const RUST_IMAGES: &[(&str, &[&str], &str)] = &[
    ("elasti-agent", &["elasti-agent"], "0:0"),
    ("elasti-operator", &["elasti-operator"], "65532:65532"),
    // http-get is the client the suites `kubectl exec` in test pods (no shell or curl here).
    (
        "elasti-http-workload",
        &["http-workload", "http-get"],
        "65532:65532",
    ),
    ("elasti-tcp-echo", &["tcp-echo"], "65532:65532"),
];

pub fn run(args: &Args) -> Result<()> {
    let tarballs = build()?;
    if !args.no_import {
        if cluster::is_up() {
            cluster::import_images(&tarballs)?;
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
    cmd::run("build images: cargo build", &mut build)?;
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
    let pause = paths::pause_bin().join("pause");
    let coredns = paths::coredns_bin().join("coredns");
    for (image, bin, user) in [
        ("pause", &pause, "65535:65535"),
        ("coredns", &coredns, "0:0"),
    ] {
        if !bin.is_file() {
            bail!("images: {} missing; run `cargo xtask setup`", bin.display());
        }
        let dest = format!("/{image}");
        let files = vec![ImageFile {
            dest: dest.clone(),
            source: bin.clone(),
            mode: 0o755,
        }];
        tarballs.push(write(image, files, &dest, user, &out)?);
    }
    p.done();
    Ok(tarballs)
}

/// The reference an image is imported under; pause and CoreDNS keep their upstream names
/// so kubelet and manifests find them where they expect.
pub fn reference(image: &str) -> String {
    match image {
        "pause" => format!("registry.k8s.io/pause:{}", paths::PAUSE_VERSION),
        "coredns" => format!(
            "registry.k8s.io/coredns/coredns:v{}",
            paths::COREDNS_VERSION
        ),
        other => paths::image_ref(other),
    }
}

fn write(
    image: &str,
    files: Vec<ImageFile>,
    entrypoint: &str,
    user: &str,
    out: &Path,
) -> Result<PathBuf> {
    let spec = ImageSpec {
        reference: reference(image),
        files,
        entrypoint: vec![entrypoint.to_string()],
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
        user: user.into(),
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
