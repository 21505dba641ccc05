//! Smoke test of the kind cluster itself: a Deployment behind a ClusterIP Service answers
//! by ClusterIP and by DNS name, from a pod on another node and from a process in a node's
//! netns; once scaled to zero, the same requests fail. That failure is what elasti exists
//! to remove.
use std::time::Duration;

use elasti_e2e::*;
use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask test`"]
fn service_answers_then_fails_at_zero() -> anyhow::Result<()> {
    require_cluster();
    let ns = TempNamespace::create("smoke")?;
    let ns = ns.name.as_str();
    let (here, other) = match cluster().workers().as_slice() {
        [a, b, ..] => (a.name.clone(), b.name.clone()),
        _ => anyhow::bail!("the test cluster has two workers"),
    };
    deploy(ns, &App::http("web").on_node(&other))?;
    kubectl(&[
        "-n",
        ns,
        "rollout",
        "status",
        "deploy/web",
        "--timeout=120s",
    ])?;
    deploy_client(ns, "client", Some(&here), false)?;
    let pods = ready_pods(ns, "web")?;
    assert_eq!(pods.len(), 1, "one Ready pod expected, got {pods:?}");
    let served_by = format!("pod={}", pods[0]);
    let cluster_ip = cluster_ip(ns, "web")?;

    // From a pod, by ClusterIP and by DNS name. kube-proxy programs a new Service within
    // about a second (its min sync period), so the first answer is awaited, not assumed.
    let by_ip = wait_until(
        "kube-proxy to program the Service",
        Duration::from_secs(30),
        || get_from_client_pod(ns, &format!("http://{cluster_ip}/"), 5).ok(),
    )?;
    assert!(by_ip.starts_with("HTTP/1.1 200"), "by ClusterIP: {by_ip}");
    assert!(
        by_ip.contains(&served_by),
        "by ClusterIP, expected {served_by}: {by_ip}"
    );
    let by_name = get_from_client_pod(ns, &format!("http://web.{ns}.svc.cluster.local/"), 10)?;
    assert!(
        by_name.contains(&served_by),
        "by DNS name, expected {served_by}: {by_name}"
    );
    // From a process in a node's network namespace (this test's).
    let from_netns = get_from_netns(&format!("{cluster_ip}:80"), "/", Duration::from_secs(5))?;
    assert!(
        from_netns.contains(&served_by),
        "from the netns, expected {served_by}: {from_netns}"
    );

    // Scaled to zero, the same requests fail: refused (kube-proxy rejects) or timed out.
    kube()?.scale(ns, "deployments", "web", 0)?;
    wait_until("web pods gone", Duration::from_secs(60), || {
        kube()
            .ok()?
            .list::<Pod>(ns, "app=web")
            .ok()
            .filter(|pods| pods.is_empty())
    })?;
    wait_until("no endpoints", Duration::from_secs(30), || {
        kube()
            .ok()?
            .list::<EndpointSlice>(ns, "kubernetes.io/service-name=web")
            .ok()
            .filter(|slices| slices.iter().all(|s| s.endpoints.is_empty()))
    })?;
    let cold = get_from_client_pod(ns, &format!("http://{cluster_ip}/"), 3);
    assert!(
        cold.is_err(),
        "a request at zero replicas should fail today, got {cold:?}"
    );
    let cold = get_from_netns(&format!("{cluster_ip}:80"), "/", Duration::from_secs(3));
    assert!(
        cold.as_ref().map_or(true, |r| r.is_empty()),
        "from the netns at zero, expected failure: {cold:?}"
    );
    Ok(())
}
