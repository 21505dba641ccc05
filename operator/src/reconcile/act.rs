//! The reconcile's writes: the scale, the status, the Service's drain, the fallback slices
//! and the events, each on its own (one that fails does not stop the others), each only
//! while this replica leads. The status goes right after the scale: the agents start
//! steering on its `ScaleDownPending` condition (`agent/src/plan/desired.rs`), and a
//! scale-down's later phases wait for them (`decide.rs`), so nothing slower comes first;
//! the drain comes after it, so that the agents know to go on forwarding to the pods it
//! takes out of the Service's endpoints. A failed scale says
//! why in the `Ready` condition and in an event, with its whole cause chain.
use std::time::Duration;

use elasti_api::ElastiService;
use elasti_runtime::DisplayChain;
use jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};

use super::{
    Context, Error,
    decide::{self, Drain, Plan, Scale, Slices},
    fallback, label,
};
use crate::scale::drain;

/// Carries out `plan` for `es`.
///
/// # Errors
/// The first write that failed (the others were still made), or [`Error::Fenced`].
pub async fn act(
    es: &ElastiService,
    plan: Plan,
    took: &super::observe::Took,
    ctx: &Context,
) -> Result<Action, Error> {
    let (ns, name) = (es.namespace().unwrap_or_default(), es.name_any());
    let now = Timestamp::now();
    let mut conditions = plan.conditions;
    let mut failed: Vec<Error> = Vec::new();

    if let Some(scale) = plan.scale {
        ctx.fence.check()?;
        let result = match &scale {
            Scale::Up { cause, members, .. } => {
                let (me, _) = ctx.scaler.up_with(es, members, cause.as_str()).await;
                me.map(drop)
            }
            Scale::Down => {
                ctx.scaler
                    .down(es, "every trigger idle after the cooldown")
                    .await
            }
        };
        match result {
            Ok(()) => {
                if matches!(scale, Scale::Down) {
                    // Members it kept up may sleep now: look at them at once.
                    let (_, keeps) = super::observe::group(es, &ctx.store.state());
                    ctx.leader
                        .poke(keeps.iter().map(|m| ObjectRef::from_obj(m.as_ref())));
                }
            }
            Err(e) => {
                let verb = match scale {
                    Scale::Up { .. } => "scaling up",
                    Scale::Down => "scaling down",
                };
                let msg = format!("{verb} failed: {}", DisplayChain(&e));
                let reason = decide::scale_failed(es, &mut conditions, &scale, &msg, now);
                ctx.scaler.event(es, EventType::Warning, reason, msg).await;
                failed.push(e.into());
            }
        }
    }

    ctx.fence.check()?;
    let written = super::write_status(
        ctx,
        es,
        super::StatusUpdate {
            mode: plan.mode,
            proxy_ports: plan.proxy_ports,
            conditions,
        },
        now,
        took,
    )
    .await;
    // The agents must have read `Draining` before the pods leave the endpoints: otherwise
    // they would hold what they could forward, and wake the target.
    let drain_now = match plan.drain {
        Drain::Drain if written.is_err() => Drain::Keep,
        d => d,
    };
    if let Err(e) = written {
        failed.push(e);
    }
    if drain_now != Drain::Keep {
        ctx.fence.check()?;
    }
    let owner = es.metadata.uid.as_deref().unwrap_or("true");
    let drained = match drain_now {
        Drain::Drain => Some(drain::drain(&ctx.client, &ns, &es.spec.service, owner).await),
        Drain::Restore => Some(
            drain::restore(&ctx.client, &ns, &es.spec.service)
                .await
                .map(drop),
        ),
        Drain::Keep => None,
    };
    if let Some(Err(e)) = drained {
        tracing::warn!(error = %DisplayChain(&e), drain = ?drain_now, "draining the Service failed");
        failed.push(e.into());
    }

    if plan.labels.service || !plan.labels.slices.is_empty() {
        ctx.fence.check()?;
        let labelled = async {
            if plan.labels.service {
                label::label_service(&ctx.client, &ns, &es.spec.service, owner).await?;
            }
            label::label_slices(&ctx.client, &ns, &plan.labels.slices, owner).await
        };
        if let Err(e) = labelled.await {
            tracing::warn!(error = %DisplayChain(&e), "labelling the Service or its slices failed");
            failed.push(e.into());
        }
    }

    let slices = match plan.slices {
        Slices::Publish(s) => Some(s),
        Slices::Remove => Some(Vec::new()),
        Slices::Keep => None,
    };
    if let Some(want) = slices {
        ctx.fence.check()?;
        if let Err(e) = fallback::sync(&ctx.client, &ns, &es.spec.service, want).await {
            tracing::warn!(error = %DisplayChain(&e), "syncing the fallback slices failed");
            failed.push(super::api_err("syncing the fallback EndpointSlices")(e));
        }
    }

    for note in plan.events {
        let kind = if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.scaler.event(es, kind, note.reason, note.note).await;
    }
    if plan.intercept_timed_out {
        ctx.metrics.intercept_timeouts.inc();
    }
    if let Some(took) = plan.woken_in {
        ctx.metrics.wake_to_ready.observe(took.as_secs_f64());
    }

    let requeue = counted_from_start(plan.requeue, took.started.elapsed());
    tracing::debug!(namespace = %ns, elastiservice = %name, ?requeue, "reconciled");
    match failed.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(Action::requeue(requeue)),
    }
}

/// The controller's requeue for a plan that wants to look again `after` the reconcile's
/// start, `elapsed` later: the decision timed it from what it observed (a cooldown's end),
/// and the controller counts from the reconcile's end, so the writes' time comes off.
/// Without it, the scale-down at a cooldown's end waited a whole reconcile longer (about
/// 90 ms, `cargo xtask bench`). Never under 50 ms, so nothing spins. Pure.
fn counted_from_start(after: Duration, elapsed: Duration) -> Duration {
    after.saturating_sub(elapsed).max(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recheck_is_counted_from_the_reconciles_start() {
        let ms = Duration::from_millis;
        assert_eq!(counted_from_start(ms(3_000), ms(90)), ms(2_910));
        assert_eq!(counted_from_start(ms(100), ms(90)), ms(50), "never a spin");
        assert_eq!(counted_from_start(ms(10), ms(90)), ms(50));
    }
}
