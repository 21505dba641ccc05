//! The ElastiService controller: each object is reconciled on its own requeue timer (and
//! at once when its Service, its EndpointSlices, the agents or the agents' reports
//! change), in three steps:
//!
//! - [`observe`]: the reads;
//! - [`decide`]: a pure function from what was observed and the time to everything to
//!   write;
//! - [`act`]: the writes, each on its own.
//!
//! [`agents`] and [`fallback`] are the agents the fallback slices list and the slices.
//! Cleanup (finalizer): scale a target left at zero back up, remove what elasti created,
//! release the ports; it always completes.
pub mod act;
pub mod agents;
pub mod decide;
pub mod fallback;
pub mod label;
pub mod observe;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use elasti_api::{ElastiService, FINALIZER, Mode, ProxyPort, endpoints};
use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{Namespace, Node, Pod, Service},
    api::discovery::v1::EndpointSlice,
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::Instrument;

pub use elasti_runtime::DisplayChain;

use crate::{
    fence::{Fence, Fenced},
    metrics::Metrics,
    ports::PortBook,
    scale::{self, Scaler, target},
    status,
    term::Leader,
    triggers::Prometheus,
};

/// A reconcile makes a handful of apiserver calls and at most one Prometheus query. The
/// kube client's read timeout is minutes long (it also serves watches), and the controller
/// runs one reconcile per object at a time: one stalled call would freeze that object's
/// mode and scaling. Past this, the reconcile is abandoned and retried.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(30);
/// How soon a failed reconcile is retried.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A read or write of a Kubernetes object failed (the apiserver may be down).
    #[error("{what}")]
    Api {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    /// Scaling the target failed.
    #[error(transparent)]
    Scale(#[from] scale::Error),
    /// Draining the Service, or taking the drain out, failed.
    #[error(transparent)]
    Drain(#[from] scale::drain::Error),
    /// Putting the managed label on the Service or its slices, or taking it off, failed.
    #[error(transparent)]
    Label(#[from] label::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The reconcile did not finish within [`RECONCILE_TIMEOUT`]; it is retried.
    #[error("reconcile took longer than {0:?}")]
    TimedOut(Duration),
    /// This replica stopped leading: the reconcile was dropped.
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// The proxy-port book's lock was poisoned by a panic.
    #[error("the proxy-port book is unusable")]
    PortBook,
}

impl Error {
    /// The `error` label of the reconcile-error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Api { .. } => "api",
            Self::Scale(_) => "scale",
            Self::Drain(_) => "drain",
            Self::Label(_) => "label",
            Self::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
            Self::TimedOut(_) => "timeout",
            Self::Fenced(_) => "fenced",
            Self::PortBook => "port_book",
        }
    }
}

fn api_err(what: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Api { what, source }
}

/// The controller's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often each ElastiService is looked at again without a change.
    pub poll_interval: Duration,
    /// `WATCH_NAMESPACES`; `None` for all.
    pub namespaces: Option<Vec<String>>,
    /// How long a scale-down waits for every Ready agent to report intercepting.
    pub intercept_timeout: Duration,
    /// How long a drained Service stays drained before `/scale` goes to 0.
    pub drain_delay: Duration,
    /// How long the finalizer tries to scale a target back up before it lets go.
    pub cleanup_deadline: Duration,
}

/// The agent pods and the nodes' zones, as watched.
#[derive(Clone)]
pub struct AgentsView {
    pub pods: Store<Pod>,
    pub nodes: Store<PartialObjectMeta<Node>>,
}

impl AgentsView {
    /// The Ready agents now.
    pub fn ready(&self) -> Vec<agents::AgentEndpoint> {
        let zones: BTreeMap<String, String> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| {
                let zone = n.labels().get(agents::ZONE_LABEL)?.clone();
                Some((n.name_any(), zone))
            })
            .collect();
        let pods = self.pods.state();
        agents::ready_agents(pods.iter().map(|p| p.as_ref()), &zones)
    }
}

pub struct Context {
    pub client: Client,
    pub scaler: Arc<Scaler>,
    pub prometheus: Prometheus,
    pub ports: Mutex<PortBook>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Every in-scope ElastiService.
    pub store: Store<ElastiService>,
    pub agents: AgentsView,
    pub leader: Leader,
    pub fence: Fence,
    pub drain_clock: scale::drain::Clock,
}

impl Context {
    fn in_scope(&self, namespace: &str) -> bool {
        self.settings
            .namespaces
            .as_ref()
            .is_none_or(|ns| ns.iter().any(|n| n == namespace))
    }
}

/// Runs the controller until `stop` resolves; reconciles under way then are dropped.
/// `pokes` asks for reconciles now (the agents' reports, the agents, the group).
pub async fn run(
    ctx: Arc<Context>,
    pokes: impl Stream<Item = ObjectRef<ElastiService>> + Send + 'static,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let store = ctx.store.clone();
    let naming = move |namespace: Option<String>, service: Option<String>| {
        let (Some(ns), Some(svc)) = (namespace, service) else {
            return Vec::new();
        };
        store
            .state()
            .iter()
            .filter(|es| {
                es.metadata.namespace.as_deref() == Some(ns.as_str()) && es.spec.service == svc
            })
            .map(|es| ObjectRef::from_obj(es.as_ref()))
            .collect::<Vec<_>>()
    };
    let by_service = naming.clone();
    let by_slice = naming;
    // Services: their metadata alone (a Service only says which ElastiService to look at),
    // cluster-wide, since one may be created after its ElastiService. Slices: only the
    // managed ones (the managed label; fallback slices carry it too).
    let services = after_first_listing(watcher(
        Api::<PartialObjectMeta<Service>>::all(client.clone()),
        watcher::Config::default(),
    ));
    let slices = after_first_listing(watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(endpoints::MANAGED_LABEL),
    ));
    let controller = Controller::new(
        Api::<ElastiService>::all(client),
        watcher::Config::default(),
    )
    .watches_stream(services, move |svc: PartialObjectMeta<Service>| {
        by_service(svc.namespace(), Some(svc.name_any()))
    })
    .watches_stream(slices, move |slice: EndpointSlice| {
        let service = slice.labels().get(endpoints::SERVICE_NAME_LABEL).cloned();
        by_slice(slice.namespace(), service)
    })
    .reconcile_on(pokes)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        use kube::runtime::controller::Error as ControllerError;
        match result {
            // Already logged by `error_policy`; an object deleted before its turn.
            Err(
                e @ (ControllerError::ReconcilerFailed(..) | ControllerError::ObjectNotFound(_)),
            ) => {
                tracing::debug!(error = %e, "reconcile skipped or failed");
            }
            // A watch failing (it is retried): the controller is blind until it recovers.
            Err(e) => tracing::warn!(error = %DisplayChain(&e), "controller stream error"),
            Ok(_) => {}
        }
    });
    // Dropping the controller drops the reconciles under way: a deposed leader stops
    // mid-reconcile rather than finishing writes its successor may contradict.
    tokio::select! {
        () = controller => {}
        () = stop => {}
    }
}

/// The objects `events` applies or deletes, once its first listing is over. At start-up
/// every ElastiService is reconciled from its own listing, so the related objects' first
/// listing would only repeat it: measured at five reconciles per ElastiService after a
/// restart, each three reads, which held the apiserver busy for half a minute with 600.
/// A later re-listing (after a watch expired) still counts: changes may hide in it.
fn after_first_listing<K, S>(events: S) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let mut listed = false;
    events.default_backoff().filter_map(move |event| {
        futures::future::ready(match event {
            Ok(event) => changed(&mut listed, event).map(Ok),
            Err(e) => Some(Err(e)),
        })
    })
}

/// The object `event` is about, unless it belongs to the first listing (`listed` says
/// whether that is over). Pure but for `listed`.
fn changed<K>(listed: &mut bool, event: watcher::Event<K>) -> Option<K> {
    match event {
        watcher::Event::InitDone => {
            *listed = true;
            None
        }
        watcher::Event::Init => None,
        watcher::Event::InitApply(_) if !*listed => None,
        watcher::Event::InitApply(o) | watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
            Some(o)
        }
    }
}

async fn reconcile(es: Arc<ElastiService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = es.namespace().unwrap_or_default();
    let span = tracing::info_span!("reconcile", namespace = %ns, elastiservice = %es.name_any());
    async move {
        if !ctx.in_scope(&ns) {
            return Ok(Action::await_change());
        }
        let started = Instant::now();
        let api: Api<ElastiService> = Api::namespaced(ctx.client.clone(), &ns);
        let reconciled = finalizer(&api, FINALIZER, es, |event| async {
            match event {
                Finalizer::Apply(es) => apply(&es, &ctx).await,
                Finalizer::Cleanup(es) => cleanup(&es, &ctx).await,
            }
        });
        let result = match ctx
            .fence
            .guard(tokio::time::timeout(RECONCILE_TIMEOUT, reconciled))
            .await
        {
            Ok(Ok(r)) => r.map_err(|e| Error::Finalizer(Box::new(e))),
            Ok(Err(_)) => Err(Error::TimedOut(RECONCILE_TIMEOUT)),
            Err(fenced) => Err(fenced.into()),
        };
        ctx.metrics.reconcile_done(
            started.elapsed(),
            result.as_ref().err().map(Error::metric_label),
        );
        result
    }
    .instrument(span)
    .await
}

fn error_policy(es: Arc<ElastiService>, error: &Error, _ctx: Arc<Context>) -> Action {
    if matches!(error, Error::Fenced(_)) {
        return Action::await_change();
    }
    tracing::warn!(
        namespace = %es.namespace().unwrap_or_default(),
        elastiservice = %es.name_any(),
        error = %DisplayChain(error),
        "reconcile failed; retrying in {RETRY:?}"
    );
    Action::requeue(RETRY)
}

async fn apply(es: &ElastiService, ctx: &Context) -> Result<Action, Error> {
    let (observed, took) = observe::observe(es, ctx).await?;
    let plan = decide::decide(es, &observed);
    act::act(es, plan, &took, ctx).await
}

/// The status fields a reconcile writes.
pub struct StatusUpdate {
    pub mode: Option<Mode>,
    pub proxy_ports: Vec<ProxyPort>,
    pub conditions: Vec<Condition>,
}

/// `lastReconciledTime` alone is refreshed after this many poll intervals. Each status
/// write is a watch event for every agent and one more reconcile here: refreshed every
/// poll, 1,000 ElastiServices cost 35 writes and 70 reconciles a second (`cargo xtask
/// bench`, the operator at scale), with nothing changed.
const RECONCILED_REFRESH_POLLS: u64 = 10;

/// Writes what changed. `lastReconciledTime` alone does not count as a change until it is
/// [`RECONCILED_REFRESH_POLLS`] poll intervals old, so a reconcile does not trigger
/// another through its own status write forever, and an idle fleet writes little.
async fn write_status(
    ctx: &Context,
    es: &ElastiService,
    new: StatusUpdate,
    now: Timestamp,
    took: &observe::Took,
) -> Result<(), Error> {
    let old = es.status.clone().unwrap_or_default();
    let refresh = ctx.settings.poll_interval.as_secs() * RECONCILED_REFRESH_POLLS;
    let stale = old
        .last_reconciled_time
        .as_ref()
        .is_none_or(|t| now.duration_since(t.0).as_secs() >= refresh as i64);
    let changed = old.mode != new.mode
        || old.proxy_ports != new.proxy_ports
        || old.conditions != new.conditions
        || old.observed_generation != es.metadata.generation;
    if !changed && !stale {
        return Ok(());
    }
    status::patch(
        &ctx.client,
        es,
        serde_json::json!({
            "mode": new.mode,
            "proxyPorts": new.proxy_ports,
            "conditions": new.conditions,
            "observedGeneration": es.metadata.generation,
            "lastReconciledTime": now,
        }),
    )
    .await
    .map_err(api_err("writing status"))?;
    log_transitions(&old, &new, took);
    Ok(())
}

/// One line per mode or condition that changed, once written: conditions keep whole
/// seconds, and these lines date each step (a scale-down's phases, a wake) to the
/// microsecond, with how long the reconcile that wrote it took and its reads.
fn log_transitions(
    old: &elasti_api::ElastiServiceStatus,
    new: &StatusUpdate,
    took: &observe::Took,
) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let reconcile_ms = ms(took.started.elapsed());
    let reads_ms = ms(took.reads);
    let triggers_ms = took.triggers.map(ms);
    if old.mode != new.mode {
        tracing::info!(from = ?old.mode, to = ?new.mode, reconcile_ms, reads_ms, triggers_ms, "mode changed");
    }
    for c in &new.conditions {
        let before = old.conditions.iter().find(|o| o.type_ == c.type_);
        if before.is_none_or(|b| b.status != c.status || b.reason != c.reason) {
            tracing::info!(condition = %c.type_, status = %c.status, reason = %c.reason, reconcile_ms, reads_ms, triggers_ms, "condition changed");
        }
    }
}

/// Whether `namespace` is being deleted (then nothing in it needs scaling back up).
async fn namespace_terminating(client: &Client, namespace: &str) -> bool {
    match Api::<Namespace>::all(client.clone())
        .get_opt(namespace)
        .await
    {
        Ok(Some(ns)) => ns.metadata.deletion_timestamp.is_some(),
        Ok(None) => true,
        Err(_) => false,
    }
}

/// The finalizer. It always completes: a target that cannot be scaled back up within the
/// cleanup deadline (or whose namespace is going away) is let go with a warning event,
/// and the fallback slices go with their owner anyway.
async fn cleanup(es: &ElastiService, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = (es.namespace().unwrap_or_default(), es.name_any());
    let now = Timestamp::now();
    let deleting_for = es
        .metadata
        .deletion_timestamp
        .as_ref()
        .map_or(Duration::ZERO, |t| {
            Duration::try_from(now.duration_since(t.0)).unwrap_or(Duration::ZERO)
        });
    let terminating = namespace_terminating(&ctx.client, &ns).await;
    let give_up = deleting_for >= ctx.settings.cleanup_deadline || terminating;
    ctx.fence.check()?;
    // A target left at zero goes back to minTargetReplicas; `up` leaves one that has
    // replicas alone, and a target that is gone needs nothing. In a namespace being
    // deleted the target goes too: scaling it up would only start pods to be killed.
    let scaled = if terminating {
        None
    } else {
        Some(ctx.scaler.up(es, "delete").await)
    };
    match scaled {
        None
        | Some(Ok(_))
        | Some(Err(scale::Error::Target(
            target::Error::NotFound { .. } | target::Error::KindNotServed { .. },
        ))) => {}
        Some(Err(e)) if give_up => {
            let msg = format!(
                "deleted without scaling the target back up: {}",
                DisplayChain(&e)
            );
            tracing::warn!(namespace = %ns, elastiservice = %name, "{msg}");
            ctx.scaler
                .event(es, EventType::Warning, "CleanupIncomplete", msg)
                .await;
        }
        Some(Err(e)) => return Err(e.into()),
    }
    ctx.fence.check()?;
    // An ElastiService deleted mid-drain (its target still up) leaves its Service
    // selecting its pods again; one in conflict never drained it and leaves it alone.
    let managing = !es.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == elasti_api::conditions::CONFLICT && c.status == "True")
    });
    if managing {
        if let Err(e) = scale::drain::restore(&ctx.client, &ns, &es.spec.service).await {
            if !give_up {
                return Err(e.into());
            }
            tracing::warn!(namespace = %ns, elastiservice = %name, error = %DisplayChain(&e), "the Service's drain left in");
        }
        ctx.drain_clock
            .drained_for((ns.clone(), es.spec.service.clone()), false);
        let uid = es.metadata.uid.as_deref().unwrap_or_default();
        if let Err(e) = label::unlabel(&ctx.client, &ns, &es.spec.service, uid).await {
            if !give_up {
                return Err(e.into());
            }
            tracing::warn!(namespace = %ns, elastiservice = %name, error = %DisplayChain(&e), "the managed label left on");
        }
    }
    if let Err(e) = fallback::sync(&ctx.client, &ns, &es.spec.service, Vec::new()).await {
        if !give_up {
            return Err(api_err("removing the fallback EndpointSlices")(e));
        }
        tracing::warn!(namespace = %ns, elastiservice = %name, error = %DisplayChain(&e), "fallback slices left to the garbage collector");
    }
    if let Ok(mut book) = ctx.ports.lock() {
        book.release(&(ns.clone(), name.clone()), now);
        ctx.metrics.proxy_ports.set(book.allocated() as i64);
    }
    tracing::info!(namespace = %ns, elastiservice = %name, "cleaned up");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_listing_triggers_nothing_and_later_changes_do() {
        use watcher::Event;
        let mut listed = false;
        let seen: Vec<Option<&str>> = [
            Event::Init,
            Event::InitApply("a"),
            Event::InitApply("b"),
            Event::InitDone,
            Event::Apply("a"),
            Event::Delete("b"),
            // A re-listing after the watch expired: what it carries may have changed.
            Event::Init,
            Event::InitApply("c"),
            Event::InitDone,
        ]
        .into_iter()
        .map(|e| changed(&mut listed, e))
        .collect();
        assert_eq!(
            seen,
            [
                None,
                None,
                None,
                None,
                Some("a"),
                Some("b"),
                None,
                Some("c"),
                None
            ]
        );
    }
}
