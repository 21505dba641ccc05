//! Loading the embedded eBPF object, attaching its programs to a cgroup v2, and the maps.
use std::{
    fs::File,
    net::SocketAddr,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap, MapData, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr},
};
use elasti_common::{Activity, CONFIG_INDEX, Config, ProxyTarget, RewriteCounters, ServiceKey};

use super::keys;

/// The sock_addr programs in the object, in the order they are attached.
pub const PROGRAMS: [&str; 4] = ["connect4", "connect6", "getpeername4", "getpeername6"];
/// The sock program that sees counted sockets close, attached after [`PROGRAMS`].
pub const RELEASE_PROGRAM: &str = "sock_release";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent was built without `cargo xtask build-ebpf`.
    #[error(
        "this agent was built without its eBPF object; run `cargo xtask build-ebpf` and rebuild"
    )]
    NotEmbedded,
    /// The kernel or aya refused the object.
    #[error("loading the eBPF object failed")]
    Load(#[source] aya::EbpfError),
    /// A program named in [`PROGRAMS`] is missing from the object.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// A map the programs use is missing from the object.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// A map has another type than this agent expects.
    #[error("map {name} has an unexpected type")]
    MapType {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The verifier or the kernel refused a program.
    #[error("loading program {name} failed")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The cgroup directory could not be opened.
    #[error("opening cgroup {path} failed")]
    OpenCgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Attaching a program to the cgroup failed.
    #[error("attaching program {name} failed")]
    Attach {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Writing or reading a map entry failed.
    #[error("updating map {name} failed")]
    MapUpdate {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// A map descriptor could not be duplicated or adopted (handed between the supervisor
    /// and the worker).
    #[error("handing over map {name} failed")]
    MapFd {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The eBPF object embedded at build time, if `cargo xtask build-ebpf` ran before the build.
pub fn embedded_object() -> Option<&'static [u8]> {
    #[cfg(elasti_ebpf_embedded)]
    {
        Some(aya::include_bytes_aligned!(env!("ELASTI_EBPF_OBJECT")))
    }
    #[cfg(not(elasti_ebpf_embedded))]
    {
        None
    }
}

/// The kernel's `BPF_NOEXIST` map update flag: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// How many maps are handed over by descriptor.
pub const MAP_COUNT: usize = 4;
/// The names of the maps handed over by descriptor, in [`Interceptor::map_fds`] order.
pub const MAPS: [&str; MAP_COUNT] = ["SERVICES", "CONFIG", "REWRITES", "ACTIVITY"];

/// The attached programs and their maps. The programs stay attached while this lives;
/// dropping it detaches them (fail-open: connects then go where they were aimed). A worker
/// whose supervisor owns the programs has the maps only ([`Interceptor::from_map_fds`]).
pub struct Interceptor {
    // Keeps the programs and their links alive (absent in a supervised worker).
    _ebpf: Option<Ebpf>,
    /// The programs' aya-log ring buffer, until [`Interceptor::take_logger`] hands it to a
    /// drain task. It must outlive program loading: dropping it closes the map.
    logger: Option<EbpfLogger>,
    services: HashMap<MapData, ServiceKey, ProxyTarget>,
    config: Array<MapData, Config>,
    rewrites: PerCpuArray<MapData, RewriteCounters>,
    activity: HashMap<MapData, ServiceKey, Activity>,
}

impl Interceptor {
    /// Loads the embedded object and attaches every program to the cgroup v2 directory
    /// `cgroup`.
    ///
    /// # Errors
    /// When the object is missing, the kernel refuses a program, or the cgroup can't be
    /// opened.
    pub fn attach(cgroup: &Path) -> Result<Self, Error> {
        let object = embedded_object().ok_or(Error::NotEmbedded)?;
        let mut ebpf = Ebpf::load(object).map_err(Error::Load)?;
        let logger = aya_log::EbpfLogger::init(&mut ebpf)
            .map_err(|e| tracing::warn!(error = %e, "eBPF debug logs unavailable"))
            .ok();
        let dir = File::open(cgroup).map_err(|source| Error::OpenCgroup {
            path: cgroup.display().to_string(),
            source,
        })?;
        for name in PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram(name))?
                .try_into()
                .map_err(|source| Error::LoadProgram { name, source })?;
            prog.load()
                .map_err(|source| Error::LoadProgram { name, source })?;
            // On kernels with bpf_link (5.7+) aya attaches through a link, which always
            // coexists with other tools' programs (Cilium, meshes); the kernel refuses the
            // legacy ALLOW_MULTI flag on link_create, so Single is the right mode here.
            prog.attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| Error::Attach { name, source })?;
        }
        let name = RELEASE_PROGRAM;
        let release: &mut CgroupSock = ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::LoadProgram { name, source })?;
        release
            .load()
            .map_err(|source| Error::LoadProgram { name, source })?;
        release
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|source| Error::Attach { name, source })?;
        let services = take_map(&mut ebpf, "SERVICES")?;
        let config = take_map(&mut ebpf, "CONFIG")?;
        let rewrites = take_map(&mut ebpf, "REWRITES")?;
        let activity = take_map(&mut ebpf, "ACTIVITY")?;
        Ok(Self {
            _ebpf: Some(ebpf),
            logger,
            services,
            config,
            rewrites,
            activity,
        })
    }

    /// Duplicates of the maps' descriptors, in [`MAPS`] order, for another process (the
    /// worker of this supervisor, or a watchdog) to adopt.
    pub fn map_fds(&self) -> Result<[OwnedFd; MAP_COUNT], Error> {
        let dup = |name: &'static str, fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(|source| Error::MapFd { name, source })
        };
        Ok([
            dup(MAPS[0], self.services.map().fd().as_fd())?,
            dup(MAPS[1], self.config.map().fd().as_fd())?,
            dup(MAPS[2], self.rewrites.map().fd().as_fd())?,
            dup(MAPS[3], self.activity.map().fd().as_fd())?,
        ])
    }

    /// The maps of programs another process keeps attached, from their descriptors in
    /// [`MAPS`] order.
    pub fn from_map_fds(fds: [OwnedFd; MAP_COUNT]) -> Result<Self, Error> {
        let [services, config, rewrites, activity] = fds;
        fn adopt<T>(name: &'static str, fd: OwnedFd) -> Result<T, Error>
        where
            T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
        {
            let data = MapData::from_fd(fd).map_err(|source| Error::MapType { name, source })?;
            let map = aya::maps::Map::from_map_data(data)
                .map_err(|source| Error::MapType { name, source })?;
            T::try_from(map).map_err(|source| Error::MapType { name, source })
        }
        Ok(Self {
            _ebpf: None,
            logger: None,
            services: adopt(MAPS[0], services)?,
            config: adopt(MAPS[1], config)?,
            rewrites: adopt(MAPS[2], rewrites)?,
            activity: adopt(MAPS[3], activity)?,
        })
    }

    /// The ClusterIP:ports connects are steered for now.
    pub fn held_addrs(&self) -> Vec<SocketAddr> {
        self.services
            .keys()
            .filter_map(Result::ok)
            .map(|k| keys::service_addr(&k))
            .collect()
    }

    /// Puts `entry` in for every one of `services`, or for none: an entry that went in
    /// before a later one failed is taken out again.
    pub fn hold_all(
        &mut self,
        services: &[SocketAddr],
        entry: keys::Entry,
        service_id: u32,
    ) -> Result<(), Error> {
        for (i, addr) in services.iter().enumerate() {
            if let Err(e) = self.hold(*addr, entry, service_id) {
                for done in &services[..i] {
                    let _ = self.release(*done);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Takes every entry out: no connect is steered any more (the watchdog's fail-open).
    /// Returns how many were removed.
    pub fn clear(&mut self) -> usize {
        let held = self.held_addrs();
        held.iter().filter(|a| self.release(**a).is_ok()).count()
    }

    /// The programs' log ring buffer (their `debug!` lines), for a task to drain into
    /// `log`/`tracing` (see [`drain_logs`]).
    pub fn take_logger(&mut self) -> Option<EbpfLogger> {
        self.logger.take()
    }

    /// Steers (or only counts) TCP connects to `service` (a ClusterIP:port) as `entry`
    /// says.
    ///
    /// A steering entry's listener must already accept: connects are steered the moment
    /// this returns. A counting entry's counts are in place before it is.
    pub fn hold(
        &mut self,
        service: SocketAddr,
        entry: keys::Entry,
        service_id: u32,
    ) -> Result<(), Error> {
        if entry.counts() {
            self.ensure_activity(service)?;
        }
        self.services
            .insert(
                keys::service_key(service),
                keys::proxy_target(entry, service_id),
                0,
            )
            .map_err(|source| Error::MapUpdate {
                name: "SERVICES",
                source,
            })
    }

    /// Stops steering (and counting) connects to `service`; new connects take the normal
    /// path again. Removing an entry that is not there is not an error.
    pub fn release(&mut self, service: SocketAddr) -> Result<(), Error> {
        let key = keys::service_key(service);
        absent_is_fine(self.services.remove(&key)).map_err(|source| Error::MapUpdate {
            name: "SERVICES",
            source,
        })?;
        // Its counts go too: counted again later, it starts a new generation.
        absent_is_fine(self.activity.remove(&key)).map_err(|source| Error::MapUpdate {
            name: "ACTIVITY",
            source,
        })
    }

    /// Creates the counts of `service` unless they exist (a restarted worker keeps its
    /// predecessor's).
    fn ensure_activity(&mut self, service: SocketAddr) -> Result<(), Error> {
        let key = keys::service_key(service);
        if self.activity.get(&key, 0).is_ok() {
            return Ok(());
        }
        let fresh = Activity {
            generation: keys::generation(),
            ..Activity::default()
        };
        match self.activity.insert(key, fresh, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            // Made meanwhile by someone else: theirs counts.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(nix::libc::EEXIST) =>
            {
                Ok(())
            }
            Err(source) => Err(Error::MapUpdate {
                name: "ACTIVITY",
                source,
            }),
        }
    }

    /// The connection counts of a counted ClusterIP:port, if it is counted.
    pub fn activity(&self, service: SocketAddr) -> Option<Activity> {
        self.activity.get(&keys::service_key(service), 0).ok()
    }

    /// Removes counts no map entry refers to any more (left by a crashed predecessor).
    /// Returns how many were removed.
    pub fn drop_stale_activity(&mut self) -> usize {
        let stale: Vec<ServiceKey> = self
            .activity
            .keys()
            .filter_map(Result::ok)
            .filter(|k| self.services.get(k, 0).is_err())
            .collect();
        stale
            .iter()
            .filter(|k| self.activity.remove(k).is_ok())
            .count()
    }

    /// Never steer connects made from the cgroup v2 with this id (the agent's own), so the
    /// agent can always reach real endpoints.
    pub fn exclude_cgroup(&mut self, cgroup_id: u64) -> Result<(), Error> {
        self.config
            .set(
                CONFIG_INDEX,
                Config {
                    agent_cgroup_id: cgroup_id,
                },
                0,
            )
            .map_err(|source| Error::MapUpdate {
                name: "CONFIG",
                source,
            })
    }

    /// Zeroes the rewrite counters of `service_id`, so an id reused for another port
    /// starts from nothing.
    pub fn reset_rewrites(&mut self, service_id: u32) -> Result<(), Error> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::MapUpdate {
            name: "REWRITES",
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error: e,
            }),
        })?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![RewriteCounters::default(); cpus])
            .map_err(|e| Error::MapUpdate {
                name: "REWRITES",
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "per_cpu_values",
                    io_error: e,
                }),
            })?;
        self.rewrites
            .set(service_id, zeros, 0)
            .map_err(|source| Error::MapUpdate {
                name: "REWRITES",
                source,
            })
    }

    /// Rewrite counters for `service_id`, summed over CPUs.
    pub fn rewrites(&self, service_id: u32) -> Result<RewriteCounters, Error> {
        let per_cpu = self
            .rewrites
            .get(&service_id, 0)
            .map_err(|source| Error::MapUpdate {
                name: "REWRITES",
                source,
            })?;
        Ok(per_cpu
            .iter()
            .fold(RewriteCounters::default(), |acc, c| RewriteCounters {
                connects: acc.connects.wrapping_add(c.connects),
                peernames: acc.peernames.wrapping_add(c.peernames),
            }))
    }
}

/// The aya-log handle of the programs, forwarding to the `log` facade (and so to tracing).
pub type EbpfLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Forwards the programs' log lines as they arrive, until the ring buffer fails.
pub async fn drain_logs(logger: EbpfLogger) {
    // `with_interest` is deprecated because a caller could close the fd while it is
    // registered; here the AsyncFd owns the logger, and with it the fd, for its whole life.
    #[allow(deprecated)]
    let Ok(mut fd) = tokio::io::unix::AsyncFd::with_interest(logger, tokio::io::Interest::READABLE)
    else {
        return;
    };
    while let Ok(mut guard) = fd.readable_mut().await {
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// The host's cgroup v2 mount: `/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup`
/// on pure v2 ones (`cgroup.controllers` exists only in v2); `None` without cgroup v2.
pub fn cgroup2_mount() -> Option<&'static Path> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.controllers").exists())
}

/// The cgroup v2 id of a cgroup directory: its inode number on the cgroup2 filesystem.
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// A delete of a key that is not there succeeded as far as the caller is concerned (aya
/// reports it as `KeyNotFound` or as the syscall's `ENOENT`).
fn absent_is_fine(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(nix::libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(|source| Error::MapType { name, source })
}
