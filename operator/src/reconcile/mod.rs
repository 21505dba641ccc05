//! The ElastiService controller: each object is reconciled on its own requeue timer.
//!
//! Apply: allocate proxy ports, read the target's replicas and the Service's Ready
//! endpoints (mode), publish or remove the fallback slice, decide whether to scale
//! ([`crate::scale::verdict`]), and record why in the status conditions.
//! Cleanup (finalizer): scale a target left at zero back up, remove what elasti created,
//! release the ports.
pub mod fallback;

use std::{sync::Arc, sync::Mutex, time::Duration};

use elasti_api::{ElastiService, FINALIZER, Mode, ProxyPort, endpoints};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
        reflector::{ObjectRef, Store},
        watcher,
    },
};

pub use elasti_runtime::DisplayChain;

use crate::{
    metrics::{Metrics, ReconcileResult},
    ports::{PortBook, ServicePort},
    scale::{
        Scaler, target,
        verdict::{self, Idleness, Inputs, Reason, Step, Verdict},
    },
    status,
    triggers::Prometheus,
};

/// A reconcile makes a handful of apiserver calls and at most one Prometheus query. The
/// kube client's read timeout is minutes long (it also serves watches), and the controller
/// runs one reconcile per object at a time: one stalled call would freeze that object's
/// mode and scaling. Past this, the reconcile is abandoned and retried.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(30);

/// Added to a verdict's recheck time (a cooldown's end) before requeueing, so the timer
/// does not fire a hair early and find the cooldown still pending. Small, because the
/// scale-down at the cooldown's end waits for it.
const RECHECK_MARGIN: Duration = Duration::from_millis(10);

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
    Scale(#[from] crate::scale::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The reconcile did not finish within [`RECONCILE_TIMEOUT`]; it is retried.
    #[error("reconcile took longer than {0:?}")]
    TimedOut(Duration),
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
    pub agents: fallback::Agents,
}

pub struct Context {
    pub client: Client,
    pub scaler: Arc<Scaler>,
    pub prometheus: Prometheus,
    pub ports: Mutex<PortBook>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
}

impl Context {
    fn in_scope(&self, namespace: &str) -> bool {
        self.settings
            .namespaces
            .as_ref()
            .is_none_or(|ns| ns.iter().any(|n| n == namespace))
    }
}

/// Runs the controller until `stop` resolves. `store` (every in-scope ElastiService) maps
/// Service and EndpointSlice changes to the ElastiServices that name them.
pub async fn run(
    ctx: Arc<Context>,
    store: Store<ElastiService>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
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
    Controller::new(
        Api::<ElastiService>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        move |svc: Service| by_service(svc.namespace(), Some(svc.name_any())),
    )
    .watches(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
        move |slice: EndpointSlice| {
            let service = slice.labels().get(endpoints::SERVICE_NAME_LABEL).cloned();
            by_slice(slice.namespace(), service)
        },
    )
    .graceful_shutdown_on(stop)
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
    })
    .await;
}

async fn reconcile(es: Arc<ElastiService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = es.namespace().unwrap_or_default();
    if !ctx.in_scope(&ns) {
        return Ok(Action::await_change());
    }
    let api: Api<ElastiService> = Api::namespaced(ctx.client.clone(), &ns);
    let reconciled = finalizer(&api, FINALIZER, es, |event| async {
        match event {
            Finalizer::Apply(es) => apply(&es, &ctx).await,
            Finalizer::Cleanup(es) => cleanup(&es, &ctx).await,
        }
    });
    let result = match tokio::time::timeout(RECONCILE_TIMEOUT, reconciled).await {
        Ok(r) => r.map_err(|e| Error::Finalizer(Box::new(e))),
        Err(_) => Err(Error::TimedOut(RECONCILE_TIMEOUT)),
    };
    ctx.metrics.reconciled(if result.is_ok() {
        ReconcileResult::Ok
    } else {
        ReconcileResult::Error
    });
    result
}

fn error_policy(es: Arc<ElastiService>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        namespace = %es.namespace().unwrap_or_default(),
        elastiservice = %es.name_any(),
        error = %DisplayChain(error),
        "reconcile failed; retrying in 5s"
    );
    Action::requeue(Duration::from_secs(5))
}

/// The TCP ports of a Service, as proxy-port requests.
pub fn tcp_ports(svc: &Service) -> Vec<ServicePort> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .map(|p| ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port: p.port,
        })
        .collect()
}

/// What one reconcile found, written to the status.
struct Observed {
    mode: Option<Mode>,
    proxy_ports: Vec<ProxyPort>,
    conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

async fn apply(es: &ElastiService, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = (es.namespace().unwrap_or_default(), es.name_any());
    let now = Timestamp::now();
    let generation = es.metadata.generation;
    let old = es.status.clone().unwrap_or_default();
    let mut seen = Observed {
        mode: old.mode,
        proxy_ports: old.proxy_ports.clone(),
        conditions: old.conditions.clone(),
    };
    let poll = ctx.settings.poll_interval;
    let not_ready = |seen: &mut Observed, reason: &str, message: String| {
        status::set_condition(
            &mut seen.conditions,
            status::condition(status::READY, false, reason, message, generation, now),
        );
    };

    let svc = Api::<Service>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&es.spec.service)
        .await
        .map_err(api_err("reading the Service"))?;
    let Some(svc) = svc else {
        let msg = format!("Service {ns}/{} not found", es.spec.service);
        not_ready(&mut seen, "ServiceNotFound", msg.clone());
        ctx.scaler
            .event(es, EventType::Warning, "ServiceNotFound", msg)
            .await;
        write_status(ctx, es, &old, seen, now).await?;
        return Ok(Action::requeue(poll));
    };

    let owner = (ns.clone(), name.clone());
    let allocated = ctx.ports.lock().map_err(|_| ()).and_then(|mut book| {
        let r = book.allocate(&owner, &tcp_ports(&svc));
        ctx.metrics.proxy_ports.set(book.allocated() as i64);
        r.map_err(|e| {
            tracing::error!(namespace = %ns, elastiservice = %name, error = %e, "no proxy port");
        })
    });
    match allocated {
        Ok(ports) => seen.proxy_ports = ports,
        Err(()) => {
            let msg = "the proxy-port range is exhausted".to_string();
            not_ready(&mut seen, "ProxyPortsExhausted", msg.clone());
            ctx.scaler
                .event(es, EventType::Warning, "ProxyPortsExhausted", msg)
                .await;
            write_status(ctx, es, &old, seen, now).await?;
            return Ok(Action::requeue(poll));
        }
    }

    let target = &es.spec.scale_target_ref;
    let replicas = match ctx.scaler.targets.replicas(&ns, target).await {
        Ok(r) => r,
        Err(e @ (target::Error::NotFound { .. } | target::Error::KindNotServed { .. })) => {
            let msg = DisplayChain(&e).to_string();
            not_ready(
                &mut seen,
                elasti_api::conditions::TARGET_NOT_FOUND,
                msg.clone(),
            );
            ctx.scaler
                .event(es, EventType::Warning, "TargetNotFound", msg)
                .await;
            write_status(ctx, es, &old, seen, now).await?;
            return Ok(Action::requeue(poll));
        }
        Err(e) => return Err(crate::scale::Error::Target(e).into()),
    };

    let slices = Api::<EndpointSlice>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            endpoints::SERVICE_NAME_LABEL,
            es.spec.service
        )))
        .await
        .map_err(api_err("listing EndpointSlices"))?;
    let pods_slices: Vec<&EndpointSlice> = slices
        .items
        .iter()
        .filter(|s| endpoints::belongs_to(s, &ns, &es.spec.service))
        .collect();
    let ready = seen
        .proxy_ports
        .iter()
        .any(|p| !endpoints::ready_endpoints(pods_slices.iter().copied(), &p.name).is_empty());
    let mode = if ready { Mode::Serve } else { Mode::Proxy };
    seen.mode = Some(mode);

    let want = if mode == Mode::Proxy {
        let ips = fallback::agent_ips(&ctx.client, &ctx.settings.agents)
            .await
            .map_err(api_err("listing agent pods"))?;
        fallback::desired(es, &es.spec.service, &seen.proxy_ports, &ips)
    } else {
        Vec::new()
    };
    fallback::sync(&ctx.client, &ns, &es.spec.service, want)
        .await
        .map_err(api_err("syncing the fallback EndpointSlice"))?;

    status::set_condition(
        &mut seen.conditions,
        status::condition(
            status::READY,
            true,
            "Managed",
            format!(
                "{} proxy port(s); {} {} at {replicas} replica(s)",
                seen.proxy_ports.len(),
                target.kind.as_str(),
                target.name
            ),
            generation,
            now,
        ),
    );

    let inputs = Inputs {
        now,
        created: es.metadata.creation_timestamp.as_ref().map(|t| t.0),
        last_scaled_up: old.last_scaled_up_time.as_ref().map(|t| t.0),
        cooldown: Duration::from_secs(u64::try_from(es.spec.cooldown_period).unwrap_or(0)),
        replicas,
        has_triggers: !es.spec.triggers.is_empty(),
    };
    let verdict = match verdict::first_step(&inputs) {
        Step::Decided(v) => v,
        Step::ReadTriggers => {
            let reading = ctx.prometheus.idleness(&es.spec.triggers).await;
            ctx.metrics.trigger_read(match reading {
                Idleness::Idle => "idle",
                Idleness::Busy { .. } => "busy",
                Idleness::Unknown { .. } => "unknown",
            });
            verdict::with_idleness(&inputs, reading)
        }
    };
    let mut requeue = poll;
    let scaled_to_zero = |ok: bool, reason: &str, msg: String| {
        status::condition(status::SCALED_TO_ZERO, ok, reason, msg, generation, now)
    };
    let condition = match verdict {
        Verdict::ScaleDown => {
            ctx.scaler
                .down(es, "every trigger under its threshold after the cooldown")
                .await?;
            scaled_to_zero(
                true,
                Reason::ScaledToZero.as_str(),
                "every trigger was under its threshold after the cooldown".into(),
            )
        }
        Verdict::ScaleUp { detail } => {
            ctx.scaler.up(es, "trigger").await?;
            scaled_to_zero(false, Reason::TrafficAboveThreshold.as_str(), detail)
        }
        Verdict::Stay {
            reason,
            detail,
            recheck,
        } => {
            if let Some(r) = recheck {
                requeue = requeue.min(r + RECHECK_MARGIN);
            }
            if reason == Reason::PrometheusUnavailable {
                ctx.scaler
                    .event(es, EventType::Warning, reason.as_str(), detail.clone())
                    .await;
            }
            scaled_to_zero(reason == Reason::ScaledToZero, reason.as_str(), detail)
        }
    };
    status::set_condition(&mut seen.conditions, condition);
    write_status(ctx, es, &old, seen, now).await?;
    Ok(Action::requeue(requeue))
}

/// Writes what changed. `lastReconciledTime` alone does not count as a change unless it
/// is older than the poll interval, so a reconcile does not trigger another through its
/// own status write forever.
async fn write_status(
    ctx: &Context,
    es: &ElastiService,
    old: &elasti_api::ElastiServiceStatus,
    seen: Observed,
    now: Timestamp,
) -> Result<(), Error> {
    let stale = old.last_reconciled_time.as_ref().is_none_or(|t| {
        now.duration_since(t.0).as_secs() >= ctx.settings.poll_interval.as_secs() as i64
    });
    let changed = old.mode != seen.mode
        || old.proxy_ports != seen.proxy_ports
        || old.conditions != seen.conditions
        || old.observed_generation != es.metadata.generation;
    if !changed && !stale {
        return Ok(());
    }
    status::patch(
        &ctx.client,
        es,
        serde_json::json!({
            "mode": seen.mode,
            "proxyPorts": seen.proxy_ports,
            "conditions": seen.conditions,
            "observedGeneration": es.metadata.generation,
            "lastReconciledTime": now,
        }),
    )
    .await
    .map_err(api_err("writing status"))
}

async fn cleanup(es: &ElastiService, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = (es.namespace().unwrap_or_default(), es.name_any());
    // A target left at zero goes back to minTargetReplicas; `up` leaves one that has
    // replicas alone, and a target that is gone needs nothing.
    match ctx.scaler.up(es, "delete").await {
        Ok(_)
        | Err(crate::scale::Error::Target(
            target::Error::NotFound { .. } | target::Error::KindNotServed { .. },
        )) => {}
        Err(e) => return Err(e.into()),
    }
    fallback::sync(&ctx.client, &ns, &es.spec.service, Vec::new())
        .await
        .map_err(api_err("removing the fallback EndpointSlice"))?;
    if let Ok(mut book) = ctx.ports.lock() {
        book.release(&(ns.clone(), name.clone()));
        ctx.metrics.proxy_ports.set(book.allocated() as i64);
    }
    tracing::info!(namespace = %ns, elastiservice = %name, "cleaned up");
    Ok(Action::await_change())
}
