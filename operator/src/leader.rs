//! Leader election with a `coordination.k8s.io` Lease, as client-go does it: take the
//! Lease when it is free or expired, renew it every retry period, and stop leading when a
//! renewal has not succeeded within the renew deadline. Writes carry the resourceVersion
//! they read, so two candidates can never both win the same round.
use std::time::Duration;

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

/// Whether `me` may take (or keep) a Lease with `spec` at `now`. Pure.
pub fn may_hold(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == me => true,
        Some(_) => {
            let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
                return true;
            };
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            now.as_second() > renewed.0.as_second() + duration
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
    tokio::pin!(shutdown);
    loop {
        match try_acquire_or_renew(&api, &config).await {
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
                tracing::warn!(error = %e, "lease update failed");
                let expired = last_renewal.is_none_or(|t| t.elapsed() > config.renew_deadline);
                if expired && *leading.borrow() {
                    tracing::warn!(identity = %config.identity, "renew deadline passed; stopped leading");
                    let _ = leading.send(false);
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(config.retry_period) => {}
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

async fn try_acquire_or_renew(api: &Api<Lease>, config: &Config) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let duration = i32::try_from(config.lease_duration.as_secs()).unwrap_or(15);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
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
    if !may_hold(lease.spec.as_ref(), &config.identity, now) {
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
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
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
        assert!(!may_hold(Some(&held_by("a", 0)), "b", at(10)));
        assert!(may_hold(Some(&held_by("a", 0)), "b", at(16)));
        assert!(may_hold(Some(&held_by("b", 0)), "b", at(10)), "our own");
        assert!(may_hold(None, "b", at(0)), "no spec");
        let released = LeaseSpec {
            holder_identity: None,
            ..held_by("a", 0)
        };
        assert!(may_hold(Some(&released), "b", at(1)), "released");
    }
}
