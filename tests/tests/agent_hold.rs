//! The agent on the real cluster, driven by the real apiserver: a client pod's request to
//! the ClusterIP of a Deployment at zero replicas is steered by the eBPF programs (attached
//! at a kind node's cgroup, never the machine's root) to the agent, run in-process in that
//! node's network namespace, held, and answered by the pod that starts when the Deployment
//! is scaled up — the EndpointSlice watch releases it. The operator is
//! not part of this suite: the test plays its part (the managed label on the Service,
//! proxy-port allocation in the status, and the scale-up) and checks that the agent asked
//! for the wake.
use std::{net::TcpStream, time::Duration};

use clap::Parser;
use elasti_e2e::*;

/// The agent's default proxy address.
const PROXY_IP: &str = "169.254.20.11";
const ADMIN: &str = "127.0.0.1:19090";

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask test`"]
fn a_request_at_zero_replicas_is_held_and_answered_by_the_new_pod() -> anyhow::Result<()> {
    require_cluster();
    install_crd()?;
    let ns = TempNamespace::create("hold")?;
    let ns = ns.name.as_str();
    // This process runs in the home node's network namespace; the agent attaches at that
    // node's cgroup, so the client pod runs there too.
    let node = cluster().home();
    let node_cgroup = node.cgroup()?;
    let cluster_ip = web_at_zero(ns, &node.name, 24080)?;

    let (token, stop_tx, agent) = start_agent(&node_cgroup)?;
    wait_until("agent ready", Duration::from_secs(30), || {
        metrics_text(ADMIN).contains("# EOF").then_some(())
    })?;
    // Wait for the agent to hold the port (listener up and map entry in).
    wait_until(
        "agent listening on the proxy port",
        Duration::from_secs(30),
        || TcpStream::connect(format!("{PROXY_IP}:24080")).ok(),
    )?;

    // The cold request, from a pod, by ClusterIP and by DNS name.
    let url_ip = format!("http://{cluster_ip}/");
    let url_dns = format!("http://web.{ns}.svc.cluster.local/");
    let ns_owned = ns.to_string();
    let cold_ip = std::thread::spawn({
        let ns = ns_owned.clone();
        move || get_from_client_pod(&ns, &url_ip, 90)
    });
    let cold_dns = std::thread::spawn(move || get_from_client_pod(&ns_owned, &url_dns, 90));
    wait_until("two requests held", Duration::from_secs(30), || {
        metric_value(
            ADMIN,
            &format!("elasti_agent_held{{namespace=\"{ns}\",service=\"web\",port=\"80\"}}"),
        )
        .filter(|v| *v >= 2.0)
    })?;
    kube()?.scale(ns, "deployments", "web", 1)?;
    let answer = cold_ip.join().expect("thread")?;
    let pods = ready_pods(ns, "web")?;
    assert_eq!(pods.len(), 1);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "held request answered: {answer}"
    );
    assert!(
        answer.contains(&format!("pod={}", pods[0])),
        "by the new pod: {answer}"
    );
    let by_dns = cold_dns.join().expect("thread")?;
    assert!(
        by_dns.contains(&format!("pod={}", pods[0])),
        "held by DNS name too: {by_dns}"
    );
    let forwarded = metric_value(
        ADMIN,
        &format!(
            "elasti_agent_outcomes_total{{namespace=\"{ns}\",service=\"web\",port=\"80\",protocol=\"Http1\",outcome=\"ForwardedAfterHold\"}}"
        ),
    );
    assert_eq!(forwarded, Some(2.0), "both counted as held then forwarded");
    let wakes = metric_value(
        ADMIN,
        &format!(
            "elasti_agent_wake_requests_total{{namespace=\"{ns}\",service=\"web\",result=\"Unreachable\"}}"
        ),
    );
    assert!(
        wakes.is_some_and(|w| w >= 1.0),
        "the agent asked for the wake"
    );
    // The eBPF rewrite counters reach /metrics (exported every 10 s).
    let steered = format!(
        "elasti_agent_ebpf_connects_steered_total{{namespace=\"{ns}\",service=\"web\",port=\"80\"}}"
    );
    let exported = wait_until("steered connects exported", Duration::from_secs(20), || {
        metric_value(ADMIN, &steered).filter(|v| *v >= 2.0)
    });
    if exported.is_err() {
        let all = metrics_text(ADMIN);
        let ebpf: Vec<&str> = all.lines().filter(|l| l.contains("ebpf")).collect();
        panic!("steered connects not exported; eBPF metrics: {ebpf:#?}");
    }

    // After the hand-back grace, connects take the normal path: answered, not counted.
    std::thread::sleep(Duration::from_millis(2500));
    let warm = wait_until(
        "warm request via kube-proxy",
        Duration::from_secs(30),
        || get_from_client_pod(ns, &format!("http://{cluster_ip}/"), 5).ok(),
    )?;
    assert!(warm.contains(&format!("pod={}", pods[0])));
    let after = metric_value(
        ADMIN,
        &format!(
            "elasti_agent_outcomes_total{{namespace=\"{ns}\",service=\"web\",port=\"80\",protocol=\"Http1\",outcome=\"Forwarded\"}}"
        ),
    );
    assert_eq!(
        after.unwrap_or(0.0),
        0.0,
        "the warm request did not go through the agent"
    );

    let _ = stop_tx.send(());
    agent.join().expect("agent thread")?;
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()?;
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("elasti0"),
        "the agent removed its link on shutdown"
    );
    let _ = std::fs::remove_file(token);
    Ok(())
}

/// `web` at zero replicas with its ElastiService, a client pod on `node`, and the
/// operator's part played: `proxy_port` for the Service's port in the status. Its ClusterIP.
fn web_at_zero(ns: &str, node: &str, proxy_port: u16) -> anyhow::Result<String> {
    let web = App::http("web").replicas(0);
    deploy(ns, &web)?;
    deploy_client(ns, "client", Some(node), false)?;
    apply_es(ns, &web.elastiservice())?;
    // The agent watches only managed Services and their slices (the EndpointSlice
    // controller copies the Service's label onto them).
    kubectl(&[
        "-n",
        ns,
        "label",
        "service",
        "web",
        &format!("{}=test", elasti_api::endpoints::MANAGED_LABEL),
    ])?;
    let status = serde_json::json!({"status": {"mode": "proxy", "proxyPorts": [
        {"name": "http", "port": 80, "protocol": "TCP", "proxyPort": proxy_port}
    ]}});
    kubectl(&[
        "-n",
        ns,
        "patch",
        "elastiservice",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ])?;
    cluster_ip(ns, "web")
}

/// The agent in-process on its own runtime thread, attached at `node_cgroup`, with the
/// default proxy address on a link it makes; sending on the channel stops it as SIGTERM
/// would (it drains). Returns the token file to remove afterwards.
#[allow(clippy::type_complexity)]
fn start_agent(
    node_cgroup: &std::path::Path,
) -> anyhow::Result<(
    std::path::PathBuf,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<Result<(), elasti_agent::run::Error>>,
)> {
    capture_logs();
    let token = std::env::temp_dir().join(format!("elasti-token-{}", std::process::id()));
    std::fs::write(&token, "test-token")?;
    let args = elasti_agent::config::Args::parse_from([
        "elasti-agent",
        "--cgroup-path",
        node_cgroup.to_str().unwrap_or_default(),
        // The default proxy address: link-local, on a link the agent makes (and removes).
        "--proxy-interface",
        "elasti0",
        "--admin-address",
        ADMIN,
        "--handback-grace-ms",
        "1000",
        "--hold-timeout-secs",
        "120",
        // No operator in this suite: the wake is attempted and counted as unreachable.
        "--operator-url",
        "http://127.0.0.1:1",
        "--token-path",
        token.to_str().unwrap_or_default(),
    ]);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(elasti_agent::run::run_until(args, async {
            let _ = stop_rx.await;
        }))
    });
    Ok((token, stop_tx, agent))
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask test`"]
fn a_request_released_while_the_agent_drains_is_answered_before_it_exits() -> anyhow::Result<()> {
    require_cluster();
    install_crd()?;
    let ns = TempNamespace::create("drain")?;
    let ns = ns.name.as_str();
    let node = cluster().home();
    let cluster_ip = web_at_zero(ns, &node.name, 24081)?;
    let (token, stop_tx, agent) = start_agent(&node.cgroup()?)?;
    // The service's gauge appears in the step that listens and steers (no connect to find
    // out: that connect would be held too).
    let held_gauge = format!("elasti_agent_held{{namespace=\"{ns}\",service=\"web\",port=\"80\"}}");
    wait_until(
        "the agent holding the port",
        Duration::from_secs(30),
        || metric_value(ADMIN, &held_gauge).filter(|v| *v == 0.0),
    )?;
    // Held, then the pod takes 3 s to answer it: the agent is told to stop in between,
    // as a rolling update's SIGTERM would.
    let url = format!("http://{cluster_ip}/slow?ms=3000");
    let ns_owned = ns.to_string();
    let request = std::thread::spawn(move || get_from_client_pod(&ns_owned, &url, 90));
    let held = wait_until("the request held", Duration::from_secs(30), || {
        metric_value(ADMIN, &held_gauge).filter(|v| *v >= 1.0)
    });
    if let Err(e) = held {
        let _ = stop_tx.send(());
        let _ = agent.join();
        let _ = std::fs::remove_file(&token);
        anyhow::bail!("{e}; the request: {:?}", request.join().expect("thread"));
    }
    let _ = stop_tx.send(());
    kube()?.scale(ns, "deployments", "web", 1)?;
    let answer = request.join().expect("thread");
    let stopped = agent.join().expect("agent thread");
    let _ = std::fs::remove_file(token);
    let answer = answer?;
    anyhow::ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "the request released during the drain was cut off when the agent exited: {answer}"
    );
    stopped?;
    Ok(())
}
