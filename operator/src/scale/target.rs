//! The target's replicas, through its `/scale` subresource: Deployment, StatefulSet, Argo
//! Rollout, or any kind discovery finds that has one.
use std::{collections::HashMap, sync::Mutex};

use elasti_api::ScaleTargetRef;
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams},
    core::{ApiResource, GroupVersionKind},
    discovery::pinned_kind,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Discovery does not know the target's kind (e.g. Argo Rollouts is not installed).
    #[error("kind {kind} of {api_version} is not served by the cluster")]
    KindNotServed {
        kind: String,
        api_version: String,
        #[source]
        source: kube::Error,
    },
    /// The target object does not exist.
    #[error("{kind}/{name} not found")]
    NotFound { kind: String, name: String },
    /// Reading or patching the scale subresource failed.
    #[error("{kind}/{name} /scale")]
    Scale {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Resolves targets' kinds once (discovery is cached) and reads and writes their scale.
pub struct Targets {
    client: Client,
    kinds: Mutex<HashMap<GroupVersionKind, ApiResource>>,
}

fn gvk(target: &ScaleTargetRef) -> GroupVersionKind {
    let api_version = serde_json::to_value(target.api_version)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    GroupVersionKind::gvk(group, version, target.kind.as_str())
}

impl Targets {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    async fn api(
        &self,
        namespace: &str,
        target: &ScaleTargetRef,
    ) -> Result<Api<DynamicObject>, Error> {
        let gvk = gvk(target);
        let cached = self.kinds.lock().ok().and_then(|k| k.get(&gvk).cloned());
        let resource = match cached {
            Some(r) => r,
            None => {
                let (r, _) = pinned_kind(&self.client, &gvk).await.map_err(|source| {
                    Error::KindNotServed {
                        kind: gvk.kind.clone(),
                        api_version: gvk.api_version(),
                        source,
                    }
                })?;
                if let Ok(mut k) = self.kinds.lock() {
                    k.insert(gvk, r.clone());
                }
                r
            }
        };
        Ok(Api::namespaced_with(
            self.client.clone(),
            namespace,
            &resource,
        ))
    }

    fn scale_error(target: &ScaleTargetRef, source: kube::Error) -> Error {
        let (kind, name) = (target.kind.as_str().to_string(), target.name.clone());
        match source {
            kube::Error::Api(ref s) if s.code == 404 => Error::NotFound { kind, name },
            source => Error::Scale { kind, name, source },
        }
    }

    /// The target's desired replicas (`spec.replicas` of its scale).
    pub async fn replicas(&self, namespace: &str, target: &ScaleTargetRef) -> Result<i32, Error> {
        let scale = self
            .api(namespace, target)
            .await?
            .get_scale(&target.name)
            .await
            .map_err(|e| Self::scale_error(target, e))?;
        Ok(scale.spec.and_then(|s| s.replicas).unwrap_or(0))
    }

    /// Sets the target's replicas. A merge patch of the same value is a no-op, so
    /// repeating it is safe.
    pub async fn set_replicas(
        &self,
        namespace: &str,
        target: &ScaleTargetRef,
        replicas: i32,
    ) -> Result<(), Error> {
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        self.api(namespace, target)
            .await?
            .patch_scale(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Self::scale_error(target, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use elasti_api::{TargetApiVersion, TargetKind};

    use super::*;

    #[test]
    fn legacy_kinds_resolve_to_their_group_version_kind() {
        let g = gvk(&ScaleTargetRef {
            api_version: TargetApiVersion::ArgoprojV1alpha1,
            kind: TargetKind::LegacyRollouts,
            name: "r".into(),
        });
        assert_eq!(
            (g.group.as_str(), g.version.as_str(), g.kind.as_str()),
            ("argoproj.io", "v1alpha1", "Rollout")
        );
        let g = gvk(&ScaleTargetRef {
            api_version: TargetApiVersion::AppsV1,
            kind: TargetKind::LegacyDeployments,
            name: "d".into(),
        });
        assert_eq!(
            (g.group.as_str(), g.version.as_str(), g.kind.as_str()),
            ("apps", "v1", "Deployment")
        );
    }
}
