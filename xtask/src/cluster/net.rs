//! The cluster's addresses. All of them exist only inside the cluster's own network
//! namespace, which has no link out of the machine (design §3, network rule).

/// The network namespace (`/run/netns/<NETNS>`) every cluster process runs in.
pub const NETNS: &str = "elasti-e2e";
/// The node's name and IP: on a veth whose peer stays in the same namespace, so a packet
/// routed "out" has nowhere to go.
pub const NODE_NAME: &str = "elasti-node";
pub const NODE_IP: &str = "10.250.0.2";
pub const NODE_PREFIX: u8 = 24;
/// The two ends of the node link.
pub const NODE_LINK: &str = "elasti-n0";
pub const NODE_LINK_PEER: &str = "elasti-n1";
/// Pods (one node, so one /24 from host-local IPAM) and Services.
pub const POD_CIDR: &str = "10.244.0.0/24";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const APISERVER_SERVICE_IP: &str = "10.96.0.1";
pub const DNS_SERVICE_IP: &str = "10.96.0.10";
/// The CNI network and its bridge.
pub const CNI_NETWORK: &str = "elasti-e2e";
pub const CNI_BRIDGE: &str = "elasti-cni0";
pub const APISERVER_PORT: u16 = 6443;

/// `/run/netns/<NETNS>`.
pub fn netns_path() -> String {
    format!("/run/netns/{NETNS}")
}
