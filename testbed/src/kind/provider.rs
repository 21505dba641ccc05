//! Which container engine runs the kind nodes, and how to call it.
//!
//! - **Podman** (these machines: no Docker engine, no registry, no network). Rootful
//!   Debian podman with runc, run inside [`crate::netns`] so the nodes' bridge and NAT live
//!   only there, with the node image `setup` builds from source.
//! - **Docker** (a developer machine with a Docker engine and a network): kind's published
//!   `kindest/node` image and kind's own CNI. Not available on elasti's CI machines, so this
//!   path is exercised only where Docker runs.
use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::{cmd, netns, paths};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Podman,
    Docker,
}

/// podman's settings for this host: runc (crun 1.8 refuses a cgroup v1 hybrid host:
/// "cgroups in hybrid mode not supported"), ulimits this sandbox can grant (it lacks
/// CAP_SYS_RESOURCE: podman's rootful defaults nofile=1048576 and nproc=4194304 are refused),
/// cgroupfs (no systemd is PID 1 here) and file events (no journald).
const CONTAINERS_CONF: &str = r#"# Written by elasti's test bed (testbed/src/kind/provider.rs).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"#;

impl Provider {
    /// Docker when an engine answers, else podman. `ELASTI_KIND_PROVIDER=podman|docker`
    /// overrides.
    pub fn detect() -> Self {
        match std::env::var("ELASTI_KIND_PROVIDER").as_deref() {
            Ok("docker") => return Self::Docker,
            Ok("podman") => return Self::Podman,
            _ => {}
        }
        let docker_engine = cmd::have("docker")
            && cmd::succeeds(Command::new("docker").args(["info", "--format", "{{.ID}}"]));
        if docker_engine {
            Self::Docker
        } else {
            Self::Podman
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Podman => "podman",
            Self::Docker => "docker",
        }
    }

    /// Why this provider was chosen, for the README's "which path ran" and the logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Podman => {
                "no Docker engine answers: rootful podman in netns elasti-kind, with the node image built from source by `setup`"
            }
            Self::Docker => "a Docker engine answers: kind's published kindest/node image",
        }
    }

    /// The node image kind starts.
    pub fn node_image(self) -> String {
        match self {
            Self::Podman => paths::node_image(),
            Self::Docker => paths::KINDEST_NODE_IMAGE.to_string(),
        }
    }

    /// `program` with this provider's environment, inside the cluster's network namespace
    /// for podman.
    pub fn command(self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = match self {
            Self::Podman => netns::command(program),
            Self::Docker => Command::new(program),
        };
        let path = format!(
            "{}:{}:{}:{}",
            paths::kubernetes_bin().display(),
            paths::helm_bin().display(),
            paths::kind_bin().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path);
        if self == Self::Podman {
            c.env("KIND_EXPERIMENTAL_PROVIDER", "podman")
                .env("CONTAINERS_CONF", containers_conf());
        }
        c
    }

    /// The engine's own CLI (`podman …` / `docker …`).
    pub fn engine(self) -> Command {
        self.command(self.name())
    }

    /// `kind …`.
    pub fn kind(self) -> Command {
        self.command(paths::kind_bin().join("kind"))
    }

    /// Writes podman's settings file (a fresh copy each time: it is derived, not state).
    pub fn prepare(self) -> Result<()> {
        if self == Self::Podman {
            let path = containers_conf();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, CONTAINERS_CONF)?;
        }
        Ok(())
    }
}

/// podman's `containers.conf` for the test bed, passed through `CONTAINERS_CONF`.
pub fn containers_conf() -> PathBuf {
    paths::cache().join("podman/containers.conf")
}
