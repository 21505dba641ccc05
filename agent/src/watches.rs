//! What the agent watches, and keeps of it, so its stores hold only what it reads:
//!
//! - ElastiServices in the watched namespaces, without `managedFields`;
//! - the managed Services ([`MANAGED`]), stripped to their ClusterIPs and ports;
//! - their EndpointSlices ([`MANAGED`] too: the EndpointSlice controller copies the
//!   Service's labels onto them), stripped to the labels that tie them to a Service,
//!   ports, addresses and conditions.
//!
//! The apiserver filters by the label, so a cluster's other Services and slices are never
//! sent to the agents. The `strip_*` functions are pure; [`crate::run`] hands them to the
//! reflectors of `elasti_runtime`.
use elasti_api::{
    ElastiService,
    endpoints::{MANAGED_LABEL, SERVICE_NAME_LABEL},
    fallback::MANAGED_BY_LABEL,
};
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// The label selector of the Service and EndpointSlice watches: objects the operator
/// labelled as managed (`operator/src/reconcile/label.rs`), whatever the ElastiService.
pub const MANAGED: &str = MANAGED_LABEL;

/// Only what identifies an object (name, namespace, uid, resourceVersion): no
/// `managedFields`, annotations or owner references.
fn bare_meta(meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        ..Default::default()
    }
}

/// An ElastiService without `managedFields` (often larger than the object itself).
pub fn strip_elastiservice(mut es: ElastiService) -> ElastiService {
    es.metadata.managed_fields = None;
    es
}

/// A Service as [`crate::plan::held_ports`] reads it: its ClusterIPs and its ports' names,
/// numbers and protocols.
pub fn strip_service(svc: Service) -> Service {
    let spec = svc.spec.map(|s| ServiceSpec {
        cluster_ip: s.cluster_ip,
        cluster_ips: s.cluster_ips,
        ports: s.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
    Service {
        metadata: bare_meta(svc.metadata),
        spec,
        status: None,
    }
}

/// An EndpointSlice as `elasti_api::endpoints` reads it: the labels that tie it to its
/// Service (and mark elasti's fallback slice), its ports, and each endpoint's addresses
/// and readiness.
pub fn strip_slice(slice: EndpointSlice) -> EndpointSlice {
    let labels = slice.metadata.labels.clone().map(|l| {
        l.into_iter()
            .filter(|(k, _)| k == SERVICE_NAME_LABEL || k == MANAGED_BY_LABEL)
            .collect()
    });
    EndpointSlice {
        address_type: slice.address_type,
        metadata: ObjectMeta {
            labels,
            ..bare_meta(slice.metadata)
        },
        ports: slice.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| EndpointPort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                    ..Default::default()
                })
                .collect()
        }),
        endpoints: slice
            .endpoints
            .into_iter()
            .map(|e| Endpoint {
                addresses: e.addresses,
                conditions: e.conditions.map(|c| EndpointConditions {
                    ready: c.ready,
                    terminating: c.terminating,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
    };

    use super::*;

    fn meta(labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some("web-abc".into()),
            namespace: Some("ns".into()),
            resource_version: Some("7".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            annotations: Some([("big".to_string(), "x".repeat(4096))].into()),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            ..Default::default()
        }
    }

    #[test]
    fn a_stripped_slice_keeps_what_readiness_reads_and_nothing_else() {
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            metadata: meta(&[
                (SERVICE_NAME_LABEL, "web"),
                (MANAGED_BY_LABEL, "someone"),
                ("team", "blue"),
            ]),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
            }]),
            endpoints: vec![Endpoint {
                addresses: vec!["10.244.1.5".into()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some("node-a".into()),
                target_ref: Some(ObjectReference::default()),
                ..Default::default()
            }],
        };
        let ready = |s: &EndpointSlice| {
            elasti_api::endpoints::ready_endpoints([s], "http")
                .into_iter()
                .collect::<Vec<_>>()
        };
        let stripped = strip_slice(slice.clone());
        assert_eq!(ready(&stripped), ready(&slice));
        assert!(elasti_api::endpoints::belongs_to(&stripped, "ns", "web"));
        let labels = stripped.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.len(), 2, "{labels:?}");
        assert!(stripped.metadata.managed_fields.is_none());
        assert!(stripped.metadata.annotations.is_none());
        assert!(stripped.endpoints[0].target_ref.is_none());
        assert!(stripped.endpoints[0].node_name.is_none());
    }

    #[test]
    fn a_stripped_service_keeps_its_cluster_ips_and_ports() {
        let svc = Service {
            metadata: meta(&[("app", "web")]),
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.50".into()),
                cluster_ips: Some(vec!["10.96.0.50".into()]),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    node_port: Some(30080),
                    ..Default::default()
                }]),
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            status: None,
        };
        let s = strip_service(svc);
        let spec = s.spec.clone().unwrap_or_default();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.50"));
        let ports = spec.ports.unwrap_or_default();
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].port, ports[0].node_port),
            (Some("http"), 80, None)
        );
        assert!(spec.selector.is_none());
        assert!(s.metadata.labels.is_none() && s.metadata.managed_fields.is_none());
        assert_eq!(s.metadata.name.as_deref(), Some("web-abc"));
    }
}
