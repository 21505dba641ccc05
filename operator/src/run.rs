//! The operator's main loop: the admin server and the wake server run on every replica;
//! the controller runs only while this replica leads, and stops (mid-reconcile) the moment
//! it does not.
use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use elasti_api::ElastiService;
use elasti_runtime::{DisplayChain, admin, reflect};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::{
    config::Args,
    fence::Fence,
    leader,
    metrics::Metrics,
    ports::PortBook,
    reconcile::{self, AgentsView, Context, Settings},
    scale::Scaler,
    term::Leader,
    triggers::{Prometheus, prometheus},
    wake::{
        auth::Authenticator,
        server::{self, Health, WakeService},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No Kubernetes client could be built (no in-cluster env, no kubeconfig).
    #[error("building the Kubernetes client failed")]
    Client(#[source] kube::Error),
    /// The Prometheus client could not be built (the CA bundle).
    #[error("the Prometheus client")]
    Prometheus(#[source] prometheus::Error),
}

/// Runs the operator until SIGTERM/SIGINT.
pub async fn run(args: Args) -> Result<(), Error> {
    run_until(args, shutdown_signal()).await
}

/// Raises the soft open-files limit to the hard one: every wake-server connection is a
/// descriptor, and a soft limit of 1,024 is the default of many runtimes.
pub fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-files limit"),
            Err(e) => tracing::warn!(error = %e, soft, "could not raise the open-files limit"),
        },
        Ok((soft, _)) if soft < want => {
            tracing::warn!(
                limit = soft,
                want,
                "the open-files limit is below the wake server's connection cap"
            )
        }
        Ok((soft, _)) => tracing::info!(limit = soft, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not read the open-files limit"),
    }
}

/// ElastiServices an agent change may concern: those the agents stand in for now.
fn in_proxy_or_pending(store: &Store<ElastiService>) -> Vec<ObjectRef<ElastiService>> {
    store
        .state()
        .iter()
        .filter(|es| {
            es.status.as_ref().is_some_and(|s| {
                s.mode == Some(elasti_api::Mode::Proxy)
                    || s.conditions.iter().any(|c| {
                        c.type_ == elasti_api::conditions::SCALE_DOWN_PENDING && c.status == "True"
                    })
            })
        })
        .map(|es| ObjectRef::from_obj(es.as_ref()))
        .collect()
}

/// [`run`], until `shutdown` resolves (tests run operators in-process this way).
pub async fn run_until(
    args: Args,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    raise_fd_limit(args.wake_max_connections as u64 + 1024);
    let client = Client::try_default().await.map_err(Error::Client)?;
    let identity = args.identity();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let registry = Arc::new(registry);
    let health = Arc::new(Health::default());
    let prometheus = Prometheus::new(prometheus::Settings {
        timeout: Duration::from_secs(args.prometheus_timeout_secs.max(1)),
        ca_bundle: (!args.prometheus_ca_bundle.is_empty())
            .then(|| args.prometheus_ca_bundle.clone().into()),
        allowed_hosts: args
            .prometheus_allowed_hosts
            .iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect(),
    })
    .map_err(Error::Prometheus)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let admin_task = tokio::spawn({
        let (addr, registry, health) = (args.admin_address, registry.clone(), health.clone());
        async move {
            if let Err(e) = admin::serve(addr, registry, health).await {
                tracing::error!(%addr, error = %e, "admin server stopped");
            }
        }
    });

    let (store, events) = reflect::<ElastiService>(&client, args.common.namespaces());
    let reflector_task = tokio::spawn(events.for_each(|event| async move {
        if let Err(e) = event {
            tracing::warn!(error = %DisplayChain(&e), "ElastiService watch failed; retrying");
        }
    }));
    // The one waiter on the store: its readiness future wakes only its last poller.
    let (synced_tx, synced_rx) = watch::channel(false);
    tokio::spawn({
        let (store, health) = (store.clone(), health.clone());
        async move {
            if store.wait_until_ready().await.is_ok() {
                health.synced.store(true, Ordering::Release);
                let _ = synced_tx.send(true);
                tracing::info!(elastiservices = store.state().len(), "synced");
            }
        }
    });

    let leader_state = Leader::default();
    // The agent pods (the fallback endpoints, the interception the scale-down waits for)
    // and the nodes' zones, watched: an agent that goes away leaves the slices at once.
    let (pods, pods_writer) = reflector::store();
    let agent_task = tokio::spawn({
        let api = Api::<Pod>::namespaced(client.clone(), &args.agent_namespace);
        let config = watcher::Config::default().labels(&args.agent_selector);
        let (store, leader_state) = (store.clone(), leader_state.clone());
        reflector::reflector(pods_writer, watcher(api, config))
            .default_backoff()
            .for_each(move |event| {
                match event {
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                        leader_state.poke(in_proxy_or_pending(&store));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %DisplayChain(&e), "agent pod watch failed; retrying"),
                }
                futures::future::ready(())
            })
    });
    let (nodes, nodes_writer) = reflector::store();
    let node_task = tokio::spawn(
        reflector::reflector(
            nodes_writer,
            watcher(
                Api::<PartialObjectMeta<Node>>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .for_each(|event| {
            if let Err(e) = event {
                tracing::warn!(error = %DisplayChain(&e), "node watch failed; retrying");
            }
            futures::future::ready(())
        }),
    );

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "elasti-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    let scaler = Arc::new(Scaler::new(client.clone(), recorder, metrics.clone()));
    let wake = Arc::new(WakeService {
        client: client.clone(),
        auth: Authenticator::new(
            client.clone(),
            &args.agent_namespace,
            &args.agent_service_account,
        ),
        scaler: scaler.clone(),
        store: store.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        leader: leader_state.clone(),
        max_connections: args.wake_max_connections.max(1),
    });
    let wake_task = tokio::spawn(server::serve(args.wake_address, wake));

    let (leading_tx, leading_rx) = watch::channel(false);
    let leader_task = if args.leader_elect {
        let config = leader::Config {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(args.lease_duration_secs),
            renew_deadline: Duration::from_secs(args.renew_deadline_secs),
            retry_period: Duration::from_secs(args.retry_period_secs.max(1)),
        };
        Some(tokio::spawn(leader::run(
            client.clone(),
            config,
            leading_tx,
            stopped(stop_rx.clone()),
        )))
    } else {
        let _ = leading_tx.send(true);
        // Keep the sender alive: a dropped sender would read as "no longer leading".
        let stop_rx = stop_rx.clone();
        Some(tokio::spawn(async move {
            stopped(stop_rx).await;
            drop(leading_tx);
        }))
    };

    let settings = Settings {
        poll_interval: args.poll_interval(),
        namespaces: args.common.namespaces(),
        intercept_timeout: Duration::from_secs(args.intercept_timeout_secs),
        drain_delay: Duration::from_millis(args.drain_delay_ms),
        cleanup_deadline: Duration::from_secs(args.cleanup_deadline_secs),
    };
    let quarantine = Duration::from_secs(args.port_quarantine_secs);
    loop {
        let mut leading = leading_rx.clone();
        let mut stop = stop_rx.clone();
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
        if *stop_rx.borrow() {
            break;
        }
        if synced_rx.clone().wait_for(|s| *s).await.is_err() {
            break;
        }
        // The port book from a fresh list, not the cache: a watch can lag behind writes
        // the previous leader made just before it went.
        let scope = args.common.namespaces();
        let listed = match Api::<ElastiService>::all(client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %DisplayChain(&e), "listing ElastiServices at takeover failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let book = PortBook::from_statuses(
            args.proxy_ports.clone(),
            quarantine,
            listed
                .iter()
                .filter(|es| {
                    scope
                        .as_ref()
                        .is_none_or(|ns| es.namespace().is_some_and(|n| ns.contains(&n)))
                })
                .filter_map(|es| {
                    let ports = es.status.as_ref()?.proxy_ports.as_slice();
                    Some(((es.namespace().unwrap_or_default(), es.name_any()), ports))
                }),
        );
        metrics.leader.set(1);
        metrics.proxy_ports.set(book.allocated() as i64);
        tracing::info!(identity = %identity, proxy_ports = book.allocated(), "leading: controller started");
        let pokes = leader_state.start(Instant::now());
        let ctx = Arc::new(Context {
            client: client.clone(),
            scaler: scaler.clone(),
            prometheus: prometheus.clone(),
            ports: Mutex::new(book),
            metrics: metrics.clone(),
            settings: settings.clone(),
            store: store.clone(),
            agents: AgentsView {
                pods: pods.clone(),
                nodes: nodes.clone(),
            },
            leader: leader_state.clone(),
            fence: Fence::new(leading_rx.clone()),
            drain_clock: Default::default(),
        });
        let (mut lost, mut stop) = (leading_rx.clone(), stop_rx.clone());
        let until = async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        };
        reconcile::run(ctx, pokes, until).await;
        leader_state.end();
        metrics.leader.set(0);
        tracing::info!(identity = %identity, "controller stopped");
    }
    // Give the Lease up (the leader task does on stop) before going.
    if let Some(task) = leader_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    for task in [wake_task, admin_task, reflector_task, agent_task, node_task] {
        task.abort();
    }
    Ok(())
}

async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
