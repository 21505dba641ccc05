//! Scaling targets to and from zero.
//!
//! - [`verdict`]: whether to sleep, wake or stay (pure).
//! - [`target`]: replicas through the `/scale` subresource.
//! - [`keda`]: pausing a ScaledObject around elasti's own scaling.
//! - [`drain`]: the Service's pods out of its endpoints before a scale-down, back at the
//!   scale-up.
//! - [`Scaler`]: the scale-up (from a wake, a trigger or the schedule, with the group) and
//!   the scale-down, with their events, metrics and status.
pub mod drain;
pub mod keda;
pub mod target;
pub mod verdict;

use std::{collections::HashSet, sync::Arc, sync::Mutex};

use elasti_api::{AutoscalerType, ElastiService};
use elasti_runtime::DisplayChain;
use jiff::Timestamp;
use kube::{
    Client, Resource, ResourceExt,
    runtime::events::{Event, EventType, Recorder},
};

pub use verdict::UpCause;

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

/// The Events API refuses a `note` longer than this many bytes.
pub const MAX_NOTE: usize = 1024;

/// `text` cut to at most `max` bytes, on a character boundary, marked with `…` if cut.
pub fn clip(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
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
    /// ElastiService), un-pausing KEDA first and recording `lastScaledUpTime`. `cause`
    /// (`wake`, `trigger`, `schedule`, `group`, `delete`) labels the metric and the event.
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
        // The pods take longer to start than the Service takes to select them again, so the
        // drain comes out after the scale, not before it.
        let (recorded, restored) = futures::join!(
            status::patch(
                &self.client,
                es,
                serde_json::json!({ "lastScaledUpTime": Timestamp::now() }),
            ),
            drain::restore(&self.client, ns, &es.spec.service)
        );
        if let Err(e) = restored {
            // The reconcile that follows takes it out (decide: up, not pending, drained).
            tracing::warn!(namespace = %ns, elastiservice = %key.1, error = %DisplayChain(&e), "taking the drain out of the Service failed");
        }
        recorded.map_err(Error::Status)?;
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

    /// [`Scaler::up`] of `es` and, in parallel, of the group `members` its wake reaches.
    /// A member that fails gets a `ScaleUpFailed` event with the cause chain; the result is
    /// `es`'s own, and how many members failed.
    pub async fn up_with(
        &self,
        es: &ElastiService,
        members: &[Arc<ElastiService>],
        cause: &str,
    ) -> (Result<ScaleUp, Error>, usize) {
        let own = self.up(es, cause);
        let others = futures::future::join_all(members.iter().map(|m| async move {
            let r = self.up(m, "group").await;
            if let Err(e) = &r {
                self.event(
                    m,
                    EventType::Warning,
                    "ScaleUpFailed",
                    format!(
                        "woken with {}: scaling up failed: {}",
                        es.name_any(),
                        DisplayChain(e)
                    ),
                )
                .await;
            }
            r.is_err()
        }));
        let (own, others) = futures::join!(own, others);
        (own, others.into_iter().filter(|f| *f).count())
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

    /// Publishes an event on `es`; a failure to publish is logged, never fatal. The note
    /// is cut to the Events API's limit (a cause chain can be longer).
    pub async fn event(&self, es: &ElastiService, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(clip(note, MAX_NOTE)),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &es.object_ref(&())).await {
            tracing::warn!(error = %DisplayChain(&e), reason, "publishing event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        assert_eq!(clip("short".into(), 10), "short");
        let cut = clip("é".repeat(1000), MAX_NOTE);
        assert!(cut.len() <= MAX_NOTE && cut.ends_with('…'), "{}", cut.len());
    }
}
