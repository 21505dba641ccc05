//! The scale-down's drain: before `/scale` goes to zero, the Service's pods leave its
//! endpoints, so that nothing which routes by endpoints (kube-proxy for NodePort and
//! LoadBalancer traffic, ingress controllers) still sends a new connection to a pod that
//! is about to get SIGTERM. The operator adds [`DRAINED_SELECTOR_KEY`] to the Service's
//! selector; no pod carries it, so the EndpointSlice controller lists none, and the
//! fallback slices' agents (which go on forwarding to the pods they last saw Ready) are
//! all that is left. The key comes out again at the scale-up.
//!
//! Both are JSON patches of that one key: the rest of the selector (the tenant's) is
//! never written, and a Service without a selector (its endpoints are its owner's) is
//! never drained. The key's value is the ElastiService's UID: a valid label value
//! whatever the length of its name, and it says who drained the Service.
use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use elasti_api::endpoints::DRAINED_SELECTOR_KEY;
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

/// Since when each drained Service (namespace, name) has listed no pod, as this replica
/// saw it. A new leader starts with none, so its wait starts again: longer, never shorter.
#[derive(Debug, Default)]
pub struct Clock(Mutex<HashMap<(String, String), Instant>>);

impl Clock {
    /// How long `service` has been drained with no pod listed (`empty`), or `None` (and
    /// forgotten) when it is not.
    pub fn drained_for(&self, service: (String, String), empty: bool) -> Option<Duration> {
        let mut since = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if empty {
            Some(since.entry(service).or_insert_with(Instant::now).elapsed())
        } else {
            since.remove(&service);
            None
        }
    }
}

/// The selector key as a JSON pointer (RFC 6901: `/` is written `~1`).
fn pointer() -> String {
    format!(
        "/spec/selector/{}",
        DRAINED_SELECTOR_KEY.replace('~', "~0").replace('/', "~1")
    )
}

/// Whether `svc` is drained now.
pub fn is_drained(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| s.contains_key(DRAINED_SELECTOR_KEY))
}

/// Whether `svc` selects pods at all (a Service without a selector is never drained).
pub fn has_selector(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The JSON patch could not be built.
    #[error("building the JSON patch of Service {service}")]
    Patch {
        service: String,
        #[source]
        source: serde_json::Error,
    },
    /// Reading or patching the Service failed.
    #[error("{what} Service {service}")]
    Api {
        what: &'static str,
        service: String,
        #[source]
        source: kube::Error,
    },
}

fn json_patch(service: &str, ops: serde_json::Value) -> Result<Patch<()>, Error> {
    serde_json::from_value(ops)
        .map(Patch::Json)
        .map_err(|source| Error::Patch {
            service: service.into(),
            source,
        })
}

fn api(what: &'static str, service: &str) -> impl FnOnce(kube::Error) -> Error {
    let service = service.to_string();
    move |source| Error::Api {
        what,
        service,
        source,
    }
}

/// Drains Service `namespace/service` for the ElastiService whose UID is `owner`. An
/// `add` under a selector that is gone fails by itself, so a Service that lost its
/// selector since it was read is not given one.
pub async fn drain(
    client: &Client,
    namespace: &str,
    service: &str,
    owner: &str,
) -> Result<(), Error> {
    let patch = json_patch(
        service,
        serde_json::json!([{ "op": "add", "path": pointer(), "value": owner }]),
    )?;
    Api::<Service>::namespaced(client.clone(), namespace)
        .patch(service, &PatchParams::default(), &patch)
        .await
        .map_err(api("draining", service))?;
    Ok(())
}

/// Takes the drain out of Service `namespace/service`, if it is drained: a read, and a
/// patch only when the key is there (guarded by a `test`, so a Service changed in
/// between is left as it is). A Service that is gone needs nothing.
pub async fn restore(client: &Client, namespace: &str, service: &str) -> Result<bool, Error> {
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    let Some(svc) = services
        .get_opt(service)
        .await
        .map_err(api("reading", service))?
    else {
        return Ok(false);
    };
    let Some(value) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.get(DRAINED_SELECTOR_KEY))
    else {
        return Ok(false);
    };
    let patch = json_patch(
        service,
        serde_json::json!([
            { "op": "test", "path": pointer(), "value": value },
            { "op": "remove", "path": pointer() }
        ]),
    )?;
    services
        .patch(service, &PatchParams::default(), &patch)
        .await
        .map_err(api("taking the drain out of", service))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_escaped_as_a_json_pointer() {
        assert_eq!(pointer(), "/spec/selector/elasti.truefoundry.com~1drained");
    }

    #[test]
    fn a_service_is_drained_by_the_key_alone() {
        let svc = |sel: serde_json::Value| -> Service {
            serde_json::from_value(serde_json::json!({"spec": {"selector": sel}}))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(!is_drained(&svc(serde_json::json!({"app": "web"}))));
        assert!(has_selector(&svc(serde_json::json!({"app": "web"}))));
        assert!(is_drained(&svc(
            serde_json::json!({"app": "web", DRAINED_SELECTOR_KEY: "web"})
        )));
        assert!(!has_selector(&svc(serde_json::json!({}))));
        assert!(!has_selector(&Service::default()));
    }
}
