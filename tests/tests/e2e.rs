//! End to end on the kind cluster (one control plane, two workers): elasti installed from
//! its chart (the agent DaemonSet on every node, the operator Deployment), real workloads
//! behind real Services, and clients that are pods (or this process, in a node's
//! intercepted cgroup and network). Every scenario checks what the clients saw and the
//! cluster state, and lands in the table `cargo xtask e2e` prints. Scenarios 20–25 need
//! several nodes.
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use elasti_api::Mode;
use elasti_e2e::{e2e::*, *};
use elasti_workloads::client;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// elasti installed, a namespace of the scenario's own with `apps` and their
/// ElastiServices.
fn setup(prefix: &str, apps: &[&App]) -> anyhow::Result<TempNamespace> {
    require_cluster();
    install_elasti()?;
    let ns = TempNamespace::create(prefix)?;
    for app in apps {
        deploy(&ns.name, app)?;
        apply_es(&ns.name, &app.elastiservice())?;
    }
    Ok(ns)
}

fn addr(ip: &str, port: u16) -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::new(ip.parse()?, port))
}

/// `app`, warm first, then scaled to zero and held by every agent: its namespace, and the
/// ClusterIP address to call.
fn held(prefix: &str, app: &App) -> anyhow::Result<(TempNamespace, SocketAddr)> {
    let ns = setup(prefix, &[app])?;
    wait_mode(&ns.name, &app.name, Mode::Serve)?;
    scale_to_zero_and_wait_held(&ns.name, app.kind, &app.name)?;
    let target = addr(&cluster_ip(&ns.name, &app.name)?, 80)?;
    Ok((ns, target))
}

/// [`held`] for the HTTP workload `web` (a Deployment).
fn held_web(prefix: &str) -> anyhow::Result<(TempNamespace, SocketAddr)> {
    held(prefix, &App::http("web"))
}

/// The node a pod runs on.
fn node_of(ns: &str, pod: &str) -> anyhow::Result<String> {
    kube()?
        .get::<k8s_openapi::api::core::v1::Pod>(ns, pod)?
        .spec
        .and_then(|s| s.node_name)
        .context("pod not scheduled")
}

/// The agent metric `what` of one held port, on node `node`.
fn agent_count(node: &str, what: &str, ns: &str, outcome: Option<&str>) -> f64 {
    let Some(n) = cluster().node(node) else {
        return 0.0;
    };
    let text = metrics_text(&elasti::agent_admin(&n.ip));
    let series = match outcome {
        Some(o) => format!(
            r#"elasti_agent_{what}{{namespace="{ns}",service="web",port="80",protocol="Http1",outcome="{o}"}}"#
        ),
        None => elasti::port_series(what, ns, "web", 80),
    };
    elasti::sample(&text, &series).unwrap_or(0.0)
}

/// `ScaledUp` events of ElastiService `name`.
fn scaled_up_events(ns: &str) -> usize {
    kubectl(&[
        "-n",
        ns,
        "get",
        "events.events.k8s.io",
        "--field-selector",
        "regarding.kind=ElastiService,reason=ScaledUp",
        "-o",
        "name",
    ])
    .map(|o| o.lines().filter(|l| !l.is_empty()).count())
    .unwrap_or(0)
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_00_elasti_installs_from_its_manifests_without_helm_and_uninstalls_cleanly() {
    scenario(
        0,
        "kubectl apply -k deploy/daemonset; a cold request held and answered; delete -k",
        || {
            require_cluster();
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/daemonset");
            // A Helm release from an earlier run would own these objects.
            let _ = std::process::Command::new(elasti_testbed::paths::helm_bin().join("helm"))
                .args(["uninstall", "elasti", "-n", elasti::NAMESPACE, "--wait"])
                .output();
            kubectl(&["apply", "-k", dir])?;
            for what in ["daemonset/elasti-agent", "deployment/elasti-operator"] {
                kubectl(&[
                    "-n",
                    elasti::NAMESPACE,
                    "rollout",
                    "status",
                    what,
                    "--timeout=180s",
                ])?;
            }
            let ns = TempNamespace::create("e2e-s00")?;
            let n = ns.name.as_str();
            let web = App::http("web");
            deploy(n, &web)?;
            apply_es(n, &web.elastiservice())?;
            wait_mode(n, "web", Mode::Serve)?;
            scale_to_zero_and_wait_held(n, Kind::Deployment, "web")?;
            let target = addr(&cluster_ip(n, "web")?, 80)?;
            {
                let _cg = InPodsCgroup::enter("s00")?;
                let a = block_on(client::get(target, "/"))?;
                ensure!(a.status == 200 && a.body.contains("pod=web-"), "{a:?}");
            }
            // Uninstalled the way it was installed: the ElastiService first (its finalizer
            // needs the operator), then everything `-k` made.
            kubectl(&["-n", n, "delete", "elastiservice", "web", "--timeout=60s"])?;
            kubectl(&["delete", "-k", dir, "--timeout=180s"])?;
            ensure!(
                kubectl(&["get", "namespace", elasti::NAMESPACE]).is_err(),
                "elasti-system removed"
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_01_a_request_at_zero_from_a_pod_is_held_and_answered_by_ip_and_dns() {
    scenario(
        1,
        "scale to 0 -> proxy; pod request by ClusterIP and DNS held, answered; serve",
        || {
            let ns = setup("e2e-s01", &[&App::http("web")])?;
            let ns = ns.name.as_str();
            deploy_client(ns, "client", None, false)?;
            wait_mode(ns, "web", Mode::Serve)?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
            let ip = cluster_ip(ns, "web")?;
            let start = Instant::now();
            let by_ip = {
                let (ns, url) = (ns.to_string(), format!("http://{ip}/"));
                std::thread::spawn(move || get_from_client_pod(&ns, &url, 90))
            };
            let by_dns =
                get_from_client_pod(ns, &format!("http://web.{ns}.svc.cluster.local/"), 90)?;
            let by_ip = by_ip.join().map_err(|_| anyhow::anyhow!("thread"))??;
            eprintln!("cold request answered in {:?}", start.elapsed());
            for r in [&by_ip, &by_dns] {
                ensure!(
                    r.starts_with("HTTP/1.1 200") && r.contains("pod=web-"),
                    "answer: {r}"
                );
            }
            wait_mode(ns, "web", Mode::Serve)?;
            ensure!(replicas(ns, Kind::Deployment, "web") == 1);
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_02_bodies_streams_drips_and_headers_survive_a_cold_start() {
    scenario(
        2,
        "1 MiB body, chunked stream, slow drip through a cold start",
        || {
            let (_ns, target) = held_web("e2e-s02")?;
            let _cg = InPodsCgroup::enter("s02")?;
            let (big, stream, drip, headers) = block_on(async move {
                tokio::join!(
                    client::echo_len(target, 1 << 20),
                    client::get(target, "/stream?chunks=5&interval_ms=100"),
                    client::get(target, "/slow?ms=1500&drip=3"),
                    client::get(target, "/"),
                )
            });
            ensure!(big? == 1 << 20, "1 MiB echoed whole");
            let stream = stream?;
            ensure!(
                stream.status == 200 && stream.body.lines().count() == 5,
                "{stream:?}"
            );
            let drip = drip?;
            ensure!(
                drip.status == 200 && drip.body.contains("pod=web-"),
                "{drip:?}"
            );
            let h = headers?;
            ensure!(
                h.headers.get("x-trace").map(|v| v.as_bytes()) == Some(b"abc".as_slice()),
                "request header echoed: {h:?}"
            );
            ensure!(
                h.headers.contains_key("x-served-by"),
                "response header kept: {h:?}"
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_03_a_manual_scale_up_gives_serve() {
    scenario(
        3,
        "manual scale-up -> serve, and every agent hands back",
        || {
            let ns = setup("e2e-s03", &[&App::http("web")])?;
            let ns = ns.name.as_str();
            wait_mode(ns, "web", Mode::Serve)?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
            kube()?.scale(ns, "deployments", "web", 1)?;
            wait_mode(ns, "web", Mode::Serve)?;
            let prefix = elasti::port_series("intercepting", ns, "web", 80);
            wait_until("handed back on every node", Duration::from_secs(30), || {
                agent_metric_on_every_node(&prefix)
                    .iter()
                    .all(|(_, v)| *v == Some(0.0))
                    .then_some(())
            })?;
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_04_a_changed_service_port_is_followed() {
    scenario(
        4,
        "Service port change: proxy ports and agent listeners follow",
        || {
            let ns = setup("e2e-s04", &[&App::http("web")])?;
            let ns = ns.name.as_str();
            wait_mode(ns, "web", Mode::Serve)?;
            kubectl(&[
                "-n",
                ns,
                "patch",
                "service",
                "web",
                "--type=json",
                "-p",
                r#"[{"op":"replace","path":"/spec/ports/0/port","value":8081}]"#,
            ])?;
            wait_until("proxyPorts follow", Duration::from_secs(30), || {
                let port = es(ns, "web")?.status?.proxy_ports.first()?.port;
                (port == 8081).then_some(())
            })?;
            kube()?.scale(ns, "deployments", "web", 0)?;
            wait_mode(ns, "web", Mode::Proxy)?;
            wait_intercepting(ns, "web", 8081)?;
            let target = addr(&cluster_ip(ns, "web")?, 8081)?;
            let _cg = InPodsCgroup::enter("s04")?;
            let a = block_on(client::get(target, "/"))?;
            ensure!(a.status == 200 && a.body.contains("pod=web-"), "{a:?}");
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_05_deleting_the_elastiservice_at_zero_scales_back_and_cleans_up() {
    scenario(
        5,
        "delete the ElastiService at 0: target scaled back, elasti's objects gone",
        || {
            let ns = setup("e2e-s05", &[&App::http("web")])?;
            let ns = ns.name.as_str();
            wait_mode(ns, "web", Mode::Serve)?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
            wait_until("fallback slice", Duration::from_secs(30), || {
                kube()
                    .ok()?
                    .get_opt::<EndpointSlice>(ns, "web-elasti-ipv4")
                    .ok()?
            })?;
            kubectl(&["-n", ns, "delete", "elastiservice", "web", "--timeout=60s"])?;
            ensure!(
                replicas(ns, Kind::Deployment, "web") == 1,
                "scaled back before the finalizer went"
            );
            ensure!(
                kube()?
                    .get_opt::<EndpointSlice>(ns, "web-elasti-ipv4")?
                    .is_none(),
                "slice removed"
            );
            let prefix = elasti::port_series("intercepting", ns, "web", 80);
            // Released on every node: the service's gauges are gone from /metrics, not
            // left at a value.
            wait_until("every agent lets go", Duration::from_secs(30), || {
                cluster()
                    .nodes
                    .iter()
                    .map(|n| metrics_text(&elasti::agent_admin(&n.ip)))
                    .all(|t| !t.is_empty() && !t.contains(&prefix))
                    .then_some(())
            })?;
            Ok(())
        },
    );
}

/// Whether `endpoint` (`ip:port`) is an agent's proxy port: some node's address.
fn is_agent(endpoint: &str) -> bool {
    cluster()
        .nodes
        .iter()
        .any(|n| endpoint.starts_with(&format!("{}:", n.ip)))
}

/// `web` as a NodePort Service, warm, then at zero with kube-proxy on this node sending
/// it to the agents only: the namespace, the node port and the pods scaled away.
fn nodeport_at_zero(
    prefix: &str,
    policy: &str,
) -> anyhow::Result<(TempNamespace, u16, Vec<String>)> {
    let ns_owned = setup(prefix, &[&App::http("web")])?;
    let ns = ns_owned.name.as_str();
    kubectl(&[
        "-n",
        ns,
        "patch",
        "service",
        "web",
        "-p",
        &format!(r#"{{"spec":{{"type":"NodePort","externalTrafficPolicy":"{policy}"}}}}"#),
    ])?;
    wait_mode(ns, "web", Mode::Serve)?;
    let warm = ready_pods(ns, "web")?;
    // kube-proxy has caught up with serve (the pod), so that the agents seen below are
    // the slice published at 0, not the one from before the pod was first Ready.
    wait_kube_proxy_sends(ns, "web", "the pod", |e| !is_agent(e))?;
    scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
    let node_port = kube()?
        .get::<k8s_openapi::api::core::v1::Service>(ns, "web")?
        .spec
        .and_then(|s| s.ports?.first()?.node_port)
        .context("no nodePort")? as u16;
    wait_until("fallback slice", Duration::from_secs(30), || {
        kube()
            .ok()?
            .get_opt::<EndpointSlice>(ns, "web-elasti-ipv4")
            .ok()?
    })?;
    // Until kube-proxy has the slice, NodePort connects still reach the terminating pod,
    // which answers them itself: only a later connect is elasti's to hold.
    wait_kube_proxy_sends(ns, "web", "the agents", is_agent)?;
    Ok((ns_owned, node_port, warm))
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_06_nodeport_traffic_reaches_an_agent_through_the_fallback_slice() {
    scenario(
        6,
        "fallback path: a NodePort request at 0 is held and answered",
        || {
            let (ns, node_port, warm) = nodeport_at_zero("e2e-s06", "Cluster")?;
            let ns = ns.name.as_str();
            // From the node's network, outside every intercepted cgroup: only kube-proxy
            // and the fallback slice can bring this to an agent.
            let r = get_from_netns(
                &format!("{}:{node_port}", cluster().home().ip),
                "/",
                Duration::from_secs(90),
            )?;
            ensure!(
                r.starts_with("HTTP/1.1 200") && r.contains("pod=web-"),
                "{r}"
            );
            // Held and answered by the pod the wake started, not by the one scaled away.
            ensure!(
                !warm.iter().any(|p| r.contains(&format!("pod={p}\n"))),
                "answered by {warm:?}, the pod scaled away: {r}"
            );
            wait_mode(ns, "web", Mode::Serve)?;
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_07_a_real_prometheus_query_scales_to_zero_after_the_cooldown() {
    scenario(
        7,
        "scale-down driven by a real Prometheus query after the cooldown",
        || {
            require_cluster();
            install_elasti()?;
            let ns_owned = TempNamespace::create("e2e-s07")?;
            let ns = ns_owned.name.as_str();
            let port = elasti_e2e::operator::free_port();
            let prometheus = elasti_testbed::prometheus::Prometheus::start(
                cluster(),
                port,
                std::env::temp_dir().join(format!("elasti-e2e-prometheus-{}", std::process::id())),
            )?;
            let web = App::http("web");
            deploy(ns, &web)?;
            kubectl(&[
                "-n",
                ns,
                "rollout",
                "status",
                "deployment/web",
                "--timeout=120s",
            ])?;
            let pod_ip = ready_pods(ns, "web")?
                .first()
                .map(|p| pod_ip(ns, p))
                .context("no web pod")??;
            prometheus.scrape(&[format!("{pod_ip}:8080")])?;
            // Traffic for 25 s (4 requests a second): the trigger reads busy past the
            // cooldown, then idle once the traffic stops.
            let pod = addr(&pod_ip, 8080)?;
            let traffic = std::thread::spawn(move || {
                for _ in 0..100 {
                    let _ = block_on(client::get(pod, "/"));
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
            // The operator pods reach Prometheus at this machine's address on the nodes'
            // network.
            let mut es = web.elastiservice();
            es.spec.cooldown_period = 15;
            es.spec.triggers = vec![prometheus_trigger(
                &prometheus.url,
                r#"sum(rate(http_requests_total{job="web"}[20s])) or vector(0)"#,
                "0.5",
            )];
            apply_es(ns, &es)?;
            let start = Instant::now();
            let reason = || {
                condition(ns, "web", "ScaledToZero")
                    .map(|c| c.reason)
                    .unwrap_or_default()
            };
            wait_until(
                "busy reading while traffic flows",
                Duration::from_secs(40),
                || (reason() == "TrafficAboveThreshold").then_some(()),
            )?;
            ensure!(
                replicas(ns, Kind::Deployment, "web") == 1,
                "not scaled down under traffic"
            );
            traffic
                .join()
                .map_err(|_| anyhow::anyhow!("traffic thread"))?;
            wait_replicas(ns, Kind::Deployment, "web", 0, Duration::from_secs(120))?;
            let took = start.elapsed();
            ensure!(
                took >= Duration::from_secs(25),
                "not while the traffic flowed: {took:?}"
            );
            eprintln!("created to scaled-to-zero: {took:?} (cooldown 15 s)");
            // The status is written right after the `/scale` patch (and its event), so a
            // poll can see the replicas at 0 a moment before the condition.
            wait_until(
                "ScaledToZero True after the scale-down",
                Duration::from_secs(10),
                || {
                    condition(ns, "web", "ScaledToZero")
                        .filter(|c| c.status == "True")
                        .map(drop)
                },
            )
            .map_err(|e| {
                let c = condition(ns, "web", "ScaledToZero");
                anyhow::anyhow!("{e}; condition: {c:?}")
            })?;
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_08_a_running_but_unready_pod_keeps_requests_held_until_ready() {
    scenario(
        8,
        "Running-not-Ready pod: requests held until Ready",
        || {
            let (_ns, target) = held("e2e-s08", &App::http("web").env("READY_AFTER_MS", "6000"))?;
            let _cg = InPodsCgroup::enter("s08")?;
            let start = Instant::now();
            let a = block_on(client::get(target, "/"))?;
            let took = start.elapsed();
            ensure!(a.status == 200, "{a:?}");
            ensure!(
                took >= Duration::from_secs(6),
                "answered only once Ready: {took:?}"
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_09_a_statefulset_target() {
    scenario(9, "StatefulSet target: held and answered", || {
        let (ns, target) = held("e2e-s09", &App::http("web").stateful_set())?;
        let ns = ns.name.as_str();
        let _cg = InPodsCgroup::enter("s09")?;
        let a = block_on(client::get(target, "/"))?;
        ensure!(a.status == 200 && a.body.contains("pod=web-0"), "{a:?}");
        ensure!(replicas(ns, Kind::StatefulSet, "web") == 1);
        Ok(())
    });
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_10_request_and_response_headers_survive_the_hold() {
    scenario(
        10,
        "custom request headers and the response headers survive the hold",
        || {
            let (_ns, target) = held_web("e2e-s10")?;
            let _cg = InPodsCgroup::enter("s10")?;
            let a = block_on(async move {
                client::Http1::connect(target)
                    .await?
                    .send(
                        "GET",
                        "/",
                        &[("x-tenant", "blue"), ("x-request-id", "r-42")],
                        bytes::Bytes::new(),
                    )
                    .await
            })?;
            ensure!(a.status == 200, "{a:?}");
            for (k, v) in [("x-tenant", "blue"), ("x-request-id", "r-42")] {
                ensure!(
                    a.headers.get(k).map(|h| h.as_bytes()) == Some(v.as_bytes()),
                    "{k} reached the pod and came back: {a:?}"
                );
            }
            ensure!(
                a.headers
                    .get("x-served-by")
                    .is_some_and(|h| h.as_bytes().starts_with(b"web-")),
                "the pod's own response header: {a:?}"
            );
            ensure!(
                a.headers.get("content-type").map(|h| h.as_bytes())
                    == Some(b"text/plain".as_slice()),
                "{a:?}"
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_13_an_elastiservice_outside_watch_namespaces_is_ignored() {
    scenario(
        13,
        "WATCH_NAMESPACES: an ElastiService outside it is ignored",
        || {
            let inside = setup("e2e-s13in", &[&App::http("web")])?;
            let outside = TempNamespace::create("e2e-s13out")?;
            let (inside, outside) = (inside.name.as_str(), outside.name.as_str());
            let scope = |value: &str| -> anyhow::Result<()> {
                kubectl(&[
                    "-n",
                    elasti::NAMESPACE,
                    "set",
                    "env",
                    "deployment/elasti-operator",
                    &format!("WATCH_NAMESPACES={value}"),
                ])?;
                kubectl(&[
                    "-n",
                    elasti::NAMESPACE,
                    "rollout",
                    "status",
                    "deployment/elasti-operator",
                    "--timeout=120s",
                ])?;
                Ok(())
            };
            scope(inside)?;
            let result = (|| -> anyhow::Result<()> {
                let web = App::http("web");
                deploy(outside, &web)?;
                apply_es(outside, &web.elastiservice())?;
                // A change inside the scope is seen...
                kube()?.scale(inside, "deployments", "web", 0)?;
                wait_mode(inside, "web", Mode::Proxy)?;
                // ...while the one outside is never touched.
                std::thread::sleep(Duration::from_secs(5));
                let untouched = es(outside, "web").context("outside ElastiService")?;
                ensure!(
                    untouched.metadata.finalizers.unwrap_or_default().is_empty(),
                    "no finalizer"
                );
                ensure!(untouched.status.is_none(), "no status");
                Ok(())
            })();
            scope("")?;
            result
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_11_a_connection_opened_while_cold_leaves_the_agent_after_its_first_answer() {
    scenario(
        11,
        "keep-alive connection opened at 0: answered with Connection: close, the next goes direct",
        || {
            let (ns, target) = held_web("e2e-s11")?;
            let ns = ns.name.as_str();
            let _cg = InPodsCgroup::enter("s11")?;
            let ns2 = ns.to_string();
            block_on(async move {
                let mut conn = client::Http1::connect(target).await?;
                let first = conn.send("GET", "/", &[], bytes::Bytes::new()).await?;
                ensure!(first.status == 200, "{first:?}");
                ensure!(
                    first.headers.get("connection").map(|v| v.as_bytes())
                        == Some(b"close".as_slice()),
                    "the agent ends its connection after the first answer: {first:?}"
                );
                let again = conn.send("GET", "/", &[], bytes::Bytes::new()).await;
                ensure!(again.is_err(), "the held connection is closed: {again:?}");
                let ns = ns2.clone();
                tokio::task::spawn_blocking(move || wait_mode(&ns, "web", Mode::Serve)).await??;
                tokio::time::sleep(Duration::from_secs(3)).await; // past the hand-back grace
                let mut direct = client::Http1::connect(target).await?;
                for _ in 0..3 {
                    let a = direct.send("GET", "/", &[], bytes::Bytes::new()).await?;
                    ensure!(
                        a.status == 200 && a.headers.get("connection").is_none(),
                        "a new connection goes to the pod directly and stays open: {a:?}"
                    );
                }
                Ok(())
            })
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_12_grpc_websocket_and_raw_tcp_through_a_cold_start() {
    scenario(
        12,
        "gRPC unary+server-streaming, websocket, raw TCP through a cold start",
        || {
            let (web, echo) = (App::http("web"), App::tcp_echo("echo"));
            let ns = setup("e2e-s12", &[&web, &echo])?;
            let ns = ns.name.as_str();
            wait_mode(ns, "web", Mode::Serve)?;
            wait_mode(ns, "echo", Mode::Serve)?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "echo")?;
            let web = addr(&cluster_ip(ns, "web")?, 80)?;
            let echo = addr(&cluster_ip(ns, "echo")?, 80)?;
            let _cg = InPodsCgroup::enter("s12")?;
            let (unary, stream, ws, tcp) = block_on(async move {
                tokio::join!(
                    client::grpc_server_stream(web, 1),
                    client::grpc_server_stream(web, 3),
                    client::websocket_echo(web, "hello"),
                    client::tcp_who_and_echo(echo),
                )
            });
            let (ok, status) = unary?;
            ensure!(
                ok && status.as_deref() == Some("0"),
                "unary: {ok} {status:?}"
            );
            let (ok, status) = stream?;
            ensure!(
                ok && status.as_deref() == Some("0"),
                "server-streaming: {ok} {status:?}"
            );
            ensure!(ws? == "hello", "websocket echo");
            let (who, again) = tcp?;
            ensure!(
                who.starts_with("pod=echo-") && again == "again\n",
                "tcp: {who:?} {again:?}"
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_14_five_hundred_concurrent_requests_in_one_cold_start() {
    scenario(
        14,
        "500 concurrent requests during one cold start: all answered",
        || {
            let (_ns, target) = held_web("e2e-s14")?;
            let _cg = InPodsCgroup::enter("s14")?;
            let start = Instant::now();
            let results = block_on(async move {
                let tasks: Vec<_> = (0..500)
                    .map(|_| tokio::spawn(client::get(target, "/")))
                    .collect();
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await);
                }
                out
            });
            let ok = results
                .iter()
                .filter(|r| matches!(r, Ok(Ok(a)) if a.status == 200))
                .count();
            eprintln!("500 cold requests answered in {:?}", start.elapsed());
            ensure!(ok == 500, "{ok} of 500 answered 200");
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_15_a_host_network_client_pod_is_held_and_answered() {
    scenario(15, "hostNetwork client pod: held and answered", || {
        let ns = setup("e2e-s15", &[&App::http("web")])?;
        let ns = ns.name.as_str();
        deploy_client(ns, "client", None, true)?;
        wait_mode(ns, "web", Mode::Serve)?;
        scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
        let ip = cluster_ip(ns, "web")?;
        let r = get_from_client_pod(ns, &format!("http://{ip}/"), 90)?;
        ensure!(
            r.starts_with("HTTP/1.1 200") && r.contains("pod=web-"),
            "{r}"
        );
        Ok(())
    });
}

/// `kubectl rollout restart` of the agent DaemonSet, waited for.
fn restart_agents() -> anyhow::Result<String> {
    kubectl(&[
        "-n",
        elasti::NAMESPACE,
        "rollout",
        "restart",
        "daemonset/elasti-agent",
    ])?;
    kubectl(&[
        "-n",
        elasti::NAMESPACE,
        "rollout",
        "status",
        "daemonset/elasti-agent",
        "--timeout=300s",
    ])
}

/// `e` and every cause under it, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// What went wrong with each of `results`; empty when every one was a 200.
fn failures<E: std::fmt::Display>(
    results: &[Result<Result<client::Answer, client::Error>, E>],
) -> Vec<String> {
    results
        .iter()
        .filter_map(|r| match r {
            Ok(Ok(a)) if a.status == 200 => None,
            Ok(Ok(a)) => Some(format!("HTTP {}", a.status)),
            Ok(Err(e)) => Some(error_chain(e)),
            Err(e) => Some(e.to_string()),
        })
        .collect()
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_16_an_agent_rolling_update_in_proxy_mode_fails_no_request() {
    scenario(
        16,
        "agent rolling update in proxy mode under a request stream: no failure",
        || {
            let (_ns, target) = held("e2e-s16", &App::http("web").env("READY_AFTER_MS", "8000"))?;
            let _cg = InPodsCgroup::enter("s16")?;
            let restarted = std::thread::spawn(restart_agents);
            let results = block_on(async move {
                let mut tasks = Vec::new();
                for _ in 0..60 {
                    tasks.push(tokio::spawn(client::get(target, "/")));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await);
                }
                out
            });
            restarted.join().map_err(|_| anyhow::anyhow!("thread"))??;
            let failed = failures(&results);
            ensure!(
                failed.is_empty(),
                "{} of 60 failed: {failed:?}",
                failed.len()
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_17_the_wake_completes_when_the_operator_is_killed_after_the_first_held_request() {
    scenario(
        17,
        "operator pods killed right after the first held request: wake completes",
        || {
            let (ns, target) = held_web("e2e-s17")?;
            let ns = ns.name.as_str();
            let _cg = InPodsCgroup::enter("s17")?;
            let held = elasti::port_series("held", ns, "web", 80);
            let answer = block_on(async move {
                let request = tokio::spawn(client::get(target, "/"));
                let killed = tokio::task::spawn_blocking(move || {
                    wait_until("request held", Duration::from_secs(10), || {
                        agent_metric(&held).filter(|v| *v >= 1.0)
                    })?;
                    kubectl(&[
                        "-n",
                        elasti::NAMESPACE,
                        "delete",
                        "pod",
                        "-l",
                        "app.kubernetes.io/name=elasti-operator",
                        "--grace-period=0",
                        "--force",
                    ])
                })
                .await;
                (request.await, killed)
            });
            answer.1??;
            let a = answer.0??;
            ensure!(a.status == 200, "{a:?}");
            kubectl(&[
                "-n",
                elasti::NAMESPACE,
                "rollout",
                "status",
                "deployment/elasti-operator",
                "--timeout=120s",
            ])?;
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_18_a_wake_without_a_valid_token_is_refused_and_the_target_stays_at_zero() {
    scenario(
        18,
        "wake without a valid token: 401, target stays at 0",
        || {
            let ns = setup("e2e-s18", &[&App::http("web").replicas(0)])?;
            let ns = ns.name.as_str();
            wait_mode(ns, "web", Mode::Proxy)?;
            let operator = addr(&cluster_ip(elasti::NAMESPACE, "elasti-operator")?, 8080)?;
            let body = format!(r#"{{"namespace":"{ns}","service":"web"}}"#);
            for token in [None, Some("not-a-token")] {
                let (code, resp) = elasti_e2e::operator::post(operator, "/v1/wake", token, &body)?;
                ensure!(code == 401, "{token:?}: {resp}");
            }
            // A real token, but the default ServiceAccount's and another audience.
            let other = kubectl(&[
                "-n",
                ns,
                "create",
                "token",
                "default",
                "--audience",
                "elasti-operator",
            ])?;
            let (code, resp) =
                elasti_e2e::operator::post(operator, "/v1/wake", Some(other.trim()), &body)?;
            ensure!(code == 403, "another ServiceAccount: {resp}");
            std::thread::sleep(Duration::from_secs(3));
            if replicas(ns, Kind::Deployment, "web") != 0 {
                bail!("the target was scaled by a refused wake");
            }
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_19_every_cold_period_of_one_service_wakes_it() {
    scenario(
        19,
        "three cold periods of one service, served directly in between: each wakes",
        || {
            let ns = setup("e2e-s19", &[&App::http("web")])?;
            let ns = ns.name.as_str();
            deploy_client(ns, "client", None, false)?;
            wait_mode(ns, "web", Mode::Serve)?;
            let url = format!("http://{}/", cluster_ip(ns, "web")?);
            for period in 1..=3 {
                scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
                let start = Instant::now();
                let cold = get_from_client_pod(ns, &url, 60)?;
                ensure!(
                    cold.starts_with("HTTP/1.1 200"),
                    "cold period {period}: {cold}"
                );
                eprintln!("cold period {period} answered in {:?}", start.elapsed());
                wait_mode(ns, "web", Mode::Serve)?;
                // Served by the pod straight through the ClusterIP, not by the agent.
                let warm = get_from_client_pod(ns, &url, 10)?;
                ensure!(warm.starts_with("HTTP/1.1 200"), "warm: {warm}");
            }
            Ok(())
        },
    );
}

/// The two workers' names: the one the suites run on first.
fn two_workers() -> anyhow::Result<(String, String)> {
    match cluster().workers().as_slice() {
        [a, b, ..] => Ok((a.name.clone(), b.name.clone())),
        _ => bail!("this scenario needs two workers"),
    }
}

/// A client pod `client-<node>` on each of `nodes`, Ready.
fn clients_on(ns: &str, nodes: &[String]) -> anyhow::Result<Vec<String>> {
    nodes
        .iter()
        .map(|n| {
            let pod = format!("client-{n}");
            deploy_client(ns, &pod, Some(n), false)?;
            Ok(pod)
        })
        .collect()
}

/// The `i`-th (round robin) Ready `address:port` of Service `service`'s EndpointSlices
/// (its port `http`), as an ingress controller would pick one.
fn ready_endpoint(ns: &str, service: &str, i: usize) -> anyhow::Result<String> {
    let out = kubectl(&[
        "-n",
        ns,
        "get",
        "endpointslices",
        "-l",
        &format!("kubernetes.io/service-name={service}"),
        "-o",
        "json",
    ])?;
    // kubectl prints a `v1` List, whatever the items' kind.
    let mut list: serde_json::Value = serde_json::from_str(&out)?;
    let slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> =
        serde_json::from_value(list["items"].take())?;
    let all = elasti_api::endpoints::ready_endpoints(&slices, "http");
    anyhow::ensure!(!all.is_empty(), "no Ready endpoint");
    Ok(all[i % all.len()].to_string())
}

/// `http-get --repeat` from `pod`: one request every `every_ms`; the lines it printed, one
/// per request (`<i> HTTP/1.1 200 OK` or `<i> error: …`), whatever its exit code.
fn stream_from_pod(
    ns: &str,
    pod: &str,
    url: &str,
    repeat: u32,
    every_ms: u64,
    timeout: u32,
) -> Vec<String> {
    let out = std::process::Command::new("kubectl")
        .args(["-n", ns, "exec", pod, "--", "/usr/local/bin/http-get"])
        .args([
            "--timeout",
            &timeout.to_string(),
            "--repeat",
            &repeat.to_string(),
        ])
        .args(["--every-ms", &every_ms.to_string(), url])
        .output();
    match out {
        Ok(o) => {
            let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(String::from)
                .collect();
            if lines.is_empty() {
                vec![format!(
                    "error: kubectl exec: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )]
            } else {
                lines
            }
        }
        Err(e) => vec![format!("error: kubectl: {e}")],
    }
}

fn ok_lines(lines: &[String]) -> usize {
    lines.iter().filter(|l| l.contains(" HTTP/1.1 200")).count()
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_20_a_request_held_on_the_clients_node_is_answered_by_a_pod_on_another_node() {
    scenario(
        20,
        "client on one worker, target pinned to the other: held by the client's agent, answered across nodes",
        || {
            let (client_node, pod_node) = two_workers()?;
            let ns = setup("e2e-s20", &[&App::http("web").on_node(&pod_node)])?;
            let ns = ns.name.as_str();
            deploy_client(ns, "client", Some(&client_node), false)?;
            wait_mode(ns, "web", Mode::Serve)?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
            let r = get_from_client_pod(ns, &format!("http://{}/", cluster_ip(ns, "web")?), 90)?;
            ensure!(
                r.starts_with("HTTP/1.1 200") && r.contains("pod=web-"),
                "{r}"
            );
            let answered_by = r
                .lines()
                .find_map(|l| l.strip_prefix("pod="))
                .context("no pod= line")?;
            ensure!(
                node_of(ns, answered_by)? == pod_node,
                "{answered_by} runs on {pod_node}"
            );
            let forwarded = "ForwardedAfterHold";
            ensure!(
                agent_count(&client_node, "outcomes_total", ns, Some(forwarded)) == 1.0,
                "held and forwarded by the agent on the client's node {client_node}"
            );
            ensure!(
                agent_count(&pod_node, "outcomes_total", ns, Some(forwarded)) == 0.0,
                "the pod's node's agent held nothing"
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_21_clients_on_every_node_during_one_cold_start_cause_one_scale_up() {
    scenario(
        21,
        "clients on all three nodes in one cold start: one scale-up, every request answered",
        || {
            let ns_owned = setup(
                "e2e-s21",
                &[&App::http("web").env("READY_AFTER_MS", "3000")],
            )?;
            let ns = ns_owned.name.as_str();
            let nodes: Vec<String> = cluster().nodes.iter().map(|n| n.name.clone()).collect();
            let clients = clients_on(ns, &nodes)?;
            wait_mode(ns, "web", Mode::Serve)?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
            let before = scaled_up_events(ns);
            let url = format!("http://{}/", cluster_ip(ns, "web")?);
            let streams: Vec<_> = clients
                .iter()
                .map(|pod| {
                    let (ns, pod, url) = (ns.to_string(), pod.clone(), url.clone());
                    std::thread::spawn(move || stream_from_pod(&ns, &pod, &url, 5, 100, 90))
                })
                .collect();
            let mut seen = Vec::new();
            for (pod, s) in clients.iter().zip(streams) {
                let lines = s.join().map_err(|_| anyhow::anyhow!("thread"))?;
                seen.push((pod.clone(), ok_lines(&lines), lines));
            }
            for (pod, ok, lines) in &seen {
                ensure!(*ok == 5, "{pod}: {ok} of 5 answered 200: {lines:?}");
            }
            for node in &nodes {
                let held = agent_count(node, "outcomes_total", ns, Some("ForwardedAfterHold"));
                ensure!(
                    held >= 1.0,
                    "the agent on {node} held its node's requests ({held})"
                );
            }
            wait_until("the ScaledUp event", Duration::from_secs(10), || {
                (scaled_up_events(ns) > before).then_some(())
            })?;
            std::thread::sleep(Duration::from_secs(2));
            ensure!(
                scaled_up_events(ns) == before + 1,
                "one scale-up for three nodes' wakes: {} events",
                scaled_up_events(ns) - before
            );
            ensure!(replicas(ns, Kind::Deployment, "web") == 1);
            Ok(())
        },
    );
}

/// The host PIDs of the `elasti-agent` processes in `node`'s cgroup, with their parents.
fn agent_processes_on(node: &str) -> anyhow::Result<Vec<(u32, u32)>> {
    let n = cluster().node(node).context("node")?;
    let cgroup = n.cgroup()?;
    let node_root = cgroup
        .strip_prefix(elasti_testbed::kind::cgroup2_mount())
        .context("node cgroup")?
        .display()
        .to_string();
    Ok(std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "elasti-agent")
                && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|c| c.contains(&node_root))
        })
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = elasti_testbed::procs::stat_field(&stat, elasti_testbed::procs::PPID)?;
            Some((pid, ppid))
        })
        .collect())
}

/// The host PID of the agent's worker on `node`: the `elasti-agent` whose parent is the
/// supervisor, also `elasti-agent`.
fn agent_worker_on(node: &str) -> anyhow::Result<u32> {
    let procs = agent_processes_on(node)?;
    let workers: Vec<u32> = procs
        .iter()
        .filter(|(_, ppid)| procs.iter().any(|(p, _)| p == ppid))
        .map(|(pid, _)| *pid)
        .collect();
    match workers.as_slice() {
        [pid] => Ok(*pid),
        other => bail!("expected one agent worker on {node}, found {other:?} of {procs:?}"),
    }
}

/// The agent container's restart count on `node`.
fn agent_restarts_on(node: &str) -> anyhow::Result<i32> {
    let pods = kube()?.list::<k8s_openapi::api::core::v1::Pod>(
        elasti::NAMESPACE,
        "app.kubernetes.io/name=elasti-agent",
    )?;
    pods.iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find_map(|p| {
            p.status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()
                .map(|c| c.restart_count)
        })
        .context("no agent pod on the node")
}

fn kill9(pid: u32) -> anyhow::Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    Ok(())
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_22_an_agent_killed_while_two_nodes_hold_requests_loses_nothing() {
    scenario(
        22,
        "kill -9 of one worker's agent while two workers hold: every request on both answered",
        || {
            let (killed, other) = two_workers()?;
            let ns_owned = setup(
                "e2e-s22",
                &[&App::http("web").env("READY_AFTER_MS", "12000")],
            )?;
            let ns = ns_owned.name.as_str();
            let clients = clients_on(ns, &[killed.clone(), other.clone()])?;
            wait_mode(ns, "web", Mode::Serve)?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
            let url = format!("http://{}/", cluster_ip(ns, "web")?);
            let streams: Vec<_> = clients
                .iter()
                .map(|pod| {
                    let (ns, pod, url) = (ns.to_string(), pod.clone(), url.clone());
                    std::thread::spawn(move || stream_from_pod(&ns, &pod, &url, 5, 50, 90))
                })
                .collect();
            let held = elasti::port_series("held", ns, "web", 80);
            for node in [&killed, &other] {
                let admin = elasti::agent_admin(&cluster().node(node).context("node")?.ip);
                wait_until(
                    &format!("5 requests held on {node}"),
                    Duration::from_secs(20),
                    || metric_value(&admin, &held).filter(|v| *v >= 5.0),
                )?;
            }
            let restarts = agent_restarts_on(&killed)?;
            let pid = agent_worker_on(&killed)?;
            kill9(pid)?;
            let results: Vec<Vec<String>> = streams
                .into_iter()
                .map(|s| s.join().unwrap_or_else(|_| vec!["error: thread".into()]))
                .collect();
            let (on_killed, on_other) = (&results[0], &results[1]);
            eprintln!(
                "the killed worker's node: {} of {} answered",
                ok_lines(on_killed),
                on_killed.len()
            );
            ensure!(
                ok_lines(on_other) == 5,
                "every request held on {other} answered: {on_other:?}"
            );
            ensure!(
                ok_lines(on_killed) == 5,
                "every request held by the killed worker answered: {on_killed:?}"
            );
            let back = agent_worker_on(&killed)?;
            ensure!(back != pid, "a new worker runs");
            ensure!(
                agent_restarts_on(&killed)? == restarts,
                "the supervisor restarted the worker; the container never restarted"
            );
            // The new worker holds a new cold period on its node too.
            wait_mode(ns, "web", Mode::Serve)?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
            let again = get_from_pod(ns, &clients[0], &url, 90)?;
            ensure!(
                again.starts_with("HTTP/1.1 200"),
                "after the restart: {again}"
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_23_nodeport_requests_at_zero_to_every_node_are_held_and_answered() {
    scenario(
        23,
        "NodePort at 0, a request to each node's address at once: all held and answered",
        || {
            let (ns, node_port, _) = nodeport_at_zero("e2e-s23", "Cluster")?;
            let ns = ns.name.as_str();
            let requests: Vec<_> = cluster()
                .nodes
                .iter()
                .map(|n| {
                    let to = format!("{}:{node_port}", n.ip);
                    let name = n.name.clone();
                    (
                        name,
                        std::thread::spawn(move || {
                            get_from_netns(&to, "/", Duration::from_secs(90))
                        }),
                    )
                })
                .collect();
            for (node, r) in requests {
                let r = r.join().map_err(|_| anyhow::anyhow!("thread"))?;
                let r = r.with_context(|| format!("via {node}"))?;
                ensure!(
                    r.starts_with("HTTP/1.1 200") && r.contains("pod=web-"),
                    "via {node}: {r}"
                );
            }
            wait_mode(ns, "web", Mode::Serve)?;
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_24_the_agent_daemonset_rolled_across_every_node_under_a_stream_at_zero_fails_nothing() {
    scenario(
        24,
        "agent DaemonSet rolled across all three nodes, a request stream from each, target at 0: no failure",
        || {
            let ns_owned = setup(
                "e2e-s24",
                &[&App::http("web").env("READY_AFTER_MS", "15000")],
            )?;
            let ns = ns_owned.name.as_str();
            let nodes: Vec<String> = cluster().nodes.iter().map(|n| n.name.clone()).collect();
            let clients = clients_on(ns, &nodes)?;
            wait_mode(ns, "web", Mode::Serve)?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
            let url = format!("http://{}/", cluster_ip(ns, "web")?);
            let streams: Vec<_> = clients
                .iter()
                .map(|pod| {
                    let (ns, pod, url) = (ns.to_string(), pod.clone(), url.clone());
                    std::thread::spawn(move || stream_from_pod(&ns, &pod, &url, 40, 500, 120))
                })
                .collect();
            std::thread::sleep(Duration::from_secs(2));
            let rolled = restart_agents();
            let mut failed = Vec::new();
            for (pod, s) in clients.iter().zip(streams) {
                let lines = s.join().map_err(|_| anyhow::anyhow!("thread"))?;
                if ok_lines(&lines) != 40 {
                    failed.push((pod.clone(), lines));
                }
            }
            rolled?;
            ensure!(failed.is_empty(), "streams with failures: {failed:?}");
            Ok(())
        },
    );
}

/// Uncordons `node` when dropped, whatever the scenario did.
struct Uncordon(String);

impl Drop for Uncordon {
    fn drop(&mut self) {
        let _ = kubectl(&["uncordon", &self.0]);
    }
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_25_a_worker_drained_while_a_request_is_held_elsewhere() {
    scenario(
        25,
        "a worker drained while the target is at 0 and a request is held on the other: answered",
        || {
            let (client_node, drained) = two_workers()?;
            let ns_owned = setup(
                "e2e-s25",
                &[&App::http("web").env("READY_AFTER_MS", "4000")],
            )?;
            let ns = ns_owned.name.as_str();
            deploy_client(ns, "client", Some(&client_node), false)?;
            wait_mode(ns, "web", Mode::Serve)?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
            let url = format!("http://{}/", cluster_ip(ns, "web")?);
            let _uncordon = Uncordon(drained.clone());
            let request = {
                let (ns, url) = (ns.to_string(), url.clone());
                std::thread::spawn(move || get_from_client_pod(&ns, &url, 120))
            };
            let held = elasti::port_series("held", ns, "web", 80);
            wait_until("the request held", Duration::from_secs(20), || {
                agent_metric(&held).filter(|v| *v >= 1.0)
            })?;
            kubectl(&[
                "drain",
                &drained,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--force",
                "--timeout=180s",
            ])?;
            let r = request.join().map_err(|_| anyhow::anyhow!("thread"))??;
            ensure!(r.starts_with("HTTP/1.1 200"), "{r}");
            let pod = r
                .lines()
                .find_map(|l| l.strip_prefix("pod="))
                .context("no pod= line")?;
            ensure!(
                node_of(ns, pod)? != drained,
                "{pod} is not on the drained {drained}"
            );
            kubectl(&[
                "-n",
                elasti::NAMESPACE,
                "rollout",
                "status",
                "deployment/elasti-operator",
                "--timeout=120s",
            ])?;
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_26_two_hundred_requests_held_by_a_worker_killed_with_sigkill_are_all_answered() {
    scenario(
        26,
        "kill -9 of the agent's worker with 200 held: all answered, connects while it was down too",
        || {
            let (ns_owned, target) =
                held("e2e-s26", &App::http("web").env("READY_AFTER_MS", "15000"))?;
            let ns = ns_owned.name.as_str();
            let node = cluster().home().name.clone();
            let restarts = agent_restarts_on(&node)?;
            let _cg = InPodsCgroup::enter("s26")?;
            let held = elasti::port_series("held", ns, "web", 80);
            let (results, later) = block_on(async move {
                let before: Vec<_> = (0..200)
                    .map(|_| tokio::spawn(client::get(target, "/")))
                    .collect();
                let waited = tokio::task::spawn_blocking(move || {
                    wait_until("200 held", Duration::from_secs(30), || {
                        agent_metric(&held).filter(|v| *v >= 200.0)
                    })
                })
                .await;
                let pid = agent_worker_on(&node);
                let killed = match (waited, pid) {
                    (Ok(Ok(_)), Ok(pid)) => kill9(pid).map(|()| pid),
                    (Ok(Err(e)), _) | (_, Err(e)) => Err(e),
                    (Err(e), _) => Err(anyhow::anyhow!("{e}")),
                };
                // Connects while the worker is down: they wait in the supervisor's backlog.
                let during: Vec<_> = (0..20)
                    .map(|_| tokio::spawn(client::get(target, "/")))
                    .collect();
                let mut out = Vec::new();
                for t in before.into_iter().chain(during) {
                    out.push(t.await);
                }
                (out, killed)
            });
            let killed = later?;
            let failed = failures(&results);
            ensure!(
                failed.is_empty(),
                "{} of 220 failed after the worker (pid {killed}) was killed: {:?}",
                failed.len(),
                &failed[..failed.len().min(5)]
            );
            ensure!(
                agent_restarts_on(&cluster().home().name)? == restarts,
                "the container never restarted: the supervisor restarted the worker"
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_27_a_renamed_port_and_a_second_tenant_never_share_a_proxy_port() {
    scenario(
        27,
        "port renamed (same number), then a second tenant: no request is answered by the other's pods",
        || {
            let a_owned = setup("e2e-s27a", &[&App::http("web")])?;
            let a = a_owned.name.as_str();
            wait_mode(a, "web", Mode::Serve)?;
            scale_to_zero_and_wait_held(a, Kind::Deployment, "web")?;
            let before =
                es(a, "web").and_then(|e| e.status?.proxy_ports.first().map(|p| p.proxy_port));
            // Renamed, same number: the operator moves it to a new proxy port.
            kubectl(&[
                "-n",
                a,
                "patch",
                "service",
                "web",
                "--type=json",
                "-p",
                r#"[{"op":"replace","path":"/spec/ports/0/name","value":"web"}]"#,
            ])?;
            let after = wait_until("a new proxy port", Duration::from_secs(30), || {
                let p = es(a, "web")?.status?.proxy_ports.first()?.clone();
                (p.name == "web" && Some(p.proxy_port) != before).then_some(p.proxy_port)
            })?;
            eprintln!("tenant a: proxy port {before:?} -> {after}");
            // A second tenant, whose Service is likely given the port just freed.
            let b_owned = setup("e2e-s27b", &[&App::http("api")])?;
            let b = b_owned.name.as_str();
            wait_mode(b, "api", Mode::Serve)?;
            scale_to_zero_and_wait_held(b, Kind::Deployment, "api")?;
            let b_port =
                es(b, "api").and_then(|e| e.status?.proxy_ports.first().map(|p| p.proxy_port));
            eprintln!("tenant b: proxy port {b_port:?}");
            let (a_ip, b_ip) = (
                addr(&cluster_ip(a, "web")?, 80)?,
                addr(&cluster_ip(b, "api")?, 80)?,
            );
            let _cg = InPodsCgroup::enter("s27")?;
            let answers = block_on(async move {
                let mut tasks = Vec::new();
                for _ in 0..20 {
                    tasks.push(("b", tokio::spawn(client::get(b_ip, "/"))));
                }
                let mut out = Vec::new();
                for (who, t) in tasks {
                    out.push((who, t.await));
                }
                out
            });
            for (who, r) in &answers {
                let a = match r {
                    Ok(Ok(a)) => a,
                    other => bail!("{who}: {other:?}"),
                };
                ensure!(
                    a.status == 200 && a.body.starts_with("pod=api-"),
                    "tenant b's request answered by {:?}",
                    a.body
                );
            }
            // Tenant a (in the path again only if b did not take its traffic) is still its own.
            let a_answer = block_on(client::get(a_ip, "/"))?;
            ensure!(a_answer.body.starts_with("pod=web-"), "{a_answer:?}");
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_28_a_flood_of_the_admin_port_and_of_a_held_port_does_not_stop_a_real_request() {
    scenario(
        28,
        "2,000 idle connections to the agent's admin port and 2,000 slowloris to a held port: a real held request is answered",
        || {
            let ns_owned = setup(
                "e2e-s28",
                &[&App::http("web").env("READY_AFTER_MS", "3000")],
            )?;
            let ns = ns_owned.name.as_str();
            let node = cluster().home().name.clone();
            deploy_client(ns, "flooder", Some(&node), false)?;
            deploy_client(ns, "client", Some(&node), false)?;
            wait_mode(ns, "web", Mode::Serve)?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "web")?;
            let restarts = agent_restarts_on(&node)?;
            let admin = elasti::agent_admin(&cluster().home().ip);
            let ip = cluster_ip(ns, "web")?;
            let flood = |target: String, send: &'static str, drip: &'static str| {
                let ns = ns.to_string();
                std::thread::spawn(move || {
                    kubectl(&[
                        "-n",
                        &ns,
                        "exec",
                        "flooder",
                        "--",
                        "/usr/local/bin/conn-flood",
                        "--connections",
                        "2000",
                        "--send",
                        send,
                        "--drip-ms",
                        drip,
                        "--hold-secs",
                        "20",
                        &target,
                    ])
                })
            };
            let admin_flood = flood(admin.clone(), "", "0");
            let held_flood = flood(
                format!("{ip}:80"),
                "GET / HTTP/1.1\r\nHost: web\r\nX-Slow: ",
                "500",
            );
            std::thread::sleep(Duration::from_secs(5));
            // Under the flood: the agent still answers the kubelet's probes (on the node's
            // loopback, which this process shares) and holds a real request.
            let live = get_from_netns("127.0.0.1:9096", "/healthz", Duration::from_secs(10))?;
            ensure!(
                live.starts_with("HTTP/1.1 200"),
                "healthz under the flood: {live}"
            );
            let answer = get_from_client_pod(ns, &format!("http://{ip}/"), 90)?;
            ensure!(
                answer.starts_with("HTTP/1.1 200"),
                "the real held request: {answer}"
            );
            for (what, f) in [("admin", admin_flood), ("held port", held_flood)] {
                let out = f.join().map_err(|_| anyhow::anyhow!("thread"))??;
                eprintln!("flood of the {what}: {}", out.trim());
            }
            ensure!(agent_restarts_on(&node)? == restarts, "the agent stayed up");
            // And its admin port serves again once the flood is over.
            let metrics = wait_until("metrics after the flood", Duration::from_secs(20), || {
                Some(metrics_text(&admin)).filter(|t| t.contains("elasti_agent_outcomes"))
            })?;
            ensure!(!metrics.is_empty());
            Ok(())
        },
    );
}

// ---- Scenarios 30–39: the operator (issues 14 and 15) ----

/// A stand-in Prometheus in this process, on every address of this node's network, and
/// the URL the operator pods reach it at; every query answers `value` (`up` answers 1).
fn prometheus_here(value: f64) -> (elasti_e2e::operator::FakePrometheus, String) {
    use elasti_e2e::operator::{FakePrometheus, PromAnswer};
    let prom = FakePrometheus::start_on("0.0.0.0:0", PromAnswer::Value(value));
    let url = prom.url_at(&cluster().home().ip);
    (prom, url)
}

/// `es` idle while the stand-in at `url` reads under 0.5, after `cooldown` seconds.
fn idle_after(
    mut es: elasti_api::ElastiService,
    url: &str,
    cooldown: i32,
) -> elasti_api::ElastiService {
    es.spec.cooldown_period = cooldown;
    es.spec.triggers = vec![prometheus_trigger(
        url,
        "sum(rate(x[1m])) or vector(0)",
        "0.5",
    )];
    es
}

/// The operator pods' restarts, summed.
fn operator_restarts() -> anyhow::Result<i32> {
    Ok(kube()?
        .list::<k8s_openapi::api::core::v1::Pod>(
            elasti::NAMESPACE,
            "app.kubernetes.io/name=elasti-operator",
        )?
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum())
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_30_a_pod_ready_only_after_the_cooldown_is_not_scaled_away_from_a_held_request() {
    scenario(
        30,
        "cooldownPeriod 5, a pod Ready 8 s after it starts: the cold request gets 200",
        || {
            let (_prom, url) = prometheus_here(0.0);
            let app = App::http("web").env("READY_AFTER_MS", "8000");
            let (ns_owned, target) = held("e2e-s30", &app)?;
            let ns = ns_owned.name.as_str();
            apply_es(ns, &idle_after(app.elastiservice(), &url, 5))?;
            std::thread::sleep(Duration::from_secs(2));
            ensure!(replicas(ns, Kind::Deployment, "web") == 0, "stays at zero");
            let _cg = InPodsCgroup::enter("s30")?;
            let start = Instant::now();
            let a = block_on(async move {
                tokio::time::timeout(Duration::from_secs(60), client::get(target, "/")).await
            });
            let took = start.elapsed();
            let a = a.map_err(|_| anyhow::anyhow!("no answer in 60 s"))??;
            ensure!(a.status == 200, "{a:?}");
            eprintln!("cold request answered after {took:?}");
            ensure!(
                took >= Duration::from_secs(8),
                "answered only once Ready: {took:?}"
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_31_a_flood_of_the_wake_port_does_not_delay_a_real_agents_wake() {
    scenario(
        31,
        "2,000 idle connections and 2,000 garbage or forged tokens at the wake port: a real agent's wake gets 202 within 1 s",
        || {
            let ns_owned = setup("e2e-s31", &[&App::http("web").replicas(0)])?;
            let ns = ns_owned.name.as_str();
            wait_mode(ns, "web", Mode::Proxy)?;
            deploy_client(ns, "idle", None, false)?;
            deploy_client(ns, "garbage", None, false)?;
            let wake_ip = cluster_ip(elasti::NAMESPACE, "elasti-operator")?;
            let wake = format!("{wake_ip}:8080");
            let token = |sa: &str| {
                kubectl(&[
                    "-n",
                    elasti::NAMESPACE,
                    "create",
                    "token",
                    sa,
                    "--audience",
                    "elasti-operator",
                ])
                .map(|t| t.trim().to_string())
            };
            let agent = token("elasti-agent")?;
            // Right audience and expiry, another signature: only a TokenReview can tell.
            let forged = format!(
                "{}.c2lnbmF0dXJl",
                token("elasti-operator")?
                    .rsplit_once('.')
                    .map(|(h, _)| h)
                    .unwrap_or("")
            );
            let restarts = operator_restarts()?;
            let flood = |pod: &'static str, send: String| {
                let (ns, wake) = (ns.to_string(), wake.clone());
                std::thread::spawn(move || {
                    kubectl(&[
                        "-n",
                        &ns,
                        "exec",
                        pod,
                        "--",
                        "/usr/local/bin/conn-flood",
                        "--connections",
                        "2000",
                        "--send",
                        &send,
                        "--hold-secs",
                        "20",
                        &wake,
                    ])
                })
            };
            let post = |t: &str| {
                format!(
                    "POST /v1/wake HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
                )
            };
            let idle = flood("idle", String::new());
            let garbage = flood("garbage", post(&forged));
            std::thread::sleep(Duration::from_secs(4));
            let wake_addr: SocketAddr = wake.parse()?;
            let body = format!(r#"{{"namespace":"{ns}","service":"web"}}"#);
            let mut took = Vec::new();
            for _ in 0..5 {
                let start = Instant::now();
                let (code, resp) =
                    elasti_e2e::operator::post(wake_addr, "/v1/wake", Some(&agent), &body)?;
                took.push(start.elapsed());
                ensure!(code == 202, "{resp}");
                std::thread::sleep(Duration::from_millis(500));
            }
            for (what, f) in [("idle", idle), ("garbage", garbage)] {
                let out = f.join().map_err(|_| anyhow::anyhow!("thread"))??;
                eprintln!("{what} flood: {}", out.trim());
            }
            eprintln!("real wakes under the flood answered 202 in {took:?}");
            ensure!(
                took.iter().all(|t| *t < Duration::from_secs(1)),
                "a wake took {took:?}"
            );
            ensure!(operator_restarts()? == restarts, "the operators stayed up");
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_32_external_traffic_policy_local_at_zero_wakes_from_every_node() {
    scenario(
        32,
        "externalTrafficPolicy: Local, NodePort at 0, a request to each node: all answered",
        || {
            let (ns, node_port, _) = nodeport_at_zero("e2e-s32", "Local")?;
            let ns = ns.name.as_str();
            let slices = jsonpath(
                ns,
                "endpointslice/web-elasti-ipv4",
                "{.endpoints[*].nodeName}",
            );
            eprintln!("fallback endpoints on nodes: {slices}");
            for n in &cluster().nodes {
                let r = get_from_netns(
                    &format!("{}:{node_port}", n.ip),
                    "/",
                    Duration::from_secs(60),
                )
                .with_context(|| format!("via {}", n.name))?;
                ensure!(
                    r.starts_with("HTTP/1.1 200") && r.contains("pod=web-"),
                    "via {}: {r}",
                    n.name
                );
            }
            wait_mode(ns, "web", Mode::Serve)?;
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_33_a_scale_down_under_a_request_stream_refuses_no_pod_request() {
    scenario(
        33,
        "scale-down under streams by ClusterIP, DNS, NodePort from every node and by endpoints (ingress-style), target exits at once on SIGTERM: every request answered",
        || {
            let (_prom, url) = prometheus_here(0.0);
            let ns_owned = setup("e2e-s33", &[&App::http("web")])?;
            let ns = ns_owned.name.as_str();
            kubectl(&[
                "-n",
                ns,
                "patch",
                "service",
                "web",
                "-p",
                r#"{"spec":{"type":"NodePort"}}"#,
            ])?;
            wait_mode(ns, "web", Mode::Serve)?;
            let node_port = kube()?
                .get::<k8s_openapi::api::core::v1::Service>(ns, "web")?
                .spec
                .and_then(|s| s.ports?.first()?.node_port)
                .context("no nodePort")?;
            let nodes: Vec<String> = cluster().nodes.iter().map(|n| n.name.clone()).collect();
            let clients = clients_on(ns, &nodes)?;
            let ip_url = format!("http://{}/", cluster_ip(ns, "web")?);
            let dns_url = format!("http://web.{ns}.svc.cluster.local/");
            // Idle by the trigger's reading, whatever the streams do: scaled down after 6 s
            // of readiness, woken by the held requests, and down again, for 60 s.
            apply_es(ns, &idle_after(App::http("web").elastiservice(), &url, 6))?;
            let mut streams = Vec::new();
            for (i, pod) in clients.iter().enumerate() {
                let u = if i % 2 == 0 {
                    ip_url.clone()
                } else {
                    dns_url.clone()
                };
                let (ns, pod) = (ns.to_string(), pod.clone());
                streams.push((
                    format!("{pod} {u}"),
                    std::thread::spawn(move || stream_from_pod(&ns, &pod, &u, 120, 250, 60)),
                ));
            }
            for n in &cluster().nodes {
                let to = format!("{}:{node_port}", n.ip);
                streams.push((
                    format!("NodePort {to}"),
                    std::thread::spawn(move || {
                        (0..60)
                            .map(|i| {
                                let r = get_from_netns(&to, "/", Duration::from_secs(60));
                                std::thread::sleep(Duration::from_millis(500));
                                match r {
                                    Ok(r) => format!("{i} {}", r.lines().next().unwrap_or("")),
                                    Err(e) => format!("{i} error: {e:#}"),
                                }
                            })
                            .collect::<Vec<_>>()
                    }),
                ));
            }
            // Ingress-style: a client that routes by the Service's EndpointSlices (as
            // ingress controllers do), not by its ClusterIP, reading them before each
            // request and dialing one Ready endpoint (a pod, or an agent of the fallback
            // slices) from this node, outside the intercepted cgroups.
            {
                let ns = ns.to_string();
                streams.push((
                    "endpoints (ingress-style)".to_string(),
                    std::thread::spawn(move || {
                        (0..60)
                            .map(|i| {
                                let r = ready_endpoint(&ns, "web", i).and_then(|to| {
                                    get_from_netns(&to, "/", Duration::from_secs(60))
                                        .map(|r| format!("{to} {}", r.lines().next().unwrap_or("")))
                                });
                                std::thread::sleep(Duration::from_millis(500));
                                match r {
                                    Ok(r) => format!("{i} {r}"),
                                    Err(e) => format!("{i} error: {e:#}"),
                                }
                            })
                            .collect::<Vec<_>>()
                    }),
                ));
            }
            // Issue 14 item 8: not one request may fail on any path. Pod clients (ClusterIP,
            // DNS) are steered by the agents before the pods go; NodePort goes through
            // kube-proxy, which sends it to a pod until its next sync after the pod left the
            // Service's endpoints, and an ingress-style client goes by the endpoints, so the
            // pods leave them (the drain) before `/scale` goes to 0.
            let mut failed = Vec::new();
            let (mut total, mut node_port_total) = (0, 0);
            for (what, s) in streams {
                let lines = s.join().map_err(|_| anyhow::anyhow!("thread"))?;
                total += lines.len();
                if what.starts_with("NodePort") {
                    node_port_total += lines.len();
                }
                if what.starts_with("endpoints") {
                    let to: BTreeSet<&str> = lines
                        .iter()
                        .filter_map(|l| l.split_whitespace().nth(1))
                        .collect();
                    eprintln!("ingress-style requests went to {to:?}");
                }
                let bad: Vec<&String> = lines
                    .iter()
                    .filter(|l| !l.contains(" HTTP/1.1 200"))
                    .collect();
                if !bad.is_empty() {
                    failed.push(format!(
                        "{what}: {} failed, first {:?}",
                        bad.len(),
                        bad.first()
                    ));
                }
            }
            let downs = kubectl(&[
                "-n",
                ns,
                "get",
                "events.events.k8s.io",
                "-o",
                r#"jsonpath={range .items[?(@.reason=="ScaledToZero")]}{.series.count}{"\n"}{end}"#,
            ])?;
            // A repeated event is one series: its count, or 1 before it repeats.
            let downs: usize = downs.lines().map(|l| l.trim().parse().unwrap_or(1)).sum();
            eprintln!(
                "{total} requests ({node_port_total} by NodePort); scale-downs during them: {downs}"
            );
            ensure!(failed.is_empty(), "{failed:?}");
            ensure!(downs >= 2, "scaled down {downs} time(s) under the streams");
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_34_enabled_period_keeps_a_target_up_outside_its_window() {
    scenario(
        34,
        "enabledPeriod (Asia/Tokyo) closed now: an idle target stays up; open: it sleeps",
        || {
            let (_prom, url) = prometheus_here(0.0);
            let ns_owned = setup("e2e-s34", &[&App::http("web"), &App::http("api")])?;
            let ns = ns_owned.name.as_str();
            let tokyo_hour = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                / 3600
                + 9
                + 12)
                % 24;
            let mut closed = idle_after(App::http("web").elastiservice(), &url, 0);
            closed.spec.enabled_period = Some(elasti_api::EnabledPeriod {
                schedule: format!("0 {tokyo_hour} * * *"),
                duration: "30m".into(),
                time_zone: Some("Asia/Tokyo".into()),
            });
            let mut open = idle_after(App::http("api").elastiservice(), &url, 0);
            open.spec.enabled_period = Some(elasti_api::EnabledPeriod {
                schedule: "0 0 * * *".into(),
                duration: "24h".into(),
                time_zone: Some("Asia/Tokyo".into()),
            });
            apply_es(ns, &closed)?;
            apply_es(ns, &open)?;
            wait_replicas(ns, Kind::Deployment, "api", 0, Duration::from_secs(60))?;
            std::thread::sleep(Duration::from_secs(10));
            ensure!(
                replicas(ns, Kind::Deployment, "web") == 1,
                "scaled down outside its window"
            );
            let c = condition(ns, "web", "ScaleToZeroAllowed").context("no condition")?;
            eprintln!("web: {} {}: {}", c.status, c.reason, c.message);
            ensure!(c.reason == "OutsideEnabledPeriod", "{c:?}");
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_35_waking_one_member_of_a_group_wakes_the_other() {
    scenario(
        35,
        "wakeWith: a request to api at zero wakes db too, in parallel",
        || {
            let api = App::http("api");
            let db = App::http("db");
            let ns_owned = setup("e2e-s35", &[&api, &db])?;
            let ns = ns_owned.name.as_str();
            let mut es = api.elastiservice();
            es.spec.wake_with = vec!["db".into()];
            apply_es(ns, &es)?;
            wait_mode(ns, "api", Mode::Serve)?;
            wait_mode(ns, "db", Mode::Serve)?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "api")?;
            scale_to_zero_and_wait_held(ns, Kind::Deployment, "db")?;
            let target = addr(&cluster_ip(ns, "api")?, 80)?;
            let _cg = InPodsCgroup::enter("s35")?;
            let start = Instant::now();
            let a = block_on(client::get(target, "/"))?;
            ensure!(a.status == 200 && a.body.starts_with("pod=api-"), "{a:?}");
            wait_replicas(ns, Kind::Deployment, "db", 1, Duration::from_secs(10))?;
            wait_mode(ns, "db", Mode::Serve)?;
            eprintln!(
                "api answered and db serving {:?} after the request",
                start.elapsed()
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_36_an_activity_trigger_sleeps_an_idle_service_and_not_one_with_an_open_websocket() {
    scenario(
        36,
        "type: activity, no Prometheus anywhere: idle service to 0 after its cooldown, one with an open websocket stays up",
        || {
            let ns_owned = setup("e2e-s36", &[&App::http("idle"), &App::http("ws")])?;
            let ns = ns_owned.name.as_str();
            for name in ["idle", "ws"] {
                let mut es = App::http(name).elastiservice();
                es.spec.cooldown_period = 8;
                es.spec.triggers = vec![elasti_api::ScaleTrigger {
                    kind: elasti_api::TriggerType::Activity,
                    metadata: None,
                }];
                apply_es(ns, &es)?;
                wait_mode(ns, name, Mode::Serve)?;
            }
            let ws = addr(&cluster_ip(ns, "ws")?, 80)?;
            let _cg = InPodsCgroup::enter("s36")?;
            let start = Instant::now();
            // One websocket held open for 30 s, one message every 5 s.
            let held = std::thread::spawn(move || {
                block_on(async move {
                    let mut c = client::Websocket::connect(ws, "/ws").await?;
                    for i in 0..6 {
                        c.echo(&format!("m{i}")).await?;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Ok::<_, anyhow::Error>(())
                })
            });
            wait_replicas(ns, Kind::Deployment, "idle", 0, Duration::from_secs(60))?;
            eprintln!(
                "idle service scaled to zero {:?} after the start",
                start.elapsed()
            );
            held.join().map_err(|_| anyhow::anyhow!("thread"))??;
            ensure!(
                replicas(ns, Kind::Deployment, "ws") == 1,
                "scaled down with a websocket open"
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_37_a_one_gigabyte_prometheus_answer_leaves_the_operator_up() {
    scenario(
        37,
        "a trigger whose server answers 1 GiB: the operator stays up and says only that it could not read it",
        || {
            let hostile = elasti_e2e::operator::HostileServer::start_on("0.0.0.0:0", 1 << 30);
            let url = hostile.url_at(&cluster().home().ip);
            let ns_owned = setup("e2e-s37", &[&App::http("web")])?;
            let ns = ns_owned.name.as_str();
            let restarts = operator_restarts()?;
            apply_es(ns, &idle_after(App::http("web").elastiservice(), &url, 0))?;
            wait_until("the trigger read", Duration::from_secs(60), || {
                condition(ns, "web", "ScaledToZero").filter(|c| c.reason == "PrometheusUnavailable")
            })?;
            std::thread::sleep(Duration::from_secs(15));
            let c = condition(ns, "web", "ScaledToZero").context("no condition")?;
            let sent = hostile.sent.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!("the server sent {sent} bytes; condition: {}", c.message);
            ensure!(
                c.message.len() < 1024 && !c.message.contains("AAAA"),
                "{}",
                c.message.len()
            );
            ensure!(operator_restarts()? == restarts, "an operator restarted");
            ensure!(
                replicas(ns, Kind::Deployment, "web") == 1,
                "unreadable: nothing scaled"
            );
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_40_a_health_check_at_zero_is_answered_by_the_agent_and_a_real_request_wakes() {
    scenario(
        40,
        "probeResponse at 0: health checks answered by the agent, target stays at 0; a real request wakes",
        || {
            let app = App::http("web");
            let (ns, _) = held("e2e-s40", &app)?;
            let ns = ns.name.as_str();
            let mut es = app.elastiservice();
            es.spec.probe_response = serde_yaml::from_str(
                r#"
- path: {type: Exact, value: /lb-health}
  method: GET
  response: {status: 200, body: '{"status":"sleeping"}'}
"#,
            )?;
            apply_es(ns, &es)?;
            deploy_client(ns, "client", None, false)?;
            let node = node_of(ns, "client")?;
            let ip = cluster_ip(ns, "web")?;
            // The agents learn the rule from the watch; a probe sent before then is held
            // and wakes the target, so wait until this node's agent answers one.
            let url = format!("http://{ip}/lb-health");
            let mut answered = 0;
            for _ in 0..10 {
                let r = get_from_client_pod(ns, &url, 20)?;
                ensure!(
                    replicas(ns, Kind::Deployment, "web") == 0,
                    "a health check woke the target: {r}"
                );
                ensure!(
                    r.starts_with("HTTP/1.1 200") && r.contains(r#"{"status":"sleeping"}"#),
                    "the rule's answer: {r}"
                );
                answered += 1;
            }
            let counted = agent_count(&node, "outcomes_total", ns, Some("ProbeAnswered"));
            eprintln!("{answered} health checks answered at zero; counted {counted} on {node}");
            ensure!(counted >= 10.0, "answers counted: {counted}");
            std::thread::sleep(Duration::from_secs(3));
            ensure!(
                replicas(ns, Kind::Deployment, "web") == 0,
                "still at zero after the health checks"
            );
            let start = Instant::now();
            let r = get_from_client_pod(ns, &format!("http://{ip}/"), 90)?;
            ensure!(
                r.starts_with("HTTP/1.1 200") && r.contains("pod=web-"),
                "a real request is held and answered by a pod: {r}"
            );
            eprintln!("the real request woke the target: {:?}", start.elapsed());
            ensure!(replicas(ns, Kind::Deployment, "web") == 1);
            Ok(())
        },
    );
}
