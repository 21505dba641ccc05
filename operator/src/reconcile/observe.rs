//! The reconcile's reads: the Service, the target's scale, the Service's Ready endpoints,
//! the agents, the schedule, the group, the agents' reports and (only when the verdict
//! needs them) the triggers. A read that fails is an observation too (the decision says
//! what it means) unless nothing sensible can be decided without it.
use std::{sync::Arc, time::Instant};

use elasti_api::{ElastiService, endpoints, schedule};
use jiff::Timestamp;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{Api, ResourceExt, api::ListParams};

use super::{
    Context, Error, agents, api_err,
    decide::{self, LabelSeen, Observed, SelectorSeen, ServiceSeen, TargetSeen},
    label,
};
use crate::{
    group::Graph,
    ports::ServicePort,
    scale::{drain, target, verdict::Window},
    triggers,
};

fn elasti_runtime_chain(e: &dyn std::error::Error) -> String {
    elasti_runtime::DisplayChain(e).to_string()
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

/// Why elasti cannot stand in for `svc`, if it cannot.
pub fn unsupported(svc: &Service) -> Option<String> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some("an ExternalName Service has no endpoints to stand in for".into());
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        return Some(
            "a headless Service (clusterIP: None) has no ClusterIP to steer and no kube-proxy rule"
                .into(),
        );
    }
    None
}

/// What `enabledPeriod` says at `now`.
pub fn window(es: &ElastiService, now: Timestamp) -> Window {
    let Some(period) = &es.spec.enabled_period else {
        return Window::Always;
    };
    let chain = |e: &schedule::Error| elasti_runtime_chain(e);
    let w = match schedule::Window::new(period) {
        Ok(w) => w,
        Err(e) => return Window::Invalid(chain(&e)),
    };
    match (w.enabled_at(now), w.next_change(now)) {
        (Ok(true), Ok(next)) => Window::Open { until: next },
        (Ok(false), Ok(next)) => Window::Closed { opens: next },
        (Err(e), _) | (_, Err(e)) => Window::Invalid(chain(&e)),
    }
}

/// Whether `es` reads as up to its group: its target is not at zero by its status.
fn is_up(es: &ElastiService) -> bool {
    !es.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == elasti_api::conditions::SCALED_TO_ZERO && c.status == "True")
    })
}

/// The group members (`wakeWith`) around `es` in `all`: those whose wake reaches it and are
/// up, and those its wake reaches.
pub fn group(
    es: &ElastiService,
    all: &[Arc<ElastiService>],
) -> (Vec<String>, Vec<Arc<ElastiService>>) {
    let ns = es.namespace();
    let members: Vec<&Arc<ElastiService>> = all
        .iter()
        .filter(|o| o.namespace() == ns && o.metadata.deletion_timestamp.is_none())
        .collect();
    if members.iter().all(|m| m.spec.wake_with.is_empty()) {
        return (Vec::new(), Vec::new());
    }
    let names: Vec<String> = members.iter().map(|m| m.name_any()).collect();
    let graph = Graph::new(
        names
            .iter()
            .map(String::as_str)
            .zip(members.iter().map(|m| m.spec.wake_with.as_slice())),
    );
    let me = es.name_any();
    let keepers = graph.keepers_of(&me);
    let kept_up_by = members
        .iter()
        .filter(|m| keepers.contains(m.name_any().as_str()) && is_up(m))
        .map(|m| m.name_any())
        .collect();
    let reached = graph.woken_by(&me);
    let wakes = members
        .iter()
        .filter(|m| reached.contains(m.name_any().as_str()))
        .map(|m| (*m).clone())
        .collect();
    (kept_up_by, wakes)
}

/// How long a reconcile's reads took: the transition log carries them
/// (`super::log_transitions`), so a slow step of a scale-down can be told from the others.
#[derive(Clone, Copy, Debug)]
pub struct Took {
    /// When the reconcile started.
    pub started: Instant,
    /// The Service, the target's scale and the slices, read at once.
    pub reads: std::time::Duration,
    /// The triggers, when they were read.
    pub triggers: Option<std::time::Duration>,
}

/// Every read of one reconcile, and how long they took.
///
/// # Errors
/// When the Service or the EndpointSlices cannot be read: nothing can be decided.
pub async fn observe(es: &ElastiService, ctx: &Context) -> Result<(Observed, Took), Error> {
    let (ns, name) = (es.namespace().unwrap_or_default(), es.name_any());
    let now = Timestamp::now();
    let started = Instant::now();
    let owner = (ns.clone(), name.clone());
    let all = ctx.store.state();
    let conflict = decide::conflict(es, &all);

    // The three reads at once: a reconcile's latency is theirs (the scale-down's first
    // phase, a restart's catch-up), and none depends on another.
    let of_service = ListParams::default().labels(&format!(
        "{}={}",
        endpoints::SERVICE_NAME_LABEL,
        es.spec.service
    ));
    let services = Api::<Service>::namespaced(ctx.client.clone(), &ns);
    let slices = Api::<EndpointSlice>::namespaced(ctx.client.clone(), &ns);
    let (svc, target, slices) = futures::join!(
        services.get_opt(&es.spec.service),
        ctx.scaler.targets.replicas(&ns, &es.spec.scale_target_ref),
        slices.list(&of_service),
    );
    let mut took = Took {
        started,
        reads: started.elapsed(),
        triggers: None,
    };
    let svc = svc.map_err(api_err("reading the Service"))?;
    let service = match &svc {
        None => ServiceSeen::Missing,
        Some(s) => match unsupported(s) {
            Some(why) => ServiceSeen::NotSupported(why),
            None => ServiceSeen::Found,
        },
    };

    // The proxy ports: held while the Service is ours to stand in for, freed otherwise.
    let ports = {
        let mut book = ctx.ports.lock().map_err(|_| Error::PortBook)?;
        let r = match (&svc, &service, &conflict) {
            (Some(s), ServiceSeen::Found, None) => book
                .allocate(&owner, &tcp_ports(s), now)
                .map_err(|e| e.to_string()),
            _ => {
                book.release(&owner, now);
                Ok(Vec::new())
            }
        };
        ctx.metrics.proxy_ports.set(book.allocated() as i64);
        r
    };

    let target = match target {
        Ok(r) => TargetSeen::Replicas(r),
        Err(e @ (target::Error::NotFound { .. } | target::Error::KindNotServed { .. })) => {
            TargetSeen::Missing(elasti_runtime_chain(&e))
        }
        Err(e) => TargetSeen::Unreadable(elasti_runtime_chain(&e)),
    };

    let slices = slices.map_err(api_err("listing EndpointSlices"))?;
    let pods_slices: Vec<&EndpointSlice> = slices
        .items
        .iter()
        .filter(|s| endpoints::belongs_to(s, &ns, &es.spec.service))
        .collect();
    let fallback: Vec<EndpointSlice> = slices
        .items
        .iter()
        .filter(|s| elasti_api::fallback::is_fallback_slice(s))
        .cloned()
        .collect();
    let port_names: Vec<String> = match &ports {
        Ok(p) if !p.is_empty() => p.iter().map(|p| p.name.clone()).collect(),
        _ => svc
            .as_ref()
            .map(tcp_ports)
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.name)
            .collect(),
    };
    let ready = port_names
        .iter()
        .any(|p| !endpoints::ready_endpoints(pods_slices.iter().copied(), p).is_empty());
    let pods_listed = pods_slices.iter().any(|s| !s.endpoints.is_empty());
    let uid = es.metadata.uid.as_deref().unwrap_or_default();
    let selectorless = svc.as_ref().is_some_and(|s| !drain::has_selector(s));
    let labels = LabelSeen {
        service: svc
            .as_ref()
            .is_some_and(|s| label::carries(s.labels(), uid)),
        slices: pods_slices.iter().all(|s| label::carries(s.labels(), uid)),
        unlabelled_slices: pods_slices
            .iter()
            .filter(|s| selectorless && label::labelled_by_operator(s))
            .filter(|s| !label::carries(s.labels(), uid))
            .map(|s| s.name_any())
            .collect(),
    };
    let selector = match &svc {
        Some(s) if drain::is_drained(s) => SelectorSeen::Drained,
        Some(s) if drain::has_selector(s) => SelectorSeen::Selects,
        _ => SelectorSeen::Absent,
    };
    let drained_for = ctx.drain_clock.drained_for(
        (ns.clone(), es.spec.service.clone()),
        selector == SelectorSeen::Drained && !pods_listed,
    );

    let agents = ctx.agents.ready();
    let ready_nodes = agents::nodes(&agents);
    let key = (ns.clone(), es.spec.service.clone());
    let at = Instant::now();
    let not_intercepting = ctx
        .leader
        .with(|t| t.reports.not_intercepting(&key, &ready_nodes, at))
        .unwrap_or_else(|| ready_nodes.clone());
    let (kept_up_by, wakes) = group(es, &all);

    let mut observed = Observed {
        now,
        service,
        conflict,
        ports,
        target,
        ready,
        selector,
        pods_listed,
        labels,
        drained_for,
        drain_delay: ctx.settings.drain_delay,
        agents,
        fallback,
        window: window(es, now),
        kept_up_by,
        wakes,
        not_intercepting,
        intercept_timeout: ctx.settings.intercept_timeout,
        poll: ctx.settings.poll_interval,
        triggers: None,
    };
    if decide::needs_triggers(es, &observed) {
        let activity = |cooldown| {
            ctx.leader
                .with(|t| {
                    triggers::from_activity(
                        t.reports.activity(&key, &ready_nodes, Instant::now()),
                        cooldown,
                    )
                })
                .unwrap_or(crate::scale::verdict::Idleness::Unknown {
                    detail: "this replica is not leading".into(),
                })
        };
        let read_at = Instant::now();
        let reading = triggers::read(&ctx.client, &ctx.prometheus, es, activity).await;
        took.triggers = Some(read_at.elapsed());
        ctx.metrics.trigger_read(triggers::label(&reading));
        observed.triggers = Some(reading);
    }
    Ok((observed, took))
}
