//! `--kind`: the same suites against a kind cluster, for users with Docker and a network.
//! **Unverified here:** these machines have no Docker engine, so this path has never run
//! on them. It uses the same images (loaded from the same tarballs) and the same test
//! binary as the local cluster.
use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{cmd, paths};

pub const NAME: &str = "elasti-e2e";

/// Where `up` writes the kind cluster's kubeconfig.
pub fn kubeconfig() -> PathBuf {
    paths::repo().join("target/kind/kubeconfig")
}

pub fn up(tarballs: &[PathBuf]) -> Result<()> {
    if !cmd::have("kind") || !cmd::have("docker") {
        bail!("--kind needs `kind` and `docker` on PATH (not available on elasti's CI machines)");
    }
    let kc = kubeconfig();
    if let Some(dir) = kc.parent() {
        std::fs::create_dir_all(dir)?;
    }
    cmd::run(
        "kind create cluster",
        Command::new("kind")
            .args([
                "create",
                "cluster",
                "--name",
                NAME,
                "--wait",
                "180s",
                "--kubeconfig",
            ])
            .arg(&kc),
    )?;
    for t in tarballs {
        // kind nodes bring their own pause and CoreDNS.
        let name = t
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == "pause" || name == "coredns" {
            continue;
        }
        cmd::run(
            "kind load image-archive",
            Command::new("kind")
                .args(["load", "image-archive", "--name", NAME])
                .arg(t),
        )?;
    }
    Ok(())
}

pub fn down() -> Result<()> {
    cmd::run(
        "kind delete cluster",
        Command::new("kind").args(["delete", "cluster", "--name", NAME]),
    )
}

/// A command that runs against the kind cluster (no network namespace needed).
pub fn in_cluster(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("KUBECONFIG", kubeconfig())
        .env("ELASTI_CLUSTER", "kind");
    c
}
