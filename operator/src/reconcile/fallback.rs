//! The fallback EndpointSlices: while a Service is in proxy mode (or a scale-down is
//! pending), slices of its own whose endpoints are the Ready agents at the allocated proxy
//! ports. kube-proxy then sends NodePort traffic and connects from outside the
//! intercepted cgroups to an agent, and ingress controllers that dial endpoints find one.
//!
//! Every endpoint names its node and zone, so `externalTrafficPolicy: Local` and
//! `internalTrafficPolicy: Local` keep the node's own agent. Slices hold at most
//! [`MAX_ENDPOINTS`] endpoints each, as the EndpointSlice controller shards them (the API
//! refuses more than 1,000).
use std::collections::BTreeMap;

use elasti_api::{
    ElastiService, ProxyPort,
    endpoints::{MANAGED_LABEL, SERVICE_NAME_LABEL},
    fallback::{MANAGED_BY, MANAGED_BY_LABEL},
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams},
};

use super::agents::AgentEndpoint;

/// The field manager of the operator's server-side applies.
pub const FIELD_MANAGER: &str = "elasti-operator";
/// Endpoints per slice: the EndpointSlice controller's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS: usize = 100;

/// The first shard keeps the unsuffixed name of the one slice elasti used to publish, so
/// an upgrade replaces it in place.
fn slice_name(service: &str, family: &str, shard: usize) -> String {
    match shard {
        0 => format!("{service}-elasti-{family}"),
        n => format!("{service}-elasti-{family}-{n}"),
    }
}

/// The fallback slices for `service`: per address family present, shards of at most
/// [`MAX_ENDPOINTS`] agents in node order. Pure.
pub fn desired(
    es: &ElastiService,
    service: &str,
    ports: &[ProxyPort],
    agents: &[AgentEndpoint],
) -> Vec<EndpointSlice> {
    let owner = es.controller_owner_ref(&());
    let mut by_family: BTreeMap<&str, Vec<&AgentEndpoint>> = BTreeMap::new();
    for a in agents {
        let family = if a.ip.is_ipv4() { "IPv4" } else { "IPv6" };
        by_family.entry(family).or_default().push(a);
    }
    let endpoint_ports: Vec<EndpointPort> = ports
        .iter()
        .map(|p| EndpointPort {
            // kube-proxy matches slice ports to Service ports by name.
            name: Some(p.name.clone()),
            port: Some(p.proxy_port),
            protocol: Some("TCP".into()),
            app_protocol: None,
        })
        .collect();
    let mut out = Vec::new();
    for (family, mut members) in by_family {
        members.sort();
        members.dedup_by(|a, b| a.ip == b.ip);
        for (shard, chunk) in members.chunks(MAX_ENDPOINTS).enumerate() {
            out.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(slice_name(service, &family.to_ascii_lowercase(), shard)),
                    namespace: es.namespace(),
                    labels: Some(
                        [
                            (SERVICE_NAME_LABEL.to_string(), service.to_string()),
                            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                            // The operator's slice watch selects on it
                            // (`super::run`): a fallback slice someone deletes is
                            // put back at once.
                            (
                                MANAGED_LABEL.to_string(),
                                es.metadata.uid.clone().unwrap_or_default(),
                            ),
                        ]
                        .into(),
                    ),
                    owner_references: owner.clone().map(|o| vec![o]),
                    ..Default::default()
                },
                address_type: family.into(),
                endpoints: chunk
                    .iter()
                    .map(|a| Endpoint {
                        addresses: vec![a.ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            serving: Some(true),
                            terminating: Some(false),
                        }),
                        node_name: Some(a.node.clone()),
                        zone: a.zone.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ports: Some(endpoint_ports.clone()),
            });
        }
    }
    out
}

/// Whether the slices there now (`current`) already are `want`: the same names, and in
/// each what the operator sets (address type, endpoints, ports, owner, its labels). Pure.
pub fn unchanged(want: &[EndpointSlice], current: &[EndpointSlice]) -> bool {
    want.len() == current.len()
        && want.iter().all(|w| {
            current.iter().any(|c| {
                c.metadata.name == w.metadata.name
                    && c.address_type == w.address_type
                    && c.endpoints == w.endpoints
                    && c.ports == w.ports
                    && c.metadata.owner_references == w.metadata.owner_references
                    && w.metadata
                        .labels
                        .iter()
                        .flatten()
                        .all(|(k, v)| c.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
            })
        })
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
    use std::net::IpAddr;

    use elasti_api::ElastiServiceSpec;

    use super::*;

    fn web() -> ElastiService {
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
        es
    }

    fn port() -> Vec<ProxyPort> {
        vec![ProxyPort {
            name: "http".into(),
            port: 80,
            protocol: "TCP".into(),
            proxy_port: 24000,
        }]
    }

    fn agent(node: &str, ip: &str) -> AgentEndpoint {
        AgentEndpoint {
            node: node.into(),
            ip: ip.parse().unwrap_or_else(|e| panic!("{e}")),
            zone: Some(format!("zone-of-{node}")),
        }
    }

    #[test]
    fn one_slice_per_family_named_for_the_service_ports() {
        let agents = [
            agent("n2", "10.0.0.2"),
            agent("n3", "fd00::2"),
            agent("n1", "10.0.0.1"),
            agent("n2", "10.0.0.2"),
        ];
        let slices = desired(&web(), "web", &port(), &agents);
        assert_eq!(slices.len(), 2);
        let v4 = &slices[0];
        assert_eq!(v4.address_type, "IPv4");
        assert_eq!(v4.metadata.name.as_deref(), Some("web-elasti-ipv4"));
        assert_eq!(v4.endpoints.len(), 2, "deduplicated");
        assert!(elasti_api::fallback::is_fallback_slice(v4));
        let first = &v4.ports.as_ref().map(|p| p[0].clone()).unwrap_or_default();
        assert_eq!(
            (first.name.as_deref(), first.port),
            (Some("http"), Some(24000))
        );
        assert_eq!(
            v4.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].name.clone()),
            Some("web".to_string())
        );
        assert!(desired(&web(), "web", &port(), &[]).is_empty());
    }

    /// Issue 14 item 5: `externalTrafficPolicy: Local` keeps only endpoints whose nodeName is
    /// the node; without it NodePort traffic at zero is dropped.
    #[test]
    fn every_endpoint_names_its_node() {
        let slices = desired(
            &web(),
            "web",
            &port(),
            &[agent("n1", "10.0.0.1"), agent("n2", "10.0.0.2")],
        );
        let e = &slices[0].endpoints;
        assert_eq!(e[0].node_name.as_deref(), Some("n1"));
        assert_eq!(e[1].node_name.as_deref(), Some("n2"));
        assert_eq!(e[1].zone.as_deref(), Some("zone-of-n2"));
    }

    /// Issue 14 item 5: a slice holds at most 1,000 endpoints; the EndpointSlice controller
    /// shards at 100.
    #[test]
    fn slices_are_sharded_at_one_hundred_endpoints() {
        let agents: Vec<AgentEndpoint> = (0..250u32)
            .map(|i| AgentEndpoint {
                node: format!("node-{i:03}"),
                ip: IpAddr::from([10, 1, (i / 256) as u8, (i % 256) as u8]),
                zone: None,
            })
            .collect();
        let slices = desired(&web(), "web", &port(), &agents);
        assert_eq!(
            slices.len(),
            3,
            "one slice of {}",
            slices[0].endpoints.len()
        );
        assert!(slices.iter().all(|s| s.endpoints.len() <= MAX_ENDPOINTS));
        let names: Vec<_> = slices
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        assert_eq!(
            names,
            ["web-elasti-ipv4", "web-elasti-ipv4-1", "web-elasti-ipv4-2"]
        );
        assert_eq!(slices[2].endpoints.len(), 50);
    }
}
