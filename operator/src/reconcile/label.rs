//! The managed label ([`MANAGED_LABEL`]) on each managed Service and, for a Service
//! without a selector, on its EndpointSlices. The agents watch only objects that carry it
//! (`agent/src/watches.rs`), so a cluster's other Services and slices cost them nothing.
//! The EndpointSlice controller copies a Service's labels onto the slices it writes; the
//! slices of a Service without a selector are written by someone else, so the operator
//! labels those itself.
//!
//! Only that one label is ever written: merge patches to add it, and JSON patches guarded
//! by a `test` of its value (this ElastiService's UID) to take it out, so a label another
//! ElastiService put there is left alone.
use elasti_api::{endpoints::MANAGED_LABEL, fallback};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde::de::DeserializeOwned;

/// The EndpointSlice controller's name on the slices it writes: it takes the Service's
/// labels off its slices by itself.
const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The JSON patch could not be built.
    #[error("building the label patch of {object}")]
    Patch {
        object: String,
        #[source]
        source: serde_json::Error,
    },
    /// Reading or patching the object failed.
    #[error("{what} {object}")]
    Api {
        what: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
}

/// The label as a JSON pointer (RFC 6901: `/` is written `~1`).
fn pointer() -> String {
    format!(
        "/metadata/labels/{}",
        MANAGED_LABEL.replace('~', "~0").replace('/', "~1")
    )
}

/// Whether `labels` carry the managed label of the ElastiService whose UID is `owner`.
pub fn carries(labels: &std::collections::BTreeMap<String, String>, owner: &str) -> bool {
    labels.get(MANAGED_LABEL).is_some_and(|v| v == owner)
}

/// Whether the operator itself labels `slice` (written by neither the EndpointSlice
/// controller nor elasti's fallback): the slices of a Service without a selector.
pub fn labelled_by_operator(slice: &EndpointSlice) -> bool {
    slice
        .labels()
        .get(fallback::MANAGED_BY_LABEL)
        .is_none_or(|m| m != ENDPOINTSLICE_CONTROLLER && m != fallback::MANAGED_BY)
}

fn api<'a>(what: &'static str, kind: &'a str, name: &'a str) -> impl FnOnce(kube::Error) -> Error {
    let object = format!("{kind} {name}");
    move |source| Error::Api {
        what,
        object,
        source,
    }
}

/// Puts the label with value `owner` on `name`.
async fn add<K>(api_: &Api<K>, kind: &str, name: &str, owner: &str) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({ "metadata": { "labels": { MANAGED_LABEL: owner } } });
    api_.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api("labelling", kind, name))?;
    Ok(())
}

/// Takes the label off `name` if its value is `owner`. A changed value (the `test` fails:
/// 422) or an object that is gone needs nothing.
async fn remove<K>(api_: &Api<K>, kind: &str, name: &str, owner: &str) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let ops = serde_json::json!([
        { "op": "test", "path": pointer(), "value": owner },
        { "op": "remove", "path": pointer() }
    ]);
    let patch: Patch<()> = serde_json::from_value(ops)
        .map(Patch::Json)
        .map_err(|source| Error::Patch {
            object: format!("{kind} {name}"),
            source,
        })?;
    match api_.patch(name, &PatchParams::default(), &patch).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Ok(()),
        Err(e) => Err(api("unlabelling", kind, name)(e)),
    }
}

/// Labels Service `namespace/service` for the ElastiService whose UID is `owner`.
pub async fn label_service(
    client: &Client,
    namespace: &str,
    service: &str,
    owner: &str,
) -> Result<(), Error> {
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    add(&services, "Service", service, owner).await
}

/// Labels the EndpointSlices `slices` in `namespace` (a selectorless Service's).
pub async fn label_slices(
    client: &Client,
    namespace: &str,
    slices: &[String],
    owner: &str,
) -> Result<(), Error> {
    let api_ = Api::<EndpointSlice>::namespaced(client.clone(), namespace);
    for name in slices {
        add(&api_, "EndpointSlice", name, owner).await?;
    }
    Ok(())
}

/// Takes the label of the ElastiService whose UID is `owner` off Service
/// `namespace/service` and off the slices the operator labelled.
pub async fn unlabel(
    client: &Client,
    namespace: &str,
    service: &str,
    owner: &str,
) -> Result<(), Error> {
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    remove(&services, "Service", service, owner).await?;
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace);
    let of_service = ListParams::default().labels(&format!(
        "{}={service},{MANAGED_LABEL}={owner}",
        elasti_api::endpoints::SERVICE_NAME_LABEL
    ));
    let listed = slices.list(&of_service).await.map_err(api(
        "listing the EndpointSlices of",
        "Service",
        service,
    ))?;
    for slice in listed.items.iter().filter(|s| labelled_by_operator(s)) {
        remove(&slices, "EndpointSlice", &slice.name_any(), owner).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_is_escaped_as_a_json_pointer() {
        assert_eq!(
            pointer(),
            "/metadata/labels/elasti.truefoundry.com~1elastiservice"
        );
    }

    #[test]
    fn only_slices_nobody_else_labels_are_the_operators_to_label() {
        let slice = |managed_by: Option<&str>| EndpointSlice {
            metadata: kube::api::ObjectMeta {
                labels: managed_by
                    .map(|m| [(fallback::MANAGED_BY_LABEL.to_string(), m.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(!labelled_by_operator(&slice(Some(
            ENDPOINTSLICE_CONTROLLER
        ))));
        assert!(!labelled_by_operator(&slice(Some(fallback::MANAGED_BY))));
        assert!(labelled_by_operator(&slice(Some("someone-else"))));
        assert!(labelled_by_operator(&slice(None)));
    }

    #[test]
    fn the_label_counts_only_with_this_elastiservices_uid() {
        let labels = [(MANAGED_LABEL.to_string(), "uid-1".to_string())].into();
        assert!(carries(&labels, "uid-1"));
        assert!(!carries(&labels, "uid-2"));
        assert!(!carries(&Default::default(), "uid-1"));
    }
}
