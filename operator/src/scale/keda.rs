//! KEDA: a ScaledObject would scale a target straight back up from zero (or down from
//! `minTargetReplicas`), so it is paused at zero before elasti scales the target down and
//! un-paused when elasti scales it up again. A ScaledObject that does not exist (deleted,
//! never made, or KEDA not installed) has nothing to pause: that is not an error.
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams},
    core::{ApiResource, GroupVersionKind},
};

/// KEDA's annotation: while set, the ScaledObject holds the target at this many replicas.
pub const PAUSED_REPLICAS: &str = "autoscaling.keda.sh/paused-replicas";

fn scaled_objects(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    );
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Pauses ScaledObject `name` at zero replicas.
pub async fn pause(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    set(client, namespace, name, serde_json::json!("0")).await
}

/// Removes the pause, so KEDA scales the target again.
pub async fn unpause(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    set(client, namespace, name, serde_json::Value::Null).await
}

async fn set(
    client: &Client,
    namespace: &str,
    name: &str,
    value: serde_json::Value,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({ "metadata": { "annotations": { PAUSED_REPLICAS: value } } });
    match scaled_objects(client, namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::debug!(%namespace, scaled_object = %name, "no such ScaledObject: nothing to pause");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
