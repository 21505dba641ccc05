//! The Ready endpoints of one Service port, from the EndpointSlices the watch holds. Pure.
//! Forwarding goes to `podIP:targetPort` as the slice gives it (named target ports are
//! already resolved per pod there), so nothing depends on kube-proxy having caught up.
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Whether `slice` belongs to Service `namespace/service`.
pub fn belongs_to(slice: &EndpointSlice, namespace: &str, service: &str) -> bool {
    slice.metadata.namespace.as_deref() == Some(namespace)
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
            metadata: kube::api::ObjectMeta {
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
    }
}
