//! The agent on a big cluster: its cost must grow with the managed services, not with the
//! cluster. [`MANAGED`] managed services at zero (each a Service without a selector whose
//! EndpointSlice the bench writes, and a Deployment whose pods can never be scheduled),
//! then [`UNMANAGED`] Services and twice as many EndpointSlices nobody manages with elasti
//! (objects only, no pods; labelled for another service proxy, so kube-proxy skips them
//! and the two cores are left to the apiserver and the watchers), created through the
//! apiserver. On the bench node's agent:
//!
//! - **memory:** its resident set (supervisor and worker) with the managed services alone,
//!   and after the load;
//! - **CPU:** its CPU time while the objects are created, against an idle period of the
//!   same length before;
//! - **release:** a managed service's slice written Ready (the apply sent) → the agent's
//!   "endpoints Ready" line (what it holds goes to the pods), one service after another,
//!   before the load and after it. The address is one no pod has: nothing is held, so
//!   nothing connects to it.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use elasti_testbed::{
    cmd, elasti,
    kube::{apply_with, kube},
    objects::{App, manual_slice},
    procs,
    stats::summarize,
};
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use super::{
    Section, cluster, kubectl, summary, wait_for,
    watch::{Watch, ms_between},
};

const MANAGED_NS: &str = "elasti-bench-managed";
const LOAD_NS: &str = "elasti-bench-load";
/// Managed services.
const MANAGED: usize = 100;
/// Services nobody manages; each has [`SLICES_PER_SERVICE`] EndpointSlices.
const UNMANAGED: usize = 10_000;
const SLICES_PER_SERVICE: usize = 2;
/// Endpoints in each unmanaged slice (a small Deployment's worth).
const ENDPOINTS_PER_SLICE: usize = 3;
/// Applies in flight while loading.
const LOAD_CONCURRENCY: usize = 32;
/// Between two slices written Ready: one release at a time is timed.
const FLIP_GAP: Duration = Duration::from_millis(50);
/// The label kube-proxy leaves to another proxy: it does not even list these objects.
const OTHER_PROXY: (&str, &str) = ("service.kubernetes.io/service-proxy-name", "elasti-bench");
/// An address in the cluster's pod range that no pod has.
const NOBODY: &str = "10.244.0.250";
/// Who writes the managed services' slices (the operator labels them, as it does for any
/// Service without a selector).
const BENCH_MANAGER: &str = "bench.elasti.truefoundry.com";

fn managed_name(i: usize) -> String {
    format!("m{i:03}")
}

/// The managed service `i`: Deployment (unschedulable), Service without a selector, its
/// slice (not Ready), ElastiService.
fn create_managed() -> Result<()> {
    kube()?.for_each_concurrently(MANAGED, LOAD_CONCURRENCY, |c, i| async move {
        let name = managed_name(i);
        let app = App::http(&name);
        let mut svc = app.service();
        if let Some(spec) = svc.spec.as_mut() {
            spec.selector = None;
        }
        apply_with(c.clone(), MANAGED_NS, &super::unschedulable(&app)).await?;
        apply_with(c.clone(), MANAGED_NS, &svc).await?;
        apply_with(c.clone(), MANAGED_NS, &slice(&name, false)).await?;
        apply_with(c, MANAGED_NS, &app.elastiservice()).await?;
        Ok(())
    })
}

fn slice(service: &str, ready: bool) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    manual_slice(
        &format!("{service}-1"),
        service,
        BENCH_MANAGER,
        &[NOBODY],
        ready,
    )
}

/// The unmanaged Services and slices, [`LOAD_CONCURRENCY`] Services at a time.
fn load() -> Result<()> {
    kube()?.for_each_concurrently(UNMANAGED, LOAD_CONCURRENCY, |c, i| async move {
        let name = format!("u{i:05}");
        let mut svc: Service = App::http(&name).service();
        svc.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(OTHER_PROXY.0.into(), OTHER_PROXY.1.into());
        if let Some(spec) = svc.spec.as_mut() {
            spec.selector = None;
        }
        apply_with(c.clone(), LOAD_NS, &svc).await?;
        for s in 0..SLICES_PER_SERVICE {
            let addrs: Vec<String> = (0..ENDPOINTS_PER_SLICE)
                .map(|e| {
                    let n = (i * SLICES_PER_SERVICE + s) * ENDPOINTS_PER_SLICE + e;
                    // In the pods' range, which exists only inside the cluster's network
                    // namespace; nothing connects to it.
                    format!("10.244.{}.{}", n / 256, n % 256)
                })
                .collect();
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            let mut slice =
                manual_slice(&format!("{name}-{s}"), &name, BENCH_MANAGER, &addrs, true);
            slice
                .metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(OTHER_PROXY.0.into(), OTHER_PROXY.1.into());
            apply_with(c.clone(), LOAD_NS, &slice).await?;
        }
        Ok(())
    })
}

/// The agent pod on the bench's node: (name, UID).
fn home_agent() -> Result<(String, String)> {
    let out = kubectl(&[
        "-n",
        elasti::NAMESPACE,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=elasti-agent",
        "--field-selector",
        &format!("spec.nodeName={}", cluster().home().name),
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.metadata.uid}{"\n"}{end}"#,
    ])?;
    let line = out
        .lines()
        .next()
        .context("bench: no agent on the bench's node")?;
    let (name, uid) = line
        .split_once(' ')
        .context("bench: agent pod name and UID")?;
    Ok((name.into(), uid.into()))
}

/// How many of the managed services the bench node's agent steers to itself.
fn intercepting() -> usize {
    // From the cluster's namespace: the agent's address exists only there.
    let admin = elasti::agent_admin(&cluster().home().ip);
    let text = cluster()
        .run_beside(move || elasti::metrics_text(&admin))
        .unwrap_or_default();
    (0..MANAGED)
        .filter(|i| {
            let series = elasti::port_series("intercepting", MANAGED_NS, &managed_name(*i), 80);
            elasti::sample(&text, &series) == Some(1.0)
        })
        .count()
}

fn wait_all_intercepting() -> Result<()> {
    wait_for(
        "the agent intercepting every managed service",
        Duration::from_secs(300),
        || Ok(intercepting() == MANAGED),
    )
}

/// Per service, the apply sent → the slice seen Ready, ms: by a plain watch (`kubectl get
/// --watch` with the agents' label selector: the apiserver's own delivery, the baseline),
/// and by the agent (its "endpoints Ready" line).
struct Releases {
    watched: Vec<f64>,
    agent: Vec<f64>,
}

/// Writes every managed slice Ready, one after another, and times each ([`Releases`]).
/// Then writes them not Ready again and waits until the agent holds them all again.
fn releases(agent: &str) -> Result<Releases> {
    let watch = Watch::start(
        "EndpointSlice",
        &[
            "endpointslices",
            "-n",
            MANAGED_NS,
            "-l",
            elasti_api::endpoints::MANAGED_LABEL,
        ],
        r#"{.metadata.name} {.endpoints[0].conditions.ready}{"\n"}"#,
    )?;
    // The watch's first listing has gone by.
    std::thread::sleep(Duration::from_secs(2));
    let mut sent = BTreeMap::new();
    let mut watched = Vec::new();
    for i in 0..MANAGED {
        let name = managed_name(i);
        let at = SystemTime::now();
        kube()?.apply(MANAGED_NS, &slice(&name, true))?;
        let line = format!("{name}-1 true");
        let (seen, _) = watch.first(at, Duration::from_secs(30), |l| l.trim() == line)?;
        watched.push(ms_between(at, seen));
        sent.insert(format!("service={MANAGED_NS}/{name}:80 "), at);
        std::thread::sleep(FLIP_GAP);
    }
    let first = sent
        .values()
        .min()
        .copied()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut took = BTreeMap::new();
    wait_for(
        "an endpoints Ready line for every managed service",
        Duration::from_secs(60),
        || {
            for (t, line) in agent_lines(agent, first)? {
                if !line.contains("endpoints Ready") {
                    continue;
                }
                for (key, at) in &sent {
                    if line.contains(key.as_str()) && t >= *at {
                        took.entry(key.clone())
                            .or_insert_with(|| ms_between(*at, t));
                    }
                }
            }
            Ok(took.len() == MANAGED)
        },
    )?;
    for i in 0..MANAGED {
        kube()?.apply(MANAGED_NS, &slice(&managed_name(i), false))?;
    }
    wait_all_intercepting()?;
    Ok(Releases {
        watched,
        agent: took.into_values().collect(),
    })
}

/// The agent pod's log lines at or after `since`, with their own timestamps.
fn agent_lines(pod: &str, since: SystemTime) -> Result<Vec<(SystemTime, String)>> {
    let out = kubectl(&[
        "-n",
        elasti::NAMESPACE,
        "logs",
        pod,
        "--all-containers",
        "--tail=-1",
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let t: jiff::Timestamp = l.split_whitespace().next()?.parse().ok()?;
            let t: SystemTime = t.into();
            (t >= since).then(|| (t, l.to_owned()))
        })
        .collect())
}

/// The whole figure; leaves both namespaces being deleted (thirty thousand objects take
/// the namespace controller minutes; the cluster goes down after the last figure anyway).
pub fn measure() -> Result<Section> {
    let k = kube()?;
    k.create_namespace(MANAGED_NS)?;
    k.create_namespace(LOAD_NS)?;
    let result = measure_in_namespaces();
    let deleted = kubectl(&["delete", "namespace", MANAGED_NS, LOAD_NS, "--wait=false"]);
    let r = result?;
    deleted?;
    Ok(r)
}

fn measure_in_namespaces() -> Result<Section> {
    let p = cmd::Progress::start(format!(
        "agent at cluster scale: {MANAGED} managed services, then {UNMANAGED} Services and {} EndpointSlices",
        UNMANAGED * SLICES_PER_SERVICE
    ));
    create_managed()?;
    wait_all_intercepting()?;
    let (agent, uid) = home_agent()?;
    let procs = super::pod_processes("elasti-agent", &uid)?;
    std::thread::sleep(super::SETTLE);
    let rss_before = procs::rss_bytes(&procs)?;
    let before = releases(&agent)?;

    // Idle, then the load, each timed with the agent's CPU.
    let idle_cpu = {
        let cpu = procs::cpu_seconds(&procs)?;
        std::thread::sleep(Duration::from_secs(30));
        (procs::cpu_seconds(&procs)? - cpu) / 30.0
    };
    let cpu = procs::cpu_seconds(&procs)?;
    let started = Instant::now();
    load()?;
    let loaded_in = started.elapsed().as_secs_f64();
    let load_cpu = (procs::cpu_seconds(&procs)? - cpu) / loaded_in;
    std::thread::sleep(super::SETTLE);
    let rss_after = procs::rss_bytes(&procs)?;
    let after = releases(&agent)?;
    p.done();

    if home_agent()?.0 != agent {
        bail!("bench: the agent pod changed during the figure");
    }
    let (b, a) = (summarize(&before.agent), summarize(&after.agent));
    let (wb, wa) = (summarize(&before.watched), summarize(&after.watched));
    let mib = |v: u64| v as f64 / (1024.0 * 1024.0);
    let objects = UNMANAGED * (1 + SLICES_PER_SERVICE);
    let rows = format!(
        "| agent resident memory, {MANAGED} managed services (goal ≤ 64 MiB) | alone: {:.1} MiB | with {UNMANAGED} more Services and {} slices: {:.1} MiB | {:+.1} MiB |\n\
         | agent CPU while {objects} objects are created ({loaded_in:.0} s) | idle: {:.2} % of a core | {:.2} % of a core | |\n\
         | slice written Ready → the agent releases what it holds, p50 / p99 ({MANAGED} services, goal p99 ≤ 50 ms) | before the load: {:.1} / {:.1} ms | after: {:.1} / {:.1} ms | {:+.1} ms at p99 |\n\
         | … the same writes → seen by a plain watch with the agents' label selector (the apiserver's delivery), p50 / p99 | before the load: {:.1} / {:.1} ms | after: {:.1} / {:.1} ms | |\n",
        mib(rss_before),
        UNMANAGED * SLICES_PER_SERVICE,
        mib(rss_after),
        mib(rss_after) - mib(rss_before),
        idle_cpu * 100.0,
        load_cpu * 100.0,
        b.p50,
        b.p99,
        a.p50,
        a.p99,
        a.p99 - b.p99,
        wb.p50,
        wb.p99,
        wa.p50,
        wa.p99,
    );
    let json = json!({
        "managed_services": MANAGED,
        "unmanaged_services": UNMANAGED,
        "unmanaged_slices": UNMANAGED * SLICES_PER_SERVICE,
        "load_s": loaded_in,
        "agent_rss_bytes": {"managed_only": rss_before, "after_load": rss_after},
        "agent_cpu_cores": {"idle": idle_cpu, "during_load": load_cpu},
        "release_ms": {"before_load": summary(&before.agent), "after_load": summary(&after.agent)},
        "plain_watch_ms": {"before_load": summary(&before.watched), "after_load": summary(&after.watched)},
    });
    Ok((rows, json))
}
