//! An ElastiService's triggers, read into one [`Idleness`]:
//!
//! - [`prometheus`]: KubeElasti's `prometheus` triggers, from an untrusted server;
//! - `activity` (elasti's): the agents' connection counts ([`crate::activity`]), idle once
//!   nothing connected and nothing was open for the cooldown.
//!
//! Any trigger that reads busy keeps the target up (or wakes it); any that cannot be read
//! keeps it as it is.
pub mod prometheus;

use std::{collections::BTreeMap, time::Duration};

use elasti_api::{ElastiService, TriggerType};
use elasti_runtime::DisplayChain;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

pub use prometheus::Prometheus;

use crate::{activity::Activity, scale::verdict::Idleness};

/// The label a Secret must carry for its keys to be sent as a trigger's headers: only
/// someone who may write the Secret can offer it, so an ElastiService cannot send just
/// any Secret of its namespace to a server of its choosing.
pub const HEADERS_SECRET_LABEL: &str = "elasti.truefoundry.com/trigger-headers";

/// Reads every trigger of `es`; `activity(cooldown)` reads the agents' reports.
pub async fn read(
    client: &Client,
    prometheus: &Prometheus,
    es: &ElastiService,
    activity: impl Fn(Duration) -> Idleness,
) -> Idleness {
    let cooldown = Duration::from_secs(u64::try_from(es.spec.cooldown_period).unwrap_or(0));
    let mut readings = Vec::with_capacity(es.spec.triggers.len());
    for t in &es.spec.triggers {
        let reading = match (t.kind, t.prometheus()) {
            (TriggerType::Activity, _) => activity(cooldown),
            (TriggerType::Prometheus, None) => Idleness::Unknown {
                detail: "a prometheus trigger without metadata".into(),
            },
            (TriggerType::Prometheus, Some(p)) => {
                let headers = match &p.headers_from_secret {
                    Some(name) => match secret_headers(client, es, name).await {
                        Ok(h) => h,
                        Err(detail) => {
                            readings.push(Idleness::Unknown { detail });
                            continue;
                        }
                    },
                    None => BTreeMap::new(),
                };
                match prometheus.read(p, &headers).await {
                    Ok(r) if r.value >= r.threshold => Idleness::Busy {
                        detail: format!("{} = {} >= {}", p.query, r.value, r.threshold),
                    },
                    Ok(_) => Idleness::Idle,
                    Err(e) => Idleness::Unknown {
                        detail: DisplayChain(&e).to_string(),
                    },
                }
            }
        };
        readings.push(reading);
    }
    Idleness::all(readings)
}

/// The headers Secret `name` of `es`'s namespace holds.
async fn secret_headers(
    client: &Client,
    es: &ElastiService,
    name: &str,
) -> Result<BTreeMap<String, String>, String> {
    let ns = es.namespace().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {name}: {}", DisplayChain(&e)))?
        .ok_or_else(|| format!("Secret {name} not found"))?;
    if secret
        .labels()
        .get(HEADERS_SECRET_LABEL)
        .map(String::as_str)
        != Some("true")
    {
        return Err(format!(
            "Secret {name} does not carry the label {HEADERS_SECRET_LABEL}=true"
        ));
    }
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            String::from_utf8(v.0)
                .map(|v| (k.clone(), v.trim().to_string()))
                .map_err(|_| format!("Secret {name} key {k} is not UTF-8"))
        })
        .collect()
}

/// An `activity` trigger's reading, for a target with `cooldown`. Pure.
pub fn from_activity(activity: Activity, cooldown: Duration) -> Idleness {
    match activity {
        Activity::Open(nodes) => Idleness::Busy {
            detail: format!("connections open through {}", nodes.join(", ")),
        },
        Activity::Quiet(quiet) if quiet >= cooldown => Idleness::Idle,
        Activity::Quiet(quiet) => Idleness::Recent {
            detail: format!("last activity {}s ago", quiet.as_secs()),
            recheck: cooldown - quiet,
        },
        Activity::Unknown(detail) => Idleness::Unknown { detail },
    }
}

/// The metric label of a reading.
pub fn label(reading: &Idleness) -> &'static str {
    match reading {
        Idleness::Idle => "idle",
        Idleness::Recent { .. } => "recent",
        Idleness::Busy { .. } => "busy",
        Idleness::Unknown { .. } => "unknown",
    }
}

#[cfg(test)]
mod tests;
