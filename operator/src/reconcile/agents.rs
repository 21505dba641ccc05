//! The agents the fallback slices list and the scale-down waits for: the Ready agent pods
//! (watched, so one that goes NotReady or away leaves within seconds), each with its
//! node and that node's zone. Pure over the watched objects.
use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::Pod;

/// The node label that names a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// One Ready agent: where kube-proxy sends fallback traffic for its node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AgentEndpoint {
    /// Its node (the agent runs on the host network: the pod IP is the node's).
    pub node: String,
    pub ip: IpAddr,
    /// The node's zone, when the node carries [`ZONE_LABEL`].
    pub zone: Option<String>,
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Ready, not terminating, agent pods among `pods`, one endpoint per address, with
/// the zone of their node from `zones` (node name → zone). Sorted by node.
pub fn ready_agents<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    zones: &BTreeMap<String, String>,
) -> Vec<AgentEndpoint> {
    let mut out: Vec<AgentEndpoint> = pods
        .into_iter()
        .filter(|p| ready(p))
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            let ips: Vec<IpAddr> = p
                .status
                .iter()
                .flat_map(|s| s.pod_ips.iter().flatten())
                .filter_map(|ip| ip.ip.parse().ok())
                .collect();
            Some(ips.into_iter().map(move |ip| (node.clone(), ip)))
        })
        .flatten()
        .map(|(node, ip)| AgentEndpoint {
            zone: zones.get(&node).cloned(),
            node,
            ip,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The nodes of `agents`, once each.
pub fn nodes(agents: &[AgentEndpoint]) -> Vec<String> {
    let mut n: Vec<String> = agents.iter().map(|a| a.node.clone()).collect();
    n.sort();
    n.dedup();
    n
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{PodCondition, PodIP, PodSpec, PodStatus},
        apimachinery::pkg::apis::meta::v1::Time,
    };

    use super::*;

    fn pod(node: &str, ip: &str, is_ready: bool) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if is_ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_ready_agents_that_are_not_going_away_count_with_their_zone() {
        let mut leaving = pod("n3", "10.0.0.3", true);
        leaving.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let pods = [
            pod("n2", "10.0.0.2", true),
            pod("n1", "10.0.0.1", true),
            pod("n4", "10.0.0.4", false),
            leaving,
        ];
        let zones = BTreeMap::from([("n1".to_string(), "z-a".to_string())]);
        let agents = ready_agents(&pods, &zones);
        assert_eq!(
            agents,
            [
                AgentEndpoint {
                    node: "n1".into(),
                    ip: [10, 0, 0, 1].into(),
                    zone: Some("z-a".into())
                },
                AgentEndpoint {
                    node: "n2".into(),
                    ip: [10, 0, 0, 2].into(),
                    zone: None
                },
            ]
        );
        assert_eq!(nodes(&agents), ["n1", "n2"]);
    }
}
