//! ElastiService status: Kubernetes-style conditions (pure) and the status patch.
use elasti_api::ElastiService;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};

pub use elasti_api::conditions::{READY, SCALED_TO_ZERO};

/// A condition as this generation observed it.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(now),
    }
}

/// Puts `new` in `conditions`, keeping the old transition time when the status did not
/// change (so `lastTransitionTime` says when it last flipped).
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// Merge-patches `status` of `es` with `status` (a JSON object of status fields).
pub async fn patch(
    client: &Client,
    es: &ElastiService,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let api: Api<ElastiService> =
        Api::namespaced(client.clone(), &es.namespace().unwrap_or_default());
    api.patch_status(
        &es.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap_or_else(|e| panic!("{e}"));
        let t1 = Timestamp::from_second(1_800_000_100).unwrap_or_else(|e| panic!("{e}"));
        let t2 = Timestamp::from_second(1_800_000_200).unwrap_or_else(|e| panic!("{e}"));
        let mut c = Vec::new();
        set_condition(&mut c, condition(READY, true, "Wired", "", Some(1), t0));
        set_condition(
            &mut c,
            condition(READY, true, "Wired", "again", Some(2), t1),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Time(t0));
        assert_eq!(c[0].message, "again");
        set_condition(
            &mut c,
            condition(READY, false, "ServiceNotFound", "", Some(2), t2),
        );
        assert_eq!(c[0].last_transition_time, Time(t2));
    }
}
