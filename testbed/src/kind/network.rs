//! The pod network on podman, where kindnetd is not available: what kindnetd would do,
//! done once. Each node gets a CNI config for its own podCIDR, and a route to every other
//! node's podCIDR through that node's address. All nodes share one bridge, so those routes
//! are enough. The cluster's namespace gets the same routes, so the suites and Prometheus
//! there reach pods too.
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::{Cluster, config};
use crate::{cmd, netns};

/// Where each node's CNI config goes (kubelet and containerd watch the folder).
const CNI_CONFIG: &str = "/etc/cni/net.d/10-elasti-kind.conflist";

pub fn connect_nodes(cluster: &Cluster) -> Result<()> {
    let cidrs = pod_cidrs(cluster)?;
    for node in &cluster.nodes {
        let cidr = &cidrs[&node.name];
        let conflist = serde_json::to_vec_pretty(&config::cni_conflist(cidr))?;
        cmd::output_with_input(
            &format!("CNI config on {}", node.name),
            cluster
                .provider
                .engine()
                .args(["exec", "-i", &node.name, "tee", CNI_CONFIG]),
            &conflist,
        )?;
        for other in cluster.nodes.iter().filter(|o| o.name != node.name) {
            cmd::output(
                &format!("route on {} to {}", node.name, other.name),
                cluster.provider.engine().args([
                    "exec",
                    &node.name,
                    "ip",
                    "route",
                    "replace",
                    &cidrs[&other.name],
                    "via",
                    &other.ip,
                ]),
            )?;
        }
        cmd::output(
            &format!("route in {} to {}", netns::NETNS, node.name),
            netns::command("ip").args(["route", "replace", cidr, "via", &node.ip]),
        )?;
    }
    Ok(())
}

/// Each node's podCIDR, which the controller-manager allocates once the node registers.
fn pod_cidrs(cluster: &Cluster) -> Result<std::collections::HashMap<String, String>> {
    let mut found = std::collections::HashMap::new();
    cmd::wait_for("a podCIDR on every node", Duration::from_secs(60), || {
        let Ok(out) = cmd::output(
            "node podCIDRs",
            cluster.kubectl().args([
                "get",
                "nodes",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name} {.spec.podCIDR}{"\n"}{end}"#,
            ]),
        ) else {
            return false;
        };
        found = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, cidr)| !cidr.is_empty())
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect();
        cluster.nodes.iter().all(|n| found.contains_key(&n.name))
    })
    .context("kube-controller-manager allocates node CIDRs")?;
    Ok(found)
}

/// Replaces kubeadm's Corefile (which forwards to the node's resolv.conf, the host's) with
/// [`config::COREFILE`]. CoreDNS is still Pending (no node is Ready before the pod
/// network), so its pods start with it.
pub fn coredns_without_forward(cluster: &Cluster) -> Result<()> {
    let patch = json!({"data": {"Corefile": config::COREFILE}}).to_string();
    cmd::output(
        "CoreDNS Corefile",
        cluster.kubectl().args([
            "-n",
            "kube-system",
            "patch",
            "configmap",
            "coredns",
            "--type=merge",
            "-p",
            &patch,
        ]),
    )?;
    Ok(())
}
