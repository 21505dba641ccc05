//! The agent's main loop. Reflectors keep ElastiServices, Services and EndpointSlices in
//! memory; on every change (and when a hand-back grace ends) [`plan`] says which ports to
//! hold, and this module applies the difference:
//!
//! - a held port gets its listener **before** its map entries go in;
//! - its map entries come out **before** its listener closes;
//! - Ready endpoints go to the port's `watch` channel the moment the slice says so, which
//!   releases every waiter at once.
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use elasti_api::ElastiService;
use elasti_common::RewriteCounters;
use futures::StreamExt;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{Client, runtime::reflector::Store};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use elasti_runtime::{admin, reflect};

use crate::{
    config::Args,
    hold::{Endpoints, HeldService, ServiceId},
    intercept::{
        Interceptor,
        ids::IdAllocator,
        programs::{cgroup_id, cgroup2_mount},
        proxy_addr::ProxyInterface,
    },
    listen::{ProxyListener, bind_reuseport},
    metrics::Metrics,
    plan::{self, HeldPort},
    wake::{notify, readiness},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cgroup to attach at could not be found or is not the host's root.
    #[error("cgroup path: {0}")]
    Cgroup(String),
    /// Loading or attaching the eBPF programs failed.
    #[error("intercepting connects failed")]
    Intercept(#[from] crate::intercept::Error),
    /// The proxy address's link could not be made or removed.
    #[error("proxy address")]
    ProxyAddress(#[from] crate::intercept::proxy_addr::Error),
    /// No Kubernetes client could be built (no in-cluster env, no kubeconfig).
    #[error("building the Kubernetes client failed")]
    Client(#[source] kube::Error),
    /// The admin server could not bind.
    #[error("admin server on {addr} failed")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How often the eBPF rewrite counters are copied into /metrics: well under a typical
/// 30 s scrape interval, and a map read per held port costs microseconds.
const REWRITE_EXPORT_PERIOD: Duration = Duration::from_secs(10);

/// One port being held, with everything that lives as long as it does.
struct Active {
    plan: HeldPort,
    counter_id: u32,
    service: Arc<HeldService>,
    endpoints: watch::Sender<Endpoints>,
    listener: ProxyListener,
    /// When the port last got a Ready endpoint; `None` while it has none.
    ready_since: Option<Instant>,
    intercepting: bool,
    /// The eBPF counters as last exported to /metrics.
    exported: RewriteCounters,
}

/// Runs the agent until SIGTERM/SIGINT, then empties the maps, stops accepting, and
/// drains accepted connections.
pub async fn run(args: Args) -> Result<(), Error> {
    run_until(args, shutdown_signal()).await
}

/// [`run`], until `shutdown` resolves (tests run the agent in-process this way).
pub async fn run_until(
    args: Args,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let cgroup = resolve_cgroup(&args.cgroup_path)?;
    raise_fd_limit();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let registry = Arc::new(registry);
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let (addr, registry, ready) = (args.admin_address, registry.clone(), ready.clone());
        async move {
            if let Err(source) = admin::serve(addr, registry, ready).await {
                tracing::error!(error = %Error::Admin { addr, source }, "admin server stopped");
            }
        }
    });

    // The proxy address exists before any connect is steered to it.
    let proxy_interface = if args.proxy_interface.is_empty() {
        None
    } else {
        let link = ProxyInterface::ensure(&args.proxy_interface, args.proxy_address).await?;
        tracing::info!(link = link.name(), kind = ?link.kind, addr = %link.addr, "proxy address ready");
        Some(link)
    };
    let mut interceptor = Interceptor::attach(&cgroup)?;
    if let Some(logger) = interceptor.take_logger() {
        tokio::spawn(crate::intercept::programs::drain_logs(logger));
    }
    // The agent's own connects (to pods, to the operator) must never be steered.
    if let Ok(own) = own_cgroup_id() {
        interceptor.exclude_cgroup(own)?;
    }
    tracing::info!(cgroup = %cgroup.display(), proxy = %args.proxy_address, "eBPF programs attached");

    let client = Client::try_default().await.map_err(Error::Client)?;
    let (es_store, es_events) = reflect::<ElastiService>(&client, args.common.namespaces());
    let (svc_store, svc_events) = reflect::<Service>(&client, None);
    let (eps_store, eps_events) = reflect::<EndpointSlice>(&client, None);
    // Each watch runs on its own task and pokes the loop below on every change.
    let changed = Arc::new(tokio::sync::Notify::new());
    for events in [es_events, svc_events, eps_events] {
        let changed = changed.clone();
        tokio::spawn(events.for_each(move |()| {
            changed.notify_one();
            futures::future::ready(())
        }));
    }

    let active: Arc<Mutex<HashMap<ServiceId, watch::Receiver<Endpoints>>>> = Arc::default();
    let is_ready: notify::IsReady = {
        let active = active.clone();
        Arc::new(move |id| {
            active
                .lock()
                .map(|a| a.get(id).is_some_and(|rx| !rx.borrow().is_empty()))
                .unwrap_or(false)
        })
    };
    let notifier = Arc::new(notify::Notifier::spawn(
        notify::Config {
            operator_url: args.operator_url.clone(),
            token_path: args.token_path.clone(),
            give_up_after: args.limits().deadline,
        },
        is_ready,
        metrics.clone(),
    ));

    let mut state = State {
        held: HashMap::new(),
        ids: IdAllocator::default(),
        args: args.clone(),
        metrics: metrics.clone(),
        notifier,
        receivers: active,
        draining: Vec::new(),
    };
    let grace = Duration::from_millis(args.handback_grace_ms);
    tokio::pin!(shutdown);
    // Until every reflector has listed once, a missing object only means "not seen yet".
    let synced = tokio::select! {
        _ = async {
            let _ = es_store.wait_until_ready().await;
            let _ = svc_store.wait_until_ready().await;
            let _ = eps_store.wait_until_ready().await;
        } => true,
        () = &mut shutdown => false,
    };
    if synced {
        tracing::info!("watches synced");
        let mut next_check = state.sync(&mut interceptor, &es_store, &svc_store, &eps_store, grace);
        ready.store(true, Ordering::Release);
        let mut export = tokio::time::interval(REWRITE_EXPORT_PERIOD);
        loop {
            let wake_at = next_check.map(tokio::time::Instant::from_std);
            tokio::select! {
                () = changed.notified() => {}
                _ = export.tick() => {
                    state.export_rewrites(&interceptor);
                    continue;
                }
                () = async {
                    match wake_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = &mut shutdown => break,
            }
            next_check = state.sync(&mut interceptor, &es_store, &svc_store, &eps_store, grace);
        }
    }
    state
        .shutdown(
            &mut interceptor,
            Duration::from_secs(args.drain_timeout_secs),
            &eps_store,
        )
        .await;
    drop(interceptor);
    match proxy_interface {
        Some(link) if args.remove_interface_on_exit => link.remove().await?,
        Some(link) => {
            tracing::info!(link = link.name(), "proxy link left for the next agent");
        }
        None => {}
    }
    Ok(())
}

struct State {
    held: HashMap<ServiceId, Active>,
    ids: IdAllocator,
    args: Args,
    metrics: Arc<Metrics>,
    notifier: Arc<notify::Notifier>,
    receivers: Arc<Mutex<HashMap<ServiceId, watch::Receiver<Endpoints>>>>,
    /// Connection counters of listeners already closed, for the final drain.
    draining: Vec<Arc<AtomicUsize>>,
}

impl State {
    /// Brings listeners, endpoint channels and map entries in line with the stores.
    /// Returns when the next hand-back grace ends, if one is running.
    fn sync(
        &mut self,
        interceptor: &mut Interceptor,
        es: &Store<ElastiService>,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        grace: Duration,
    ) -> Option<Instant> {
        let all_es = es.state();
        let svc_state = services.state();
        let lookup = |ns: &str, name: &str| {
            svc_state
                .iter()
                .find(|s| {
                    s.metadata.namespace.as_deref() == Some(ns)
                        && s.metadata.name.as_deref() == Some(name)
                })
                .cloned()
        };
        let desired = plan::held_ports(all_es.iter().map(|e| e.as_ref()), lookup);

        // Gone: map entries out first, then the listener closes (accepted ones finish).
        let wanted: std::collections::HashSet<&ServiceId> = desired.iter().map(|h| &h.id).collect();
        let gone: Vec<ServiceId> = self
            .held
            .keys()
            .filter(|id| !wanted.contains(id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(mut a) = self.held.remove(&id) {
                release(interceptor, &mut a, &self.metrics);
                self.metrics.forget(&id);
                self.draining.push(a.listener.active());
                self.ids.release(&id);
                if let Ok(mut r) = self.receivers.lock() {
                    r.remove(&id);
                }
                tracing::info!(service = %id, "no longer managed; released");
            }
        }

        let now = Instant::now();
        let all_slices = slices.state();
        let mut next: Option<Instant> = None;
        for port in desired {
            let endpoints = port_endpoints(&all_slices, &port);
            let is_ready = !endpoints.is_empty();
            if !self.held.contains_key(&port.id) {
                match self.start(port.clone(), is_ready, now) {
                    Ok(a) => {
                        // The counter slot may have served an earlier port.
                        if let Err(e) = interceptor.reset_rewrites(a.counter_id) {
                            tracing::warn!(service = %port.id, error = %e, "resetting rewrite counters failed");
                        }
                        self.held.insert(port.id.clone(), a);
                    }
                    Err(e) => {
                        tracing::error!(service = %port.id, proxy_port = port.proxy_port, error = %e, "cannot listen; not holding");
                        continue;
                    }
                }
            }
            let Some(a) = self.held.get_mut(&port.id) else {
                continue;
            };
            if a.plan.cluster_addrs != port.cluster_addrs {
                // The Service's IPs changed: re-key the map entries.
                release(interceptor, a, &self.metrics);
                a.plan = port.clone();
            }
            a.endpoints.send_if_modified(|current| {
                if current[..] == endpoints[..] {
                    return false;
                }
                *current = endpoints.clone();
                true
            });
            match (is_ready, a.ready_since) {
                (true, None) => a.ready_since = Some(now),
                (false, Some(_)) => a.ready_since = None,
                _ => {}
            }
            let want = plan::intercept(a.ready_since, now, grace);
            if want && !a.intercepting {
                let proxy = SocketAddr::new(self.args.proxy_address, a.plan.proxy_port);
                let ok = a.plan.cluster_addrs.iter().all(|addr| {
                    interceptor
                        .hold(*addr, proxy, a.counter_id)
                        .map_err(|e| tracing::error!(service = %a.plan.id, %addr, error = %e, "map insert failed"))
                        .is_ok()
                });
                a.intercepting = ok;
                self.metrics.intercepting(&a.plan.id, ok);
                tracing::info!(service = %a.plan.id, %proxy, "holding: connects to the ClusterIP go to the agent");
            } else if !want && a.intercepting {
                release(interceptor, a, &self.metrics);
                tracing::info!(service = %a.plan.id, "handed back: connects take the normal path");
            }
            if let Some(since) = a.ready_since.filter(|_| a.intercepting) {
                let end = since + grace;
                next = Some(next.map_or(end, |n| n.min(end)));
            }
        }
        next
    }

    /// Adds what each held port's eBPF rewrite counters grew by to /metrics.
    fn export_rewrites(&mut self, interceptor: &Interceptor) {
        for a in self.held.values_mut() {
            let Ok(now) = interceptor.rewrites(a.counter_id) else {
                continue;
            };
            self.metrics.rewrites(
                &a.plan.id,
                now.connects.saturating_sub(a.exported.connects),
                now.peernames.saturating_sub(a.exported.peernames),
            );
            a.exported = now;
        }
    }

    /// Starts holding a port: listener first; the map entries follow in `sync`.
    fn start(&mut self, port: HeldPort, ready: bool, now: Instant) -> std::io::Result<Active> {
        let listener = bind_reuseport(SocketAddr::new(self.args.listen_address, port.proxy_port))?;
        let counter_id = self
            .ids
            .get_or_allocate(&port.id)
            .ok_or_else(|| std::io::Error::other("too many held ports for the eBPF counter map"))?;
        let (tx, rx) = watch::channel(Endpoints::from(Vec::new()));
        if let Ok(mut r) = self.receivers.lock() {
            r.insert(port.id.clone(), rx.clone());
        }
        let service = Arc::new(HeldService::new(
            port.id.clone(),
            rx,
            self.args.limits(),
            self.notifier.clone(),
            self.metrics.held_gauge(&port.id),
        ));
        let listener = ProxyListener::spawn(listener, service.clone(), self.metrics.clone())?;
        tracing::info!(service = %port.id, proxy_port = port.proxy_port, ready, "listening for held service");
        // A port already Ready when first seen (agent start, warm service) is not steered.
        let ready_since = ready.then(|| now.checked_sub(Duration::from_secs(3600)).unwrap_or(now));
        Ok(Active {
            plan: port,
            counter_id,
            service,
            endpoints: tx,
            listener,
            ready_since,
            intercepting: false,
            exported: RewriteCounters::default(),
        })
    }

    /// SIGTERM: empty the maps, stop accepting, let accepted connections finish. What is
    /// still held keeps waiting: its endpoints stay fed from the EndpointSlice watch, so it
    /// is forwarded the moment a pod is Ready (a rolling update of the agent loses nothing).
    async fn shutdown(
        mut self,
        interceptor: &mut Interceptor,
        drain: Duration,
        slices: &Store<EndpointSlice>,
    ) {
        for a in self.held.values_mut() {
            release(interceptor, a, &self.metrics);
        }
        let mut counters = std::mem::take(&mut self.draining);
        counters.extend(self.held.values().map(|a| a.listener.active()));
        let held: usize = self.held.values().map(|a| a.service.held()).sum();
        let feeds: Vec<(HeldPort, watch::Sender<Endpoints>, Arc<HeldService>)> = self
            .held
            .drain()
            .map(|(_, a)| {
                drop(a.listener);
                (a.plan, a.endpoints, a.service)
            })
            .collect();
        tracing::info!(
            held,
            "shutting down: maps emptied, listeners closed; draining"
        );
        let deadline = Instant::now() + drain;
        while counters.iter().any(|c| c.load(Ordering::Acquire) > 0) && Instant::now() < deadline {
            let all_slices = slices.state();
            for (plan, endpoints, _) in &feeds {
                let now = port_endpoints(&all_slices, plan);
                endpoints.send_if_modified(|current| {
                    let changed = current[..] != now[..];
                    if changed {
                        *current = now;
                    }
                    changed
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Each held connection costs two descriptors (client and pod), and runtimes often start
/// containers with a soft limit of 1024: raise it to the hard limit, as Go programs do.
/// (`elasti-bench`, which holds as many, calls it too.)
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-files limit"),
            Err(e) => tracing::warn!(error = %e, soft, "could not raise the open-files limit"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not read the open-files limit"),
    }
}

/// The Ready endpoints of a held port, from the EndpointSlices the watch holds.
fn port_endpoints(slices: &[Arc<EndpointSlice>], port: &HeldPort) -> Endpoints {
    readiness::ready_endpoints(
        slices
            .iter()
            .filter(|s| readiness::belongs_to(s, &port.id.namespace, &port.id.name))
            .map(|s| s.as_ref()),
        &port.port_name,
    )
    .into()
}

/// Takes the port's map entries out: new connects go where they were aimed.
fn release(interceptor: &mut Interceptor, a: &mut Active, metrics: &Metrics) {
    a.intercepting = false;
    metrics.intercepting(&a.plan.id, false);
    for addr in &a.plan.cluster_addrs {
        if let Err(e) = interceptor.release(*addr) {
            tracing::error!(service = %a.plan.id, %addr, error = %e, "map delete failed");
        }
    }
}

/// The cgroup to attach at: the flag's path, or with `auto` the host's cgroup v2 root.
///
/// A path that is not itself on a cgroup2 filesystem but holds one at `unified/` (the
/// host's `/sys/fs/cgroup` of a cgroup v1 hybrid host, mounted as the DaemonSet's hostPath)
/// resolves to that, so one chart value serves pure v2 and hybrid nodes.
fn resolve_cgroup(flag: &str) -> Result<PathBuf, Error> {
    if flag != "auto" {
        let p = PathBuf::from(flag);
        return [p.clone(), p.join("unified")]
            .into_iter()
            .find(|c| is_cgroup2(c))
            .ok_or_else(|| {
                Error::Cgroup(format!(
                    "{flag} is not a cgroup v2 directory and holds none at unified/"
                ))
            });
    }
    let root = cgroup2_mount().ok_or_else(|| {
        Error::Cgroup("no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified".into())
    })?;
    match cgroup_id(root) {
        // The root cgroup's id is 1; anything else means we see a namespaced view.
        Ok(1) => Ok(root.to_path_buf()),
        Ok(id) => Err(Error::Cgroup(format!(
            "{} has cgroup id {id}, not 1: the agent needs the host's cgroup namespace (hostPID/cgroupns host)",
            root.display()
        ))),
        Err(e) => Err(Error::Cgroup(format!("{}: {e}", root.display()))),
    }
}

/// Whether `dir` is a directory of a cgroup2 filesystem (a v1 hierarchy has
/// `cgroup.procs` too, so the file alone does not tell).
fn is_cgroup2(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// This process's cgroup v2 id, from `/proc/self/cgroup`'s `0::<path>` line.
fn own_cgroup_id() -> std::io::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/");
    let root = cgroup2_mount().ok_or_else(|| std::io::Error::other("no cgroup v2 mount"))?;
    cgroup_id(&root.join(rel.trim_start_matches('/')))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostpath_of_sys_fs_cgroup_resolves_to_its_v2_hierarchy() {
        let Some(v2) = cgroup2_mount() else {
            eprintln!("SKIPPED: this machine has no cgroup v2 mount");
            return;
        };
        // The chart's default hostPath is the node's /sys/fs/cgroup: on a hybrid host the
        // v2 hierarchy is at unified/ below it, on a pure v2 host it is that folder.
        let resolved = resolve_cgroup("/sys/fs/cgroup").expect("resolves");
        assert_eq!(resolved, v2);
        assert!(is_cgroup2(&resolved));
        // A v1 hierarchy has cgroup.procs too, but is refused.
        if Path::new("/sys/fs/cgroup/cpu/cgroup.procs").exists() {
            assert!(resolve_cgroup("/sys/fs/cgroup/cpu").is_err());
        }
        assert!(resolve_cgroup("/nonexistent").is_err());
    }
}
