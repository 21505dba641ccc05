//! The agent's worker loop: **observe** (reflectors keep ElastiServices, Services and
//! EndpointSlices in memory; each held service counts its waiters), **decide**
//! ([`crate::plan::Machine`], pure), **act** (this module: listeners, map entries,
//! endpoint feeds, wakes). It runs under the supervisor (`crate::supervisor`), which keeps
//! its sockets and programs across crashes, or alone (the in-process suites).
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use elasti_api::ElastiService;
use elasti_common::RewriteCounters;
use futures::StreamExt;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Client,
    runtime::reflector::{ObjectRef, Store},
};
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, Semaphore, watch};

use elasti_runtime::{DisplayChain, admin, reflect_stripped};

use crate::{
    config::Args,
    health::{self, Health},
    hold::{Budget, Endpoints, HeldService, ServiceId},
    intercept::{
        Interceptor,
        ids::IdAllocator,
        keys::Entry,
        programs::{cgroup_id, cgroup2_mount},
        proxy_addr::ProxyInterface,
    },
    listen::{Caps, Conn, Context, Host, ProxyListener},
    metrics::Metrics,
    operator::{self, OperatorClient},
    plan::{self, Action, HeldPort, Machine, Observed, Settings},
    report::{self, Reporter},
    supervisor::{
        self,
        client::{Resumed, Supervisor},
    },
    wake::{notify, readiness},
    watches,
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
    /// The supervisor could not be reached.
    #[error("connecting to the supervisor failed")]
    Supervisor(#[from] supervisor::client::Error),
    /// The supervisor's descriptor is not usable.
    #[error("the supervisor's descriptor")]
    SupervisorFd(#[source] std::io::Error),
}

/// How often the eBPF rewrite counters are copied into /metrics: well under a typical
/// 30 s scrape interval, and a map read per held port costs microseconds.
const REWRITE_EXPORT_PERIOD: Duration = Duration::from_secs(10);

/// How often counts are read for reports: the operator learns of activity within about a
/// second (`elasti_api::report`).
const REPORT_PERIOD: Duration = elasti_api::report::REPORT_INTERVAL;

/// A service port the machine knows, with everything that lives as long as it does.
struct Active {
    service: Arc<HeldService>,
    endpoints: watch::Sender<Endpoints>,
    /// The last plan of it seen, so its endpoints can be fed after it stops being managed.
    plan: HeldPort,
    counter_id: u32,
    /// The eBPF counters as last exported to /metrics.
    exported: RewriteCounters,
    /// The `probeResponse` rules `service` answers with, as in the spec.
    probe_source: Vec<elasti_api::ProbeRule>,
}

/// Runs the agent until SIGTERM/SIGINT: as the worker of a supervisor when started by one,
/// else alone.
pub async fn run(args: Args) -> Result<(), Error> {
    run_until(args, shutdown_signal()).await
}

/// [`run`], until `shutdown` resolves (tests run the agent in-process this way).
pub async fn run_until(
    args: Args,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    raise_fd_limit();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let registry = Arc::new(registry);
    let health = Health::new();
    let probes: Option<SocketAddr> = args.health_address.parse().ok();
    for addr in std::iter::once(args.admin_address).chain(probes) {
        let (registry, health) = (registry.clone(), health.clone());
        tokio::spawn(async move {
            if let Err(source) = admin::serve(addr, registry, health).await {
                let e = Error::Admin { addr, source };
                tracing::error!(error = %DisplayChain(&e), "admin server stopped");
            }
        });
    }

    // Supervised, the supervisor owns the link, the programs and the listeners; alone, the
    // worker makes its own.
    let (host, mut interceptor, proxy_interface, resumed) = match args.supervisor_fd {
        Some(fd) => {
            let fd = supervisor::inherited(fd).map_err(Error::SupervisorFd)?;
            let (sup, maps, resumed) = Supervisor::connect(fd).await?;
            let interceptor = Interceptor::from_map_fds(maps)?;
            tracing::info!("worker: connected to the supervisor");
            (
                Host::Supervised(Arc::new(sup)),
                interceptor,
                None,
                Some(resumed),
            )
        }
        None => {
            let cgroup = resolve_cgroup(&args.cgroup_path)?;
            let link = if args.proxy_interface.is_empty() {
                None
            } else {
                let link =
                    ProxyInterface::ensure(&args.proxy_interface, args.proxy_address).await?;
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
            let host = Host::Standalone {
                listen_address: args.listen_address,
            };
            (host, interceptor, link, None)
        }
    };
    enable_tcp_migrate_req(&args.tcp_migrate_req_path);
    if let Err(e) = interceptor
        .map_fds()
        .and_then(Interceptor::from_map_fds)
        .map_err(|e| std::io::Error::other(DisplayChain(&e).to_string()))
        .and_then(|maps| health::spawn_watchdog(health.clone(), maps))
    {
        tracing::warn!(error = %e, "no watchdog: a stalled agent would not clear its maps");
    }

    let client = Client::try_default().await.map_err(Error::Client)?;
    // Every object stripped to what the agent reads (`crate::watches`): no `managedFields`.
    // Services and slices: only the managed ones (`watches::MANAGED`), so the stores and
    // the work per event grow with the managed services, not with the cluster.
    let (es_store, es_events) = reflect_stripped::<ElastiService>(
        &client,
        args.common.namespaces(),
        None,
        watches::strip_elastiservice,
    );
    let (svc_store, svc_events) = reflect_stripped::<Service>(
        &client,
        None,
        Some(watches::MANAGED),
        watches::strip_service,
    );
    let (eps_store, eps_events) = reflect_stripped::<EndpointSlice>(
        &client,
        None,
        Some(watches::MANAGED),
        watches::strip_slice,
    );
    // Each watch runs on its own task, pokes the loop on every change and reports its
    // health.
    let changed = Arc::new(Notify::new());
    for (i, events) in [es_events, svc_events, eps_events].into_iter().enumerate() {
        let (changed, health) = (changed.clone(), health.clone());
        tokio::spawn(async move {
            let mut events = events;
            while let Some(event) = events.next().await {
                if let Err(e) = &event {
                    tracing::warn!(watch = health::WATCHES[i], error = %DisplayChain(e), "watch failed; retrying");
                }
                health.watched(i, event.is_ok());
                changed.notify_one();
            }
            health.watch_ended(i);
        });
    }

    let operator_client = OperatorClient::new(operator::Config {
        operator_url: args.operator_url.clone(),
        token_path: args.token_path.clone(),
    });
    let dropped = interceptor.drop_stale_activity();
    if dropped > 0 {
        tracing::info!(
            entries = dropped,
            "removed connection counts an earlier agent left"
        );
    }
    let mut io = Io {
        held: HashMap::new(),
        listeners: BTreeMap::new(),
        contexts: HashMap::new(),
        ids: IdAllocator::default(),
        budget: Arc::new(Budget::new(args.max_held_total, args.max_held_bytes)),
        caps: Caps {
            per_listener: args.max_connections_per_port,
            node: Arc::new(Semaphore::new(args.max_connections)),
        },
        args: args.clone(),
        metrics: metrics.clone(),
        notifier: notify::Notifier::new(operator_client.clone(), metrics.clone()),
        reporter: Reporter::new(operator_client, node_name(&args), incarnation(&args)),
        host,
        changed: changed.clone(),
    };
    let mut machine = Machine::new(Settings {
        grace: Duration::from_millis(args.handback_grace_ms),
        hold_timeout: args.limits().deadline,
        rewake: Duration::from_secs(args.rewake_secs.max(1)),
        proxy_ports: args.proxy_ports.clone(),
    });
    machine.adopt(interceptor.held_addrs());

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
    let stores = Stores {
        es: es_store,
        services: svc_store,
        slices: eps_store,
    };
    let mut resumed = resumed;
    if synced {
        tracing::info!("watches synced");
        let mut next = io
            .step(&mut machine, &mut interceptor, &stores, false)
            .await
            .next;
        if let Host::Supervised(s) = &io.host {
            s.synced().await;
        }
        health.set_ready();
        let mut export = tokio::time::interval(REWRITE_EXPORT_PERIOD);
        let mut report_tick = tokio::time::interval(REPORT_PERIOD);
        loop {
            health.beat();
            let wake_at = next.map(tokio::time::Instant::from_std);
            tokio::select! {
                () = changed.notified() => {}
                _ = export.tick() => {
                    io.export_rewrites(&interceptor);
                    continue;
                }
                _ = report_tick.tick() => {
                    io.report(&machine, &interceptor);
                    continue;
                }
                Some(r) = async {
                    match resumed.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    io.resume(r);
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
            next = io
                .step(&mut machine, &mut interceptor, &stores, false)
                .await
                .next;
        }
    }

    // SIGTERM: out of the path at once, then what is held stays fed (the EndpointSlice
    // watch keeps running) until it is answered or the drain ends.
    let deadline = Instant::now() + args.drain_timeout();
    let held: usize = io.held.values().map(|a| a.service.held()).sum();
    tracing::info!(held, drain = ?args.drain_timeout(), "shutting down: out of the path, draining");
    loop {
        let d = io.step(&mut machine, &mut interceptor, &stores, true).await;
        if d.finished || Instant::now() >= deadline {
            break;
        }
        health.beat();
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    // Nothing is held any more, but what was released may still be on its way: an answer
    // the pod has not sent yet, a TCP splice. Exiting now would cut them off mid-forward;
    // they end by themselves (HTTP with its first answer), by the deadline at the latest.
    let in_flight = || args.max_connections - io.caps.node.available_permits();
    while in_flight() > 0 && Instant::now() < deadline {
        health.beat();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(cut_off = in_flight(), "drained");
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

struct Stores {
    es: Store<ElastiService>,
    /// Services, stripped.
    services: Store<Service>,
    /// EndpointSlices, stripped.
    slices: Store<EndpointSlice>,
}

/// The worker's side effects, applied as the machine decides.
struct Io {
    held: HashMap<ServiceId, Active>,
    /// Open listeners by proxy port, with the service they serve.
    listeners: BTreeMap<u16, (ServiceId, ProxyListener)>,
    /// The connection context of every proxy port listened on since its service appeared,
    /// for connections the supervisor hands back after the listener closed.
    contexts: HashMap<u16, Context>,
    ids: IdAllocator,
    budget: Arc<Budget>,
    caps: Caps,
    args: Args,
    metrics: Arc<Metrics>,
    notifier: Arc<notify::Notifier>,
    reporter: Arc<Reporter>,
    host: Host,
    changed: Arc<Notify>,
}

impl Io {
    /// Observe, decide, act, once.
    async fn step(
        &mut self,
        machine: &mut Machine,
        interceptor: &mut Interceptor,
        stores: &Stores,
        draining: bool,
    ) -> plan::Decision {
        let observed = self.observe(stores, draining);
        let decision = machine.decide(&observed, Instant::now());
        for action in decision.actions.clone() {
            self.apply(action, machine, interceptor).await;
        }
        self.sync_probe_rules(machine);
        // A change of interception is news for a pending scale-down at once.
        self.report(machine, interceptor);
        decision
    }

    /// What the stores show now: Services looked up by key, slices indexed once by Service.
    fn observe(&self, stores: &Stores, draining: bool) -> Observed {
        let all_es = stores.es.state();
        let ports = plan::held_ports(all_es.iter().map(|e| e.as_ref()), |ns, name| {
            stores.services.get(&ObjectRef::new(name).within(ns))
        });
        let slices = stores.slices.state();
        let by_service = slices_by_service(&slices);
        let mut ready = HashMap::new();
        for p in ports.iter().chain(self.held.values().map(|a| &a.plan)) {
            ready
                .entry(p.id.clone())
                .or_insert_with(|| port_endpoints(&by_service, p));
        }
        let held = self
            .held
            .iter()
            .map(|(id, a)| (id.clone(), a.service.held()))
            .collect();
        Observed {
            ports,
            ready,
            held,
            draining,
        }
    }

    /// The service `id` (created the first time the machine names it).
    fn active(&mut self, id: &ServiceId, plan: Option<&HeldPort>) -> Option<&mut Active> {
        if !self.held.contains_key(id) {
            let plan = plan?.clone();
            let counter_id = self.ids.get_or_allocate(id)?;
            let (tx, rx) = watch::channel(Endpoints::from(Vec::new()));
            let changed = self.changed.clone();
            let service = Arc::new(HeldService::new(
                id.clone(),
                rx,
                self.args.limits(),
                self.budget.clone(),
                Arc::new(move || changed.notify_one()),
                self.metrics.held_gauge(id),
            ));
            self.held.insert(
                id.clone(),
                Active {
                    service,
                    endpoints: tx,
                    plan,
                    counter_id,
                    exported: RewriteCounters::default(),
                    probe_source: Vec::new(),
                },
            );
        }
        self.held.get_mut(id)
    }

    async fn apply(
        &mut self,
        action: Action,
        machine: &mut Machine,
        interceptor: &mut Interceptor,
    ) {
        match action {
            Action::Listen {
                service,
                proxy_port,
            } => {
                let plan = machine.plan_of(&service).cloned();
                let Some(active) = self.active(&service, plan.as_ref()) else {
                    tracing::error!(%service, "too many held ports for the eBPF counter map; not holding");
                    self.metrics.refused(&service, "TooManyPorts");
                    machine.listen_failed(&service);
                    return;
                };
                let counter_id = active.counter_id;
                let held_service = active.service.clone();
                if let Err(e) = interceptor.reset_rewrites(counter_id) {
                    tracing::warn!(%service, error = %DisplayChain(&e), "resetting rewrite counters failed");
                }
                let ctx = Context {
                    service: held_service,
                    metrics: self.metrics.clone(),
                    host: self.host.clone(),
                    proxy_port,
                };
                let listener = match self.host.listener(proxy_port).await {
                    Ok(l) => ProxyListener::spawn(l, ctx.clone(), &self.caps),
                    Err(e) => Err(e),
                };
                match listener {
                    Ok(l) => {
                        tracing::info!(%service, proxy_port, "listening for the held service");
                        self.contexts.insert(proxy_port, ctx);
                        self.listeners.insert(proxy_port, (service, l));
                    }
                    Err(e) => {
                        tracing::error!(%service, proxy_port, error = %e, "cannot listen; not holding");
                        self.metrics.refused(&service, "BindFailed");
                        machine.listen_failed(&service);
                    }
                }
            }
            Action::Map {
                service,
                addrs,
                proxy_port,
                count,
            } => {
                if self
                    .listeners
                    .get(&proxy_port)
                    .is_none_or(|(owner, _)| *owner != service)
                {
                    // Its listener failed to open: nothing is steered to a closed port.
                    return;
                }
                let Some(counter_id) = self.held.get(&service).map(|a| a.counter_id) else {
                    return;
                };
                let proxy = SocketAddr::new(self.args.proxy_address, proxy_port);
                let entry = Entry::Steer { proxy, count };
                match interceptor.hold_all(&addrs, entry, counter_id) {
                    Ok(()) => {
                        self.metrics.intercepting(&service, true);
                        tracing::info!(%service, %proxy, counted = count, "holding: connects to the ClusterIP go to the agent");
                    }
                    Err(e) => {
                        tracing::error!(%service, error = %DisplayChain(&e), "map insert failed; nothing of it left in; retrying at the next decision");
                        machine.map_failed(&service);
                    }
                }
            }
            Action::Count { service, addrs } => {
                let plan = machine.plan_of(&service).cloned();
                let Some(counter_id) = self.active(&service, plan.as_ref()).map(|a| a.counter_id)
                else {
                    tracing::error!(%service, "too many ports for the eBPF counter map; not counting");
                    machine.map_failed(&service);
                    return;
                };
                match interceptor.hold_all(&addrs, Entry::CountOnly, counter_id) {
                    Ok(()) => {
                        self.metrics.intercepting(&service, false);
                        tracing::info!(%service, "out of the path, counted: connects take the normal path");
                    }
                    Err(e) => {
                        tracing::error!(%service, error = %DisplayChain(&e), "count-only map insert failed; retrying at the next decision");
                        machine.map_failed(&service);
                    }
                }
            }
            Action::Unmap { service, addrs } => {
                for addr in &addrs {
                    if let Err(e) = interceptor.release(*addr) {
                        tracing::error!(%service, %addr, error = %DisplayChain(&e), "map delete failed");
                    }
                }
                self.metrics.intercepting(&service, false);
                tracing::info!(%service, "out of the path: connects take the normal path");
            }
            Action::Clear { addrs } => {
                for addr in &addrs {
                    let _ = interceptor.release(*addr);
                }
                tracing::info!(
                    entries = addrs.len(),
                    "removed map entries an earlier agent left"
                );
            }
            Action::Close {
                service,
                proxy_port,
            } => {
                if self
                    .listeners
                    .get(&proxy_port)
                    .is_some_and(|(owner, _)| *owner == service)
                {
                    self.listeners.remove(&proxy_port);
                    self.host.closed(proxy_port).await;
                    tracing::info!(%service, proxy_port, "listener closed");
                }
            }
            Action::Feed { service, endpoints } => {
                let plan = machine.plan_of(&service).cloned();
                if let Some(a) = self.active(&service, plan.as_ref()) {
                    if let Some(p) = plan {
                        a.plan = p;
                    }
                    // The moment a cold service's held connections go to its pods (the
                    // bench dates the release by this line).
                    if a.endpoints.borrow().is_empty() && !endpoints.is_empty() {
                        tracing::info!(%service, endpoints = endpoints.len(), held = a.service.held(), "endpoints Ready: what is held goes to the pods");
                    }
                    a.endpoints.send_replace(endpoints);
                }
            }
            Action::Wake { service } => self.notifier.wake(service),
            Action::Fail { service, reason } => {
                if let Some(a) = self.held.get(&service) {
                    tracing::warn!(%service, ?reason, held = a.service.held(), "answering what is held without a pod");
                    a.service.fail();
                }
            }
            Action::Forget { service } => {
                if self.held.remove(&service).is_some() {
                    self.ids.release(&service);
                    self.metrics.forget(&service);
                    self.contexts.retain(|_, c| c.service.id() != &service);
                    tracing::info!(%service, "no longer managed; released");
                }
            }
            Action::Refuse {
                service,
                proxy_port,
                reason,
            } => {
                tracing::warn!(%service, proxy_port, ?reason, "not holding this service port");
                self.metrics.refused(&service, refusal_label(&reason));
            }
        }
    }

    /// A connection the supervisor kept for this worker's predecessor.
    fn resume(&mut self, r: Resumed) {
        let Host::Supervised(sup) = &self.host else {
            return;
        };
        let kept = sup.resumed(r.id);
        let _ = r.stream.set_nonblocking(true);
        let (Ok(stream), Some(ctx)) = (
            tokio::net::TcpStream::from_std(r.stream),
            self.contexts.get(&r.port),
        ) else {
            tracing::warn!(
                id = r.id,
                port = r.port,
                "a kept connection for a port no longer held; closed"
            );
            return;
        };
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        let conn = Conn {
            stream,
            peer,
            kept: Some(kept),
        };
        match self.listeners.get(&r.port) {
            Some((_, l)) => l.inject(conn),
            None => {
                // Not listened on any more (its service is Ready): served all the same.
                crate::listen::listener::serve_one(conn, ctx.clone(), &self.caps.node);
            }
        }
    }

    /// Compiles the `probeResponse` rules of every service whose spec changed them. A rule
    /// that cannot be used never matches (as in KubeElasti); the others still answer.
    fn sync_probe_rules(&mut self, machine: &Machine) {
        for (plan, _) in machine.ports() {
            let Some(a) = self.held.get_mut(&plan.id) else {
                continue;
            };
            if a.probe_source == plan.probe_response {
                continue;
            }
            let (rules, problems) = elasti_api::probe::CompiledRules::lenient(&plan.probe_response);
            for e in &problems {
                tracing::warn!(service = %plan.id, error = %DisplayChain(e), "a probeResponse rule never matches");
            }
            a.service.set_probe_rules(rules);
            a.probe_source = plan.probe_response.clone();
        }
    }

    /// Offers the reporter what this agent counts and intercepts now.
    fn report(&self, machine: &Machine, interceptor: &Interceptor) {
        let mut snapshot = report::Snapshot::new();
        for (plan, steering) in machine.ports() {
            if !plan.count && !steering {
                continue;
            }
            let entry = snapshot
                .entry((plan.id.namespace.clone(), plan.id.name.clone()))
                .or_insert_with(|| elasti_api::report::ServiceReport {
                    namespace: plan.id.namespace.clone(),
                    service: plan.id.name.clone(),
                    connects: 0,
                    open: 0,
                    intercepting: false,
                });
            entry.intercepting |= steering;
            if plan.count {
                for addr in &plan.cluster_addrs {
                    if let Some(a) = interceptor.activity(*addr) {
                        entry.connects = entry.connects.saturating_add(a.connects);
                        entry.open = entry
                            .open
                            .saturating_add(a.tracked.saturating_sub(a.released));
                    }
                }
            }
        }
        self.reporter.offer(snapshot, Instant::now());
    }

    /// Adds what each held port's eBPF rewrite counters grew by to /metrics.
    fn export_rewrites(&mut self, interceptor: &Interceptor) {
        for (id, a) in &mut self.held {
            let Ok(now) = interceptor.rewrites(a.counter_id) else {
                continue;
            };
            self.metrics.rewrites(
                id,
                now.connects.saturating_sub(a.exported.connects),
                now.peernames.saturating_sub(a.exported.peernames),
            );
            a.exported = now;
        }
    }
}

/// This agent's node name, for its reports.
fn node_name(args: &Args) -> String {
    if !args.node_name.is_empty() {
        return args.node_name.clone();
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// This agent process's identity in its reports: counters restart from zero with it.
fn incarnation(args: &Args) -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{}/{started}", args.pod_uid)
}

fn refusal_label(r: &plan::Refusal) -> &'static str {
    match r {
        plan::Refusal::OutOfRange => "OutOfRange",
        plan::Refusal::PortTaken { .. } => "PortTaken",
        plan::Refusal::TargetNotFound => "TargetNotFound",
    }
}

/// `net.ipv4.tcp_migrate_req = 1`: when a `SO_REUSEPORT` listener closes (the old agent of
/// a rolling update), the connects queued on it move to another listener of the same port
/// (the new agent's) instead of being reset.
fn enable_tcp_migrate_req(path: &Path) {
    if !path.exists() {
        tracing::info!(path = %path.display(), "no tcp_migrate_req here; a closing listener's queue is not migrated");
        return;
    }
    match std::fs::write(path, b"1") {
        Ok(()) => tracing::info!("net.ipv4.tcp_migrate_req = 1"),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not set tcp_migrate_req")
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

/// The EndpointSlices of pods (not elasti's fallback slices) by `(namespace, service)`.
type SlicesByService<'a> = HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>;

fn slices_by_service(slices: &[Arc<EndpointSlice>]) -> SlicesByService<'_> {
    let mut by: SlicesByService<'_> = HashMap::new();
    for s in slices {
        let (Some(ns), Some(svc)) = (
            s.metadata.namespace.as_deref(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(readiness::SERVICE_NAME_LABEL)),
        ) else {
            continue;
        };
        if readiness::belongs_to(s, ns, svc) {
            by.entry((ns, svc.as_str())).or_default().push(s.as_ref());
        }
    }
    by
}

/// The Ready endpoints of a held port, from the EndpointSlices the watch holds.
fn port_endpoints(slices: &SlicesByService<'_>, port: &HeldPort) -> Endpoints {
    let of_service = slices
        .get(&(port.id.namespace.as_str(), port.id.name.as_str()))
        .map(Vec::as_slice)
        .unwrap_or_default();
    readiness::ready_endpoints(of_service.iter().copied(), &port.port_name).into()
}

/// The cgroup to attach at: the flag's path, or with `auto` the host's cgroup v2 root.
///
/// A path that is not itself on a cgroup2 filesystem but holds one at `unified/` (the
/// host's `/sys/fs/cgroup` of a cgroup v1 hybrid host, mounted as the DaemonSet's hostPath)
/// resolves to that, so one chart value serves pure v2 and hybrid nodes.
pub(crate) fn resolve_cgroup(flag: &str) -> Result<PathBuf, Error> {
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
pub(crate) fn own_cgroup_id() -> std::io::Result<u64> {
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
