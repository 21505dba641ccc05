//! The operator's main loop: the admin server and the wake endpoint run on every replica;
//! the controller runs only while this replica leads.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use elasti_api::ElastiService;
use elasti_runtime::{DisplayChain, admin, reflect};
use futures::StreamExt;
use kube::{
    Client, ResourceExt,
    runtime::events::{Recorder, Reporter},
};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::{
    config::Args,
    leader,
    metrics::Metrics,
    ports::PortBook,
    reconcile::{self, Context, Settings, fallback::Agents},
    scale::Scaler,
    triggers::Prometheus,
    wake::{
        auth::Authenticator,
        server::{self, WakeService},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No Kubernetes client could be built (no in-cluster env, no kubeconfig).
    #[error("building the Kubernetes client failed")]
    Client(#[source] kube::Error),
}

/// Runs the operator until SIGTERM/SIGINT.
pub async fn run(args: Args) -> Result<(), Error> {
    run_until(args, shutdown_signal()).await
}

/// [`run`], until `shutdown` resolves (tests run operators in-process this way).
pub async fn run_until(
    args: Args,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::Client)?;
    let identity = args.identity();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let registry = Arc::new(registry);
    let synced = Arc::new(AtomicBool::new(false));

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let admin_task = tokio::spawn({
        let (addr, registry, ready) = (args.admin_address, registry.clone(), synced.clone());
        async move {
            if let Err(e) = admin::serve(addr, registry, ready).await {
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
        let (store, synced) = (store.clone(), synced.clone());
        async move {
            if store.wait_until_ready().await.is_ok() {
                synced.store(true, Ordering::Release);
                let _ = synced_tx.send(true);
                tracing::info!(elastiservices = store.state().len(), "synced");
            }
        }
    });

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "elasti-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    let scaler = Arc::new(Scaler::new(client.clone(), recorder, metrics.clone()));
    let wake = Arc::new(WakeService {
        auth: Authenticator::new(
            client.clone(),
            &args.agent_namespace,
            &args.agent_service_account,
        ),
        scaler: scaler.clone(),
        store: store.clone(),
        synced: synced.clone(),
        metrics: metrics.clone(),
    });
    let wake_task = tokio::spawn({
        let addr = args.wake_address;
        async move {
            if let Err(e) = server::serve(addr, wake).await {
                tracing::error!(%addr, error = %e, "wake endpoint stopped");
            }
        }
    });

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
        agents: Agents {
            namespace: args.agent_namespace.clone(),
            selector: args.agent_selector.clone(),
        },
    };
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
        metrics.leader.set(1);
        if synced_rx.clone().wait_for(|s| *s).await.is_err() {
            break;
        }
        let elastiservices = store.state();
        let book = PortBook::from_statuses(
            args.proxy_ports.clone(),
            elastiservices.iter().filter_map(|es| {
                let ports = es.status.as_ref()?.proxy_ports.as_slice();
                Some(((es.namespace().unwrap_or_default(), es.name_any()), ports))
            }),
        );
        metrics.proxy_ports.set(book.allocated() as i64);
        tracing::info!(identity = %identity, proxy_ports = book.allocated(), "leading: controller started");
        let ctx = Arc::new(Context {
            client: client.clone(),
            scaler: scaler.clone(),
            prometheus: Prometheus::new(Duration::from_secs(args.prometheus_timeout_secs)),
            ports: Mutex::new(book),
            metrics: metrics.clone(),
            settings: settings.clone(),
        });
        let (mut lost, mut stop) = (leading_rx.clone(), stop_rx.clone());
        let until = async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        };
        reconcile::run(ctx, store.clone(), until).await;
        metrics.leader.set(0);
        tracing::info!(identity = %identity, "controller stopped");
    }
    // Give the Lease up (the leader task does on stop) before going.
    if let Some(task) = leader_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    wake_task.abort();
    admin_task.abort();
    reflector_task.abort();
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
