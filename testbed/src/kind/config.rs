//! What kind and the nodes are given: the cluster config, each node's CNI config, and
//! CoreDNS's Corefile. Rendered as JSON (valid YAML) from typed values.
use serde_json::{Value, json};

use super::provider::Provider;
use crate::paths;

/// The kind `Cluster` config: one control plane and `workers` workers.
///
/// On podman the node image has no kindnetd (no registry to pull it from), so the default
/// CNI is off and [`cni_conflist`] is written into each node instead; kubeadm is pointed at
/// the etcd and CoreDNS tags the image preloads. Kubernetes 1.35 refuses cgroup v1 unless
/// told otherwise, and this host is cgroup v1 hybrid. Image garbage collection is off:
/// images loaded with `kind load` cannot be pulled again.
pub fn cluster(provider: Provider, workers: usize) -> Value {
    let mut nodes = vec![json!({"role": "control-plane"})];
    nodes.extend((0..workers).map(|_| json!({"role": "worker"})));
    let mut patches = vec![
        "kind: KubeletConfiguration\nfailCgroupV1: false\nimageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\n"
            .to_string(),
    ];
    if provider == Provider::Podman {
        patches.push(format!(
            "kind: ClusterConfiguration\netcd:\n  local:\n    imageTag: {}-0\ndns:\n  imageTag: v{}\n",
            paths::ETCD_VERSION,
            paths::COREDNS_VERSION
        ));
    }
    json!({
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {
            "ipFamily": "ipv4",
            "disableDefaultCNI": provider == Provider::Podman,
        },
        "nodes": nodes,
        "kubeadmConfigPatches": patches,
    })
}

/// One node's pod network, as kindnetd writes it: `ptp` (a veth and a /32 route per pod,
/// so no bridge and no br_netfilter) with host-local addresses from the node's podCIDR.
/// Pods on other nodes are reached through routes to their podCIDRs ([`super::network`]).
pub fn cni_conflist(pod_cidr: &str) -> Value {
    json!({
        "cniVersion": "0.4.0",
        "name": "elasti-kind",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": false,
                "mtu": 1500,
                "ipam": {
                    "type": "host-local",
                    "dataDir": "/run/cni-ipam-state",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// CoreDNS's Corefile: kubeadm's, without `forward`. The cluster answers its own names and
/// nothing is ever forwarded out of it (the node's resolv.conf is the host's).
pub const COREFILE: &str = ".:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_clusters_bring_their_own_network_and_image_tags() {
        let c = cluster(Provider::Podman, 2);
        assert_eq!(c["nodes"].as_array().map(Vec::len), Some(3));
        assert_eq!(c["nodes"][1]["role"], "worker");
        assert_eq!(c["networking"]["disableDefaultCNI"], true);
        let patches = c["kubeadmConfigPatches"].to_string();
        assert!(patches.contains("imageTag: 3.6.16-0") && patches.contains("imageTag: v1.14.7"));
        let d = cluster(Provider::Docker, 0);
        assert_eq!(d["networking"]["disableDefaultCNI"], false);
        assert_eq!(d["kubeadmConfigPatches"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn the_corefile_forwards_nowhere() {
        assert!(!COREFILE.contains("forward"));
        assert!(COREFILE.contains("kubernetes cluster.local"));
    }

    #[test]
    fn each_node_gets_addresses_from_its_own_pod_cidr() {
        let c = cni_conflist("10.244.2.0/24");
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.2.0/24"
        );
        assert_eq!(c["plugins"][0]["type"], "ptp");
    }
}
