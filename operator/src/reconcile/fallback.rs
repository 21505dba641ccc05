//! The fallback EndpointSlice (design §2.4): while a Service is in proxy mode, a slice of
//! its own whose endpoints are the agents' node IPs at the allocated proxy ports. kube-proxy
//! then sends NodePort traffic and connects from outside the intercepted cgroups to an
//! agent, and ingress controllers that dial endpoints find one. Removed in serve mode.
use std::{collections::BTreeMap, net::IpAddr};

use elasti_api::{
    ElastiService, ProxyPort,
    endpoints::SERVICE_NAME_LABEL,
    fallback::{MANAGED_BY, MANAGED_BY_LABEL},
};
use k8s_openapi::api::{
    core::v1::Pod,
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams},
};

/// The field manager of the operator's server-side applies.
pub const FIELD_MANAGER: &str = "elasti-operator";

/// Where the agents run.
#[derive(Clone, Debug)]
pub struct Agents {
    pub namespace: String,
    /// Label selector of the agent pods.
    pub selector: String,
}

fn slice_name(service: &str, family: &str) -> String {
    format!("{service}-elasti-{family}")
}

/// The fallback slices for `service` (one per address family present). Pure.
pub fn desired(
    es: &ElastiService,
    service: &str,
    ports: &[ProxyPort],
    agent_ips: &[IpAddr],
) -> Vec<EndpointSlice> {
    let owner = es.controller_owner_ref(&());
    let mut by_family: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ip in agent_ips {
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        by_family.entry(family).or_default().push(ip.to_string());
    }
    by_family
        .into_iter()
        .map(|(family, mut ips)| {
            ips.sort();
            ips.dedup();
            EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(slice_name(service, &family.to_ascii_lowercase())),
                    namespace: es.namespace(),
                    labels: Some(
                        [
                            (SERVICE_NAME_LABEL.to_string(), service.to_string()),
                            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                        ]
                        .into(),
                    ),
                    owner_references: owner.clone().map(|o| vec![o]),
                    ..Default::default()
                },
                address_type: family.into(),
                endpoints: ips
                    .into_iter()
                    .map(|ip| Endpoint {
                        addresses: vec![ip],
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            serving: Some(true),
                            terminating: Some(false),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ports: Some(
                    ports
                        .iter()
                        .map(|p| EndpointPort {
                            // kube-proxy matches slice ports to Service ports by name.
                            name: Some(p.name.clone()),
                            port: Some(p.proxy_port),
                            protocol: Some("TCP".into()),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            }
        })
        .collect()
}

/// The node IPs of the Ready agent pods (they run on the host network).
pub async fn agent_ips(client: &Client, agents: &Agents) -> Result<Vec<IpAddr>, kube::Error> {
    let pods = Api::<Pod>::namespaced(client.clone(), &agents.namespace)
        .list(&ListParams::default().labels(&agents.selector))
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .flat_map(|p| p.status.iter().flat_map(|s| s.pod_ips.iter().flatten()))
        .filter_map(|ip| ip.ip.parse().ok())
        .collect())
}

/// Makes the fallback slices of `service` exactly `want` (none outside proxy mode).
pub async fn sync(
    client: &Client,
    namespace: &str,
    service: &str,
    want: Vec<EndpointSlice>,
) -> Result<(), kube::Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let mut keep = Vec::new();
    for slice in want {
        let name = slice.name_any();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&slice),
        )
        .await?;
        keep.push(name);
    }
    let ours = api
        .list(&ListParams::default().labels(&format!(
            "{SERVICE_NAME_LABEL}={service},{MANAGED_BY_LABEL}={MANAGED_BY}"
        )))
        .await?;
    for slice in ours.items {
        let name = slice.name_any();
        if !keep.contains(&name) {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use elasti_api::ElastiServiceSpec;

    use super::*;

    #[test]
    fn one_slice_per_family_named_for_the_service_ports() {
        let mut es = ElastiService::new(
            "web",
            serde_json::from_value::<ElastiServiceSpec>(serde_json::json!({
                "service": "web",
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        );
        es.metadata.namespace = Some("ns".into());
        es.metadata.uid = Some("u".into());
        let ports = [ProxyPort {
            name: "http".into(),
            port: 80,
            protocol: "TCP".into(),
            proxy_port: 24000,
        }];
        let ips: Vec<IpAddr> = ["10.0.0.2", "fd00::2", "10.0.0.1", "10.0.0.2"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let slices = desired(&es, "web", &ports, &ips);
        assert_eq!(slices.len(), 2);
        let v4 = &slices[0];
        assert_eq!(v4.address_type, "IPv4");
        assert_eq!(v4.endpoints.len(), 2, "deduplicated");
        assert!(elasti_api::fallback::is_fallback_slice(v4));
        let port = &v4.ports.as_ref().map(|p| p[0].clone()).unwrap_or_default();
        assert_eq!(
            (port.name.as_deref(), port.port),
            (Some("http"), Some(24000))
        );
        assert_eq!(
            v4.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].name.clone()),
            Some("web".to_string())
        );
        assert!(desired(&es, "web", &ports, &[]).is_empty());
    }
}
