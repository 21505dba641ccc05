//! Scaling targets to and from zero.
//!
//! - [`verdict`]: whether to sleep, wake or stay (pure).
//! - [`target`]: replicas through the `/scale` subresource.
//! - [`keda`]: pausing a ScaledObject around elasti's own scaling.
//! - [`Scaler`]: the scale-up (from a wake or a trigger) and the scale-down, with their
//!   events, metrics and status.
pub mod keda;
pub mod target;
pub mod verdict;

use std::{collections::HashSet, sync::Arc, sync::Mutex};

use elasti_api::{AutoscalerType, ElastiService};
use jiff::Timestamp;
use kube::{
    Client, Resource, ResourceExt,
    runtime::events::{Event, EventType, Recorder},
};

use crate::{metrics::Metrics, ports::Owner, status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target's scale could not be read or written.
    #[error(transparent)]
    Target(#[from] target::Error),
    /// The KEDA ScaledObject could not be paused or un-paused.
    #[error("KEDA ScaledObject {name}")]
    Keda {
        name: String,
        #[source]
        source: kube::Error,
    },
    /// `status.lastScaledUpTime` could not be written.
    #[error("writing status")]
    Status(#[source] kube::Error),
}

/// What a scale-up did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleUp {
    /// The target was at zero and now has `to` replicas.
    Scaled { to: i32 },
    /// The target already had replicas.
    AlreadyUp { replicas: i32 },
    /// Another scale-up of the same ElastiService is under way.
    InFlight,
}

pub struct Scaler {
    client: Client,
    pub targets: target::Targets,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    in_flight: Mutex<HashSet<Owner>>,
}

/// Removes the owner from the in-flight set however the scale-up ends.
struct InFlight<'a>(&'a Mutex<HashSet<Owner>>, Owner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(&self.1);
        }
    }
}

fn owner(es: &ElastiService) -> Owner {
    (es.namespace().unwrap_or_default(), es.name_any())
}

impl Scaler {
    pub fn new(client: Client, recorder: Recorder, metrics: Arc<Metrics>) -> Self {
        Self {
            targets: target::Targets::new(client.clone()),
            client,
            recorder,
            metrics,
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    fn keda_name(es: &ElastiService) -> Option<&str> {
        es.spec
            .autoscaler
            .as_ref()
            .filter(|a| a.kind == AutoscalerType::Keda)
            .map(|a| a.name.as_str())
    }

    /// Scales the target from zero to `minTargetReplicas` (idempotent, deduplicated per
    /// ElastiService), un-pausing KEDA first and recording `lastScaledUpTime`.
    pub async fn up(&self, es: &ElastiService, cause: &str) -> Result<ScaleUp, Error> {
        let key = owner(es);
        let first = self
            .in_flight
            .lock()
            .is_ok_and(|mut set| set.insert(key.clone()));
        if !first {
            return Ok(ScaleUp::InFlight);
        }
        let _guard = InFlight(&self.in_flight, key.clone());
        let (ns, target) = (&key.0, &es.spec.scale_target_ref);
        let replicas = self.targets.replicas(ns, target).await?;
        if replicas > 0 {
            return Ok(ScaleUp::AlreadyUp { replicas });
        }
        if let Some(name) = Self::keda_name(es) {
            keda::unpause(&self.client, ns, name)
                .await
                .map_err(|source| Error::Keda {
                    name: name.into(),
                    source,
                })?;
        }
        let to = es.spec.min_target_replicas.max(1);
        self.targets.set_replicas(ns, target, to).await?;
        status::patch(
            &self.client,
            es,
            serde_json::json!({ "lastScaledUpTime": Timestamp::now() }),
        )
        .await
        .map_err(Error::Status)?;
        self.metrics.scaled("up", cause);
        tracing::info!(namespace = %ns, elastiservice = %key.1, target = %target.name, to, cause, "scaled up");
        self.event(
            es,
            EventType::Normal,
            "ScaledUp",
            format!(
                "Scaled {} {} from 0 to {to}: {cause}",
                target.kind.as_str(),
                target.name
            ),
        )
        .await;
        Ok(ScaleUp::Scaled { to })
    }

    /// Scales the target to zero, pausing KEDA first.
    pub async fn down(&self, es: &ElastiService, why: &str) -> Result<(), Error> {
        let (ns, name) = owner(es);
        let target = &es.spec.scale_target_ref;
        if let Some(so) = Self::keda_name(es) {
            keda::pause(&self.client, &ns, so)
                .await
                .map_err(|source| Error::Keda {
                    name: so.into(),
                    source,
                })?;
        }
        self.targets.set_replicas(&ns, target, 0).await?;
        self.metrics.scaled("down", "idle");
        tracing::info!(namespace = %ns, elastiservice = %name, target = %target.name, why, "scaled to zero");
        self.event(
            es,
            EventType::Normal,
            "ScaledToZero",
            format!(
                "Scaled {} {} to 0: {why}",
                target.kind.as_str(),
                target.name
            ),
        )
        .await;
        Ok(())
    }

    /// Publishes an event on `es`; a failure to publish is logged, never fatal.
    pub async fn event(&self, es: &ElastiService, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &es.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing event failed");
        }
    }
}
