//! The ports to hold, from the objects the agent watches. Pure: the run loop feeds it the
//! reflector stores.
use std::net::{IpAddr, SocketAddr};

use elasti_api::ElastiService;
use k8s_openapi::api::core::v1::Service;

use crate::hold::ServiceId;

/// One (Service, port) the agent listens for: connects to `cluster_addrs` are steered to
/// this node's `proxy_port` while the service is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldPort {
    pub id: ServiceId,
    /// Every ClusterIP of the Service (dual-stack has two) with this port.
    pub cluster_addrs: Vec<SocketAddr>,
    /// The Service port's name, which EndpointSlice ports carry too ("" if unnamed).
    pub port_name: String,
    /// The agent listener port the operator allocated (`status.proxyPorts`).
    pub proxy_port: u16,
    /// The operator reports that the ElastiService's target does not exist: nothing will
    /// ever become Ready, so nothing is held (clients get an answer, not a hang).
    pub target_missing: bool,
    /// The ElastiService has an `activity` trigger: connects to the Service are counted
    /// and its open sockets tracked, warm or cold.
    pub count: bool,
    /// The operator is scaling the target to zero
    /// ([`elasti_api::conditions::SCALE_DOWN_PENDING`] is `True`): intercept now, while
    /// pods are still Ready.
    pub scale_down_pending: bool,
    /// The scale-down has drained the Service ([`elasti_api::conditions::DRAINING`]): its
    /// pods are out of its slices on purpose but still run until `/scale` goes to 0, so
    /// the ones last seen Ready are still forwarded to.
    pub draining: bool,
    /// The ElastiService's `probeResponse` rules, answered at zero without waking.
    pub probe_response: Vec<elasti_api::ProbeRule>,
}

use elasti_api::{
    TriggerType,
    conditions::{DRAINING, READY, SCALE_DOWN_PENDING, TARGET_NOT_FOUND},
};

/// The ports to hold: every TCP port of every ElastiService's Service that has a proxy
/// port allocated. `service` looks a Service up by namespace and name.
pub fn held_ports<'a>(
    elastiservices: impl IntoIterator<Item = &'a ElastiService>,
    service: impl Fn(&str, &str) -> Option<std::sync::Arc<Service>>,
) -> Vec<HeldPort> {
    let mut out = Vec::new();
    for es in elastiservices {
        let Some(ns) = es.metadata.namespace.as_deref() else {
            continue;
        };
        let Some(status) = es.status.as_ref() else {
            continue;
        };
        let target_missing = status
            .conditions
            .iter()
            .any(|c| c.type_ == READY && c.status == "False" && c.reason == TARGET_NOT_FOUND);
        let pending = status
            .conditions
            .iter()
            .find(|c| c.type_ == SCALE_DOWN_PENDING && c.status == "True");
        let scale_down_pending = pending.is_some();
        let draining = pending.is_some_and(|c| c.reason == DRAINING);
        let count = es
            .spec
            .triggers
            .iter()
            .any(|t| t.kind == TriggerType::Activity);
        let Some(svc) = service(ns, &es.spec.service) else {
            continue;
        };
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        for pp in &status.proxy_ports {
            let Some(port) = spec.ports.iter().flatten().find(|p| {
                p.port == pp.port
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                    && p.name.as_deref().unwrap_or("") == pp.name
            }) else {
                continue;
            };
            let (Ok(port_no), Ok(proxy_port)) =
                (u16::try_from(port.port), u16::try_from(pp.proxy_port))
            else {
                continue;
            };
            let mut cluster_addrs: Vec<SocketAddr> =
                ips.iter().map(|ip| SocketAddr::new(*ip, port_no)).collect();
            cluster_addrs.sort_unstable();
            cluster_addrs.dedup();
            out.push(HeldPort {
                id: ServiceId {
                    namespace: ns.to_string(),
                    name: es.spec.service.clone(),
                    port: port_no,
                },
                cluster_addrs,
                port_name: pp.name.clone(),
                proxy_port,
                target_missing,
                count,
                scale_down_pending,
                draining,
                probe_response: es.spec.probe_response.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use elasti_api::{ElastiServiceSpec, ElastiServiceStatus, ProxyPort};
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use kube::api::ObjectMeta;

    use super::*;

    fn es(service: &str, proxy_ports: Vec<ProxyPort>) -> ElastiService {
        let spec: ElastiServiceSpec = serde_json::from_value(serde_json::json!({
            "service": service,
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut es = ElastiService::new("es", spec);
        es.metadata.namespace = Some("ns".into());
        es.status = Some(ElastiServiceStatus {
            proxy_ports,
            ..Default::default()
        });
        es
    }

    fn svc(ips: &[&str], ports: &[(&str, i32)]) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: ips.first().map(|s| (*s).to_string()),
                cluster_ips: Some(ips.iter().map(|s| (*s).to_string()).collect()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: Some((*n).into()),
                            port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn pp(name: &str, port: i32, proxy_port: i32) -> ProxyPort {
        ProxyPort {
            name: name.into(),
            port,
            protocol: "TCP".into(),
            proxy_port,
        }
    }

    #[test]
    fn each_allocated_port_is_held_on_every_cluster_ip() {
        let e = es("web", vec![pp("http", 80, 24000), pp("grpc", 9000, 24001)]);
        let s = svc(&["10.96.0.50", "fd00::50"], &[("http", 80), ("grpc", 9000)]);
        let held = held_ports([&e], |_, _| Some(s.clone()));
        assert_eq!(held.len(), 2);
        let http = held
            .iter()
            .find(|h| h.port_name == "http")
            .unwrap_or_else(|| unreachable!());
        assert_eq!(http.proxy_port, 24000);
        assert_eq!(http.cluster_addrs.len(), 2, "both families");
    }

    #[test]
    fn nothing_is_held_without_a_service_or_an_allocation() {
        let s = svc(&["10.96.0.50"], &[("http", 80)]);
        assert!(held_ports([&es("web", vec![])], |_, _| Some(s.clone())).is_empty());
        assert!(held_ports([&es("web", vec![pp("http", 80, 24000)])], |_, _| None).is_empty());
        assert!(
            held_ports([&es("web", vec![pp("http", 81, 24000)])], |_, _| Some(
                s.clone()
            ))
            .is_empty(),
            "a stale allocation for a port the Service no longer has"
        );
    }
}
