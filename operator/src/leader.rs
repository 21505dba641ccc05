//! Leader election with a `coordination.k8s.io` Lease, as client-go does it: take the
//! Lease when it is free or expired, renew it every retry period, and stop leading when a
//! renewal has not succeeded within the renew deadline. Writes carry the resourceVersion
//! they read, so two candidates can never both win the same round.
//!
//! Expiry is timed from renewals observed here, never from the holder's timestamps: the
//! holder's clock is not ours. A candidate that sees the Lease record change notes when;
//! it takes the Lease only once the record has stayed the same for the Lease's whole
//! duration (client-go's `observedTime`).
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity (the pod name).
    pub identity: String,
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long stops leading.
    pub renew_deadline: Duration,
    /// How often to try to take or renew the Lease.
    pub retry_period: Duration,
}

/// A Lease record as last seen, and when it was first seen so.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    record: Option<LeaseSpec>,
    at: Instant,
}

impl Observed {
    /// `prev` updated with `spec` seen at `now`: the time moves only when the record
    /// changed.
    pub fn update(prev: Option<Self>, spec: Option<&LeaseSpec>, now: Instant) -> Self {
        match prev {
            Some(p) if p.record.as_ref() == spec => p,
            _ => Self {
                record: spec.cloned(),
                at: now,
            },
        }
    }
}

/// Whether `me` may take (or keep) the Lease `observed` at `now`. Pure.
pub fn may_hold(observed: &Observed, me: &str, now: Instant) -> bool {
    let Some(spec) = observed.record.as_ref() else {
        return true;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == me => true,
        Some(_) => {
            let duration = u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15);
            now.duration_since(observed.at) > Duration::from_secs(duration)
        }
    }
}

/// Campaigns for and holds the Lease, publishing whether this replica leads, until
/// `shutdown` resolves; then gives the Lease up so a standby takes over at once.
pub async fn run(
    client: Client,
    config: Config,
    leading: watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut last_renewal: Option<tokio::time::Instant> = None;
    let mut observed: Option<Observed> = None;
    tokio::pin!(shutdown);
    loop {
        match try_acquire_or_renew(&api, &config, &mut observed).await {
            Ok(true) => {
                last_renewal = Some(tokio::time::Instant::now());
                if !*leading.borrow() {
                    tracing::info!(identity = %config.identity, lease = %config.name, "started leading");
                    let _ = leading.send(true);
                }
            }
            Ok(false) => {
                if *leading.borrow() {
                    tracing::warn!(identity = %config.identity, "lost the lease to another candidate");
                    let _ = leading.send(false);
                }
                last_renewal = None;
            }
            Err(e) => {
                tracing::warn!(error = %elasti_runtime::DisplayChain(&e), "lease update failed");
                let expired = last_renewal.is_none_or(|t| t.elapsed() > config.renew_deadline);
                if expired && *leading.borrow() {
                    tracing::warn!(identity = %config.identity, "renew deadline passed; stopped leading");
                    let _ = leading.send(false);
                }
            }
        }
        // A leader whose renewals hang stops at the deadline, not when the call returns.
        let wait = match (last_renewal, *leading.borrow()) {
            (Some(t), true) => config.retry_period.min(
                (t + config.renew_deadline).saturating_duration_since(tokio::time::Instant::now()),
            ),
            _ => config.retry_period,
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(wait) => {}
        }
        if *leading.borrow() && last_renewal.is_some_and(|t| t.elapsed() > config.renew_deadline) {
            tracing::warn!(identity = %config.identity, "renew deadline passed; stopped leading");
            let _ = leading.send(false);
        }
    }
    if *leading.borrow() {
        let _ = leading.send(false);
        if let Err(e) = release(&api, &config).await {
            tracing::warn!(error = %e, "releasing the lease failed; a standby waits for it to expire");
        } else {
            tracing::info!(identity = %config.identity, "lease released");
        }
    }
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &Config,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let duration = i32::try_from(config.lease_duration.as_secs()).unwrap_or(15);
    // A renewal that hangs past the deadline counts as failed.
    let read = tokio::time::timeout(config.renew_deadline, api.get_opt(&config.name))
        .await
        .map_err(|_| kube::Error::Service("reading the Lease timed out".into()))??;
    let Some(mut lease) = read else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let seen = Observed::update(observed.take(), lease.spec.as_ref(), Instant::now());
    let may = may_hold(&seen, &config.identity, Instant::now());
    *observed = Some(seen);
    if !may {
        return Ok(false);
    }
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(duration);
    match tokio::time::timeout(
        config.renew_deadline,
        api.replace(&config.name, &PostParams::default(), &lease),
    )
    .await
    .map_err(|_| kube::Error::Service("writing the Lease timed out".into()))?
    {
        Ok(written) => {
            *observed = Some(Observed::update(
                None,
                written.spec.as_ref(),
                Instant::now(),
            ));
            Ok(true)
        }
        // Someone else wrote it since we read it: they won this round.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, config: &Config) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    api.replace(&config.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn held_by(who: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[test]
    fn a_live_lease_of_another_is_respected_and_an_expired_one_taken() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let seen = Observed::update(None, Some(&held_by("a", 0)), s(0));
        assert!(!may_hold(&seen, "b", s(10)));
        // Renewed at 10: the clock starts again.
        let seen = Observed::update(Some(seen), Some(&held_by("a", 10)), s(10));
        assert!(!may_hold(&seen, "b", s(20)));
        // Unchanged since 10: expired after 15 s more.
        let seen = Observed::update(Some(seen), Some(&held_by("a", 10)), s(20));
        assert!(!may_hold(&seen, "b", s(25)));
        assert!(may_hold(&seen, "b", s(26)));
        assert!(may_hold(&seen, "a", s(11)), "our own");
        assert!(
            may_hold(&Observed::update(None, None, s(0)), "b", s(0)),
            "no spec"
        );
        let released = LeaseSpec {
            holder_identity: None,
            ..held_by("a", 0)
        };
        assert!(
            may_hold(&Observed::update(None, Some(&released), s(0)), "b", s(1)),
            "released"
        );
    }

    /// Issue 14 item 7: the holder's clock is not ours. A holder whose clock runs a minute
    /// behind writes renewTimes that always look expired here, though it renews every
    /// retry period: expiry must be timed from renewals observed locally.
    #[test]
    fn a_lease_renewed_by_a_holder_with_a_slow_clock_is_not_taken() {
        let t0 = Instant::now();
        let seen = Observed::update(None, Some(&held_by("a", -60)), t0);
        assert!(
            !may_hold(&seen, "b", t0 + Duration::from_secs(1)),
            "taken from a live holder"
        );
    }
}
