//! The Ready endpoints of one Service port, from its EndpointSlices. Pure; the agent uses
//! it to release held connections and the operator to set `status.mode`.
//! Forwarding goes to `podIP:targetPort` as the slice gives it (named target ports are
//! already resolved per pod there), so nothing depends on kube-proxy having caught up.
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The key the operator adds to a Service's selector to drain it before a scale-down: no
/// pod carries it, so the EndpointSlice controller takes every pod out of the Service's
/// slices, and kube-proxy and ingress controllers send new connections only to the
/// fallback slices' agents before any pod gets SIGTERM. It is taken out again at the
/// scale-up (its value is the ElastiService's UID).
pub const DRAINED_SELECTOR_KEY: &str = "elasti.truefoundry.com/drained";
/// The label the operator puts on every Service an ElastiService manages; its value is the
/// ElastiService's UID. The EndpointSlice controller copies a Service's labels onto the
/// slices it writes (the operator labels a selectorless Service's slices itself), so the
/// agents watch only the Services and slices that carry it: their memory and work grow
/// with the managed services, not with the cluster.
pub const MANAGED_LABEL: &str = "elasti.truefoundry.com/elastiservice";

/// Whether `slice` lists pods of Service `namespace/service` (the operator's fallback
/// slice, whose endpoints are the agents themselves, does not).
pub fn belongs_to(slice: &EndpointSlice, namespace: &str, service: &str) -> bool {
    !crate::fallback::is_fallback_slice(slice)
        && slice.metadata.namespace.as_deref() == Some(namespace)
        && slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(String::as_str)
            == Some(service)
}

/// The Ready `podIP:port` pairs for the Service port named `port_name` ("" for an unnamed
/// single port), sorted and without duplicates. An endpoint whose `ready` condition is
/// unset counts as Ready, as the API defines it; a terminating one does not.
pub fn ready_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: &str,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or("") == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let terminating = ep
                .conditions
                .as_ref()
                .and_then(|c| c.terminating)
                .unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            out.extend(
                ep.addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    use super::*;

    fn slice(
        port_name: &str,
        port: i32,
        endpoints: &[(&str, Option<bool>, bool)],
    ) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                namespace: Some("ns".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            ports: Some(vec![EndpointPort {
                name: Some(port_name.into()),
                port: Some(port),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            endpoints: endpoints
                .iter()
                .map(|(ip, ready, terminating)| Endpoint {
                    addresses: vec![(*ip).into()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        terminating: Some(*terminating),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn only_ready_not_terminating_endpoints_of_the_named_port() {
        let s = slice(
            "http",
            8080,
            &[
                ("10.0.0.1", Some(true), false),
                ("10.0.0.2", Some(false), false),
                ("10.0.0.3", None, false),
                ("10.0.0.4", Some(true), true),
            ],
        );
        let got = ready_endpoints([&s], "http");
        assert_eq!(
            got,
            vec![
                "10.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!()),
                "10.0.0.3:8080".parse().unwrap_or_else(|_| unreachable!())
            ]
        );
        assert!(
            ready_endpoints([&s], "grpc").is_empty(),
            "another port name matches nothing"
        );
    }

    #[test]
    fn endpoints_merge_across_slices_without_duplicates() {
        let a = slice("", 80, &[("10.0.0.1", Some(true), false)]);
        let b = slice(
            "",
            80,
            &[
                ("10.0.0.1", Some(true), false),
                ("10.0.0.2", Some(true), false),
            ],
        );
        assert_eq!(ready_endpoints([&a, &b], "").len(), 2);
        assert!(belongs_to(&a, "ns", "web"));
        assert!(!belongs_to(&a, "ns", "other"));
        assert!(!belongs_to(&a, "other", "web"));
        let mut fallback = a.clone();
        if let Some(labels) = fallback.metadata.labels.as_mut() {
            labels.insert(
                crate::fallback::MANAGED_BY_LABEL.into(),
                crate::fallback::MANAGED_BY.into(),
            );
        }
        assert!(
            !belongs_to(&fallback, "ns", "web"),
            "the operator's fallback slice lists agents, not pods"
        );
    }
}
