//! End to end on the local cluster: elasti installed from its manifests (the agent
//! DaemonSet with named capabilities, the operator Deployment), real workloads behind real
//! Services, and clients that are pods (or processes in the pods' cgroup). Every scenario
//! checks what the client saw and the cluster state, and lands in the table
//! `cargo xtask e2e` prints.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use elasti_e2e::{e2e::*, *};
use elasti_workloads::client;

fn setup(prefix: &str, manifest: &str, es: &str) -> anyhow::Result<TempNamespace> {
    require_cluster();
    assert!(
        on_local_cluster(),
        "the scenarios use the local cluster's cgroups"
    );
    install_elasti()?;
    let ns = TempNamespace::create(prefix)?;
    apply(&ns.name, manifest)?;
    apply(&ns.name, es)?;
    Ok(ns)
}

fn es_field(ns: &str, name: &str, path: &str) -> String {
    jsonpath(ns, &format!("elastiservice/{name}"), path)
}

fn wait_mode(ns: &str, name: &str, mode: &str) -> anyhow::Result<()> {
    wait_until(&format!("mode {mode}"), Duration::from_secs(90), || {
        (es_field(ns, name, "{.status.mode}") == mode).then_some(())
    })
}

fn addr(ip: &str, port: u16) -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::new(ip.parse()?, port))
}

/// Workload `web` of `kind` (with `env`) and its ElastiService, warm first, then scaled to
/// zero and held by the agent: its namespace, and the ClusterIP address to call.
fn held_web(
    prefix: &str,
    kind: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(TempNamespace, SocketAddr)> {
    let ns = setup(
        prefix,
        &app("web", kind, 1, env),
        &elastiservice("web", kind, ""),
    )?;
    wait_mode(&ns.name, "web", "serve")?;
    scale_to_zero_and_wait_held(&ns.name, &kind.to_lowercase(), "web")?;
    let target = addr(&cluster_ip(&ns.name, "web")?, 80)?;
    Ok((ns, target))
}

#[test]
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_00_elasti_installs_from_its_helm_chart() {
    scenario(
        0,
        "helm install of deploy/helm/elasti; a cold request is held and answered",
        || {
            require_cluster();
            let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/helm/elasti");
            let out = std::process::Command::new("helm")
                .args([
                    "upgrade",
                    "--install",
                    "elasti",
                    chart,
                    "--namespace",
                    "elasti-system",
                    "--create-namespace",
                    "--wait",
                    "--timeout",
                    "180s",
                    // The test cluster: images imported, pods under /elasti-e2e.
                    "--set",
                    "images.pullPolicy=Never",
                    "--set",
                    "agent.cgroupHostPath=/sys/fs/cgroup/unified/elasti-e2e",
                ])
                .output()
                .context("running helm (installed by `cargo xtask setup`)")?;
            ensure!(
                out.status.success(),
                "helm install: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let managed = kubectl(&[
                "-n",
                "elasti-system",
                "get",
                "daemonset/elasti-agent",
                "-o",
                "jsonpath={.metadata.labels.app\\.kubernetes\\.io/managed-by}",
            ])?;
            ensure!(managed == "Helm", "installed by the chart: {managed:?}");
            let ns = TempNamespace::create("e2e-s00")?;
            let ns = ns.name.as_str();
            apply(ns, &app("web", "Deployment", 1, &[]))?;
            apply(ns, &elastiservice("web", "Deployment", ""))?;
            wait_mode(ns, "web", "serve")?;
            scale_to_zero_and_wait_held(ns, "deployment", "web")?;
            let target = addr(&cluster_ip(ns, "web")?, 80)?;
            let _cg = InPodsCgroup::enter("s00")?;
            let a = block_on(client::get(target, "/"))?;
            ensure!(a.status == 200 && a.body.contains("pod=web-"), "{a:?}");
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_01_a_request_at_zero_from_a_pod_is_held_and_answered_by_ip_and_dns() {
    scenario(
        1,
        "scale to 0 -> proxy; pod request by ClusterIP and DNS held, answered; serve",
        || {
            let ns = setup(
                "e2e-s01",
                &http_workload("web", 1),
                &elastiservice("web", "Deployment", ""),
            )?;
            let ns = ns.name.as_str();
            wait_mode(ns, "web", "serve")?;
            wait_client_ready(ns)?;
            scale_to_zero_and_wait_held(ns, "deployment", "web")?;
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
            wait_mode(ns, "web", "serve")?;
            ensure!(replicas(ns, "deployment", "web") == "1");
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_02_bodies_streams_drips_and_headers_survive_a_cold_start() {
    scenario(
        2,
        "1 MiB body, chunked stream, slow drip through a cold start",
        || {
            let (_ns, target) = held_web("e2e-s02", "Deployment", &[])?;
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
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_03_a_manual_scale_up_gives_serve() {
    scenario(
        3,
        "manual scale-up -> serve, and the agent hands back",
        || {
            let ns = setup(
                "e2e-s03",
                &app("web", "Deployment", 1, &[]),
                &elastiservice("web", "Deployment", ""),
            )?;
            let ns = ns.name.as_str();
            wait_mode(ns, "web", "serve")?;
            scale_to_zero_and_wait_held(ns, "deployment", "web")?;
            kubectl(&["-n", ns, "scale", "deployment/web", "--replicas=1"])?;
            wait_mode(ns, "web", "serve")?;
            let prefix =
                format!(r#"elasti_agent_intercepting{{namespace="{ns}",service="web",port="80"}}"#);
            wait_until("handed back", Duration::from_secs(30), || {
                (agent_metric(&prefix) == Some(0.0)).then_some(())
            })?;
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_04_a_changed_service_port_is_followed() {
    scenario(
        4,
        "Service port change: proxy ports and agent listeners follow",
        || {
            let ns = setup(
                "e2e-s04",
                &app("web", "Deployment", 1, &[]),
                &elastiservice("web", "Deployment", ""),
            )?;
            let ns = ns.name.as_str();
            wait_mode(ns, "web", "serve")?;
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
                (es_field(ns, "web", "{.status.proxyPorts[0].port}") == "8081").then_some(())
            })?;
            kubectl(&["-n", ns, "scale", "deployment/web", "--replicas=0"])?;
            wait_mode(ns, "web", "proxy")?;
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
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_05_deleting_the_elastiservice_at_zero_scales_back_and_cleans_up() {
    scenario(
        5,
        "delete the ElastiService at 0: target scaled back, elasti's objects gone",
        || {
            let ns = setup(
                "e2e-s05",
                &app("web", "Deployment", 1, &[]),
                &elastiservice("web", "Deployment", ""),
            )?;
            let ns = ns.name.as_str();
            wait_mode(ns, "web", "serve")?;
            scale_to_zero_and_wait_held(ns, "deployment", "web")?;
            wait_until("fallback slice", Duration::from_secs(30), || {
                kubectl(&["-n", ns, "get", "endpointslice", "web-elasti-ipv4"]).ok()
            })?;
            kubectl(&["-n", ns, "delete", "elastiservice", "web", "--timeout=60s"])?;
            ensure!(
                replicas(ns, "deployment", "web") == "1",
                "scaled back before the finalizer went"
            );
            ensure!(
                kubectl(&["-n", ns, "get", "endpointslice", "web-elasti-ipv4"]).is_err(),
                "slice removed"
            );
            let prefix =
                format!(r#"elasti_agent_intercepting{{namespace="{ns}",service="web",port="80"}}"#);
            // Released: the service's gauges are gone from /metrics, not left at a value.
            wait_until("agent lets go", Duration::from_secs(30), || {
                let text = metrics_text(AGENT_ADMIN);
                (!text.is_empty() && !text.contains(&prefix)).then_some(())
            })?;
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_06_nodeport_traffic_reaches_an_agent_through_the_fallback_slice() {
    scenario(
        6,
        "fallback path: a NodePort request at 0 is held and answered",
        || {
            let ns = setup(
                "e2e-s06",
                &app("web", "Deployment", 1, &[]),
                &elastiservice("web", "Deployment", ""),
            )?;
            let ns = ns.name.as_str();
            kubectl(&[
                "-n",
                ns,
                "patch",
                "service",
                "web",
                "-p",
                r#"{"spec":{"type":"NodePort"}}"#,
            ])?;
            wait_mode(ns, "web", "serve")?;
            let warm = ready_pods(ns, "web")?;
            let agent = |e: &str| e.starts_with(&format!("{NODE_IP}:"));
            // kube-proxy has caught up with serve (the pod), so that the agent seen below
            // is the slice published at 0, not the one from before the pod was first Ready.
            wait_kube_proxy_sends(ns, "web", "the pod", |e| !agent(e))?;
            scale_to_zero_and_wait_held(ns, "deployment", "web")?;
            let node_port: u16 = kubectl(&[
                "-n",
                ns,
                "get",
                "svc",
                "web",
                "-o",
                "jsonpath={.spec.ports[0].nodePort}",
            ])?
            .parse()?;
            let proxy_port = wait_until("fallback slice", Duration::from_secs(30), || {
                Some(jsonpath(
                    ns,
                    "endpointslice/web-elasti-ipv4",
                    "{.ports[0].port}",
                ))
                .filter(|p| !p.is_empty())
            })?;
            // Until kube-proxy has the slice, NodePort connects still reach the terminating
            // pod, which answers them itself: only a later connect is elasti's to hold.
            let fallback = format!("{NODE_IP}:{proxy_port}");
            wait_kube_proxy_sends(ns, "web", "the agent", |e| e == fallback)?;
            // From the node's network, outside every intercepted cgroup: only kube-proxy and
            // the fallback slice can bring this to an agent.
            let r = get_from_netns(
                &format!("{NODE_IP}:{node_port}"),
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
            wait_mode(ns, "web", "serve")?;
            Ok(())
        },
    );
}

/// A Prometheus of the Debian package, run by the test in the cluster's network namespace,
/// scraping the workload pods (discovered through the apiserver) and itself.
struct Prometheus {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(port: u16) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("elasti-e2e-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // Debian's Prometheus has no Kubernetes discovery: the test writes the pods it
        // should scrape to a file_sd file ([`Prometheus::scrape`]).
        let config = format!(
            r#"global: {{scrape_interval: 2s, evaluation_interval: 2s}}
scrape_configs:
- job_name: prometheus
  static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
- job_name: web
  file_sd_configs: [{{files: ["{}"], refresh_interval: 1s}}]
"#,
            dir.join("targets.json").display()
        );
        std::fs::write(dir.join("targets.json"), "[]")?;
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let child = std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=0.0.0.0:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("log"))?)
            .spawn()
            .context("starting prometheus (Debian package `prometheus`, installed by setup)")?;
        let me = Self { child, dir };
        wait_until("prometheus ready", Duration::from_secs(30), || {
            get_from_netns(
                &format!("127.0.0.1:{port}"),
                "/-/ready",
                Duration::from_secs(1),
            )
            .ok()
            .filter(|r| r.starts_with("HTTP/1.1 200"))
        })?;
        Ok(me)
    }
}

impl Prometheus {
    /// Scrapes `ip:8080` as job `web` from now on.
    fn scrape(&self, ip: &str) -> anyhow::Result<()> {
        let targets = format!(r#"[{{"targets": ["{ip}:8080"]}}]"#);
        std::fs::write(self.dir.join("targets.json.tmp"), targets)?;
        std::fs::rename(
            self.dir.join("targets.json.tmp"),
            self.dir.join("targets.json"),
        )?;
        Ok(())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
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
            let prometheus = Prometheus::start(port)?;
            apply(ns, &app("web", "Deployment", 1, &[]))?;
            kubectl(&[
                "-n",
                ns,
                "rollout",
                "status",
                "deployment/web",
                "--timeout=120s",
            ])?;
            let pod_ip = kubectl(&[
                "-n",
                ns,
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[0].status.podIP}",
            ])?;
            prometheus.scrape(&pod_ip)?;
            // Traffic for 25 s (4 requests a second): the trigger reads busy past the
            // cooldown, then idle once the traffic stops.
            let pod = addr(&pod_ip, 8080)?;
            let traffic = std::thread::spawn(move || {
                for _ in 0..100 {
                    let _ = block_on(client::get(pod, "/"));
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
            // The operator pods reach Prometheus at the node's address.
            let trigger = format!(
                "  cooldownPeriod: 15\n  triggers:\n  - type: prometheus\n    metadata:\n      serverAddress: http://{NODE_IP}:{port}\n      query: sum(rate(http_requests_total{{job=\"web\"}}[20s])) or vector(0)\n      threshold: \"0.5\"\n      uptimeFilter: job=\"prometheus\"\n"
            );
            apply(ns, &elastiservice("web", "Deployment", &trigger))?;
            let start = Instant::now();
            let reason = |ns: &str| {
                es_field(
                    ns,
                    "web",
                    r#"{.status.conditions[?(@.type=="ScaledToZero")].reason}"#,
                )
            };
            wait_until(
                "busy reading while traffic flows",
                Duration::from_secs(40),
                || (reason(ns) == "TrafficAboveThreshold").then_some(()),
            )?;
            ensure!(
                replicas(ns, "deployment", "web") == "1",
                "not scaled down under traffic"
            );
            traffic
                .join()
                .map_err(|_| anyhow::anyhow!("traffic thread"))?;
            wait_until(
                "scaled to zero by the trigger",
                Duration::from_secs(120),
                || (replicas(ns, "deployment", "web") == "0").then_some(()),
            )?;
            let took = start.elapsed();
            ensure!(
                took >= Duration::from_secs(25),
                "not while the traffic flowed: {took:?}"
            );
            eprintln!("created to scaled-to-zero: {took:?} (cooldown 15 s)");
            let reason = es_field(
                ns,
                "web",
                r#"{.status.conditions[?(@.type=="ScaledToZero")].status}"#,
            );
            ensure!(reason == "True", "condition: {reason}");
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_08_a_running_but_unready_pod_keeps_requests_held_until_ready() {
    scenario(
        8,
        "Running-not-Ready pod: requests held until Ready",
        || {
            let (_ns, target) = held_web("e2e-s08", "Deployment", &[("READY_AFTER_MS", "6000")])?;
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
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_09_a_statefulset_target() {
    scenario(9, "StatefulSet target: held and answered", || {
        let (ns, target) = held_web("e2e-s09", "StatefulSet", &[])?;
        let ns = ns.name.as_str();
        let _cg = InPodsCgroup::enter("s09")?;
        let a = block_on(client::get(target, "/"))?;
        ensure!(a.status == 200 && a.body.contains("pod=web-0"), "{a:?}");
        ensure!(replicas(ns, "statefulset", "web") == "1");
        Ok(())
    });
}

#[test]
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_10_request_and_response_headers_survive_the_hold() {
    scenario(
        10,
        "custom request headers and the response headers survive the hold",
        || {
            let (_ns, target) = held_web("e2e-s10", "Deployment", &[])?;
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
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_13_an_elastiservice_outside_watch_namespaces_is_ignored() {
    scenario(
        13,
        "WATCH_NAMESPACES: an ElastiService outside it is ignored",
        || {
            let inside = setup(
                "e2e-s13in",
                &app("web", "Deployment", 1, &[]),
                &elastiservice("web", "Deployment", ""),
            )?;
            let outside = TempNamespace::create("e2e-s13out")?;
            let (inside, outside) = (inside.name.as_str(), outside.name.as_str());
            let scope = |value: &str| -> anyhow::Result<()> {
                kubectl(&[
                    "-n",
                    "elasti-system",
                    "set",
                    "env",
                    "deployment/elasti-operator",
                    &format!("WATCH_NAMESPACES={value}"),
                ])?;
                kubectl(&[
                    "-n",
                    "elasti-system",
                    "rollout",
                    "status",
                    "deployment/elasti-operator",
                    "--timeout=120s",
                ])?;
                Ok(())
            };
            scope(inside)?;
            let result = (|| -> anyhow::Result<()> {
                apply(outside, &app("web", "Deployment", 1, &[]))?;
                apply(outside, &elastiservice("web", "Deployment", ""))?;
                // A change inside the scope is seen...
                kubectl(&["-n", inside, "scale", "deployment/web", "--replicas=0"])?;
                wait_mode(inside, "web", "proxy")?;
                // ...while the one outside is never touched.
                std::thread::sleep(Duration::from_secs(5));
                ensure!(
                    es_field(outside, "web", "{.metadata.finalizers}").is_empty(),
                    "no finalizer"
                );
                ensure!(
                    es_field(outside, "web", "{.status}").is_empty(),
                    "no status"
                );
                Ok(())
            })();
            scope("")?;
            result
        },
    );
}

#[test]
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_11_a_keep_alive_connection_keeps_working_across_proxy_to_serve() {
    scenario(11, "keep-alive connection across proxy -> serve", || {
        let (ns, target) = held_web("e2e-s11", "Deployment", &[])?;
        let ns = ns.name.as_str();
        let _cg = InPodsCgroup::enter("s11")?;
        let ns2 = ns.to_string();
        block_on(async move {
            let mut conn = client::Http1::connect(target).await?;
            let first = conn.send("GET", "/", &[], bytes::Bytes::new()).await?;
            ensure!(first.status == 200, "{first:?}");
            let ns = ns2.clone();
            tokio::task::spawn_blocking(move || wait_mode(&ns, "web", "serve")).await??;
            tokio::time::sleep(Duration::from_secs(3)).await; // past the hand-back grace
            for _ in 0..3 {
                let again = conn.send("GET", "/", &[], bytes::Bytes::new()).await?;
                ensure!(
                    again.status == 200,
                    "same connection after serve: {again:?}"
                );
            }
            let fresh = client::get(target, "/").await?;
            ensure!(fresh.status == 200, "a new connection, direct: {fresh:?}");
            Ok(())
        })
    });
}

fn tcp_echo(name: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: {TCP_ECHO_IMAGE}
        imagePullPolicy: Never
        env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        ports: [{{containerPort: 9000, name: tcp}}]
        readinessProbe: {{tcpSocket: {{port: tcp}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: tcp, port: 80, targetPort: tcp}}]
"#
    )
}

#[test]
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_12_grpc_websocket_and_raw_tcp_through_a_cold_start() {
    scenario(
        12,
        "gRPC unary+server-streaming, websocket, raw TCP through a cold start",
        || {
            let manifest = format!(
                "{}---\n{}",
                app("web", "Deployment", 1, &[]),
                tcp_echo("echo", 1)
            );
            let es = format!(
                "{}---\n{}",
                elastiservice("web", "Deployment", ""),
                elastiservice("echo", "Deployment", "")
            );
            let ns = setup("e2e-s12", &manifest, &es)?;
            let ns = ns.name.as_str();
            wait_mode(ns, "web", "serve")?;
            wait_mode(ns, "echo", "serve")?;
            scale_to_zero_and_wait_held(ns, "deployment", "web")?;
            scale_to_zero_and_wait_held(ns, "deployment", "echo")?;
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
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_14_five_hundred_concurrent_requests_in_one_cold_start() {
    scenario(
        14,
        "500 concurrent requests during one cold start: all answered",
        || {
            let (_ns, target) = held_web("e2e-s14", "Deployment", &[])?;
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
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_15_a_host_network_client_pod_is_held_and_answered() {
    scenario(15, "hostNetwork client pod: held and answered", || {
        let host_client = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  hostNetwork: true\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: client\n    image: {HTTP_WORKLOAD_IMAGE}\n    imagePullPolicy: Never\n    env: [{{name: LISTEN, value: \"127.0.0.1:18181\"}}]\n"
        );
        let manifest = format!("{}---\n{host_client}", app("web", "Deployment", 1, &[]));
        let ns = setup(
            "e2e-s15",
            &manifest,
            &elastiservice("web", "Deployment", ""),
        )?;
        let ns = ns.name.as_str();
        wait_mode(ns, "web", "serve")?;
        wait_client_ready(ns)?;
        scale_to_zero_and_wait_held(ns, "deployment", "web")?;
        let ip = cluster_ip(ns, "web")?;
        let r = get_from_client_pod(ns, &format!("http://{ip}/"), 90)?;
        ensure!(
            r.starts_with("HTTP/1.1 200") && r.contains("pod=web-"),
            "{r}"
        );
        Ok(())
    });
}

#[test]
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_16_an_agent_rolling_update_in_proxy_mode_fails_no_request() {
    scenario(
        16,
        "agent rolling update in proxy mode under a request stream: no failure",
        || {
            let (_ns, target) = held_web("e2e-s16", "Deployment", &[("READY_AFTER_MS", "8000")])?;
            let _cg = InPodsCgroup::enter("s16")?;
            let restarted = std::thread::spawn(|| {
                kubectl(&[
                    "-n",
                    "elasti-system",
                    "rollout",
                    "restart",
                    "daemonset/elasti-agent",
                ])?;
                kubectl(&[
                    "-n",
                    "elasti-system",
                    "rollout",
                    "status",
                    "daemonset/elasti-agent",
                    "--timeout=120s",
                ])
            });
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
            let failed: Vec<String> = results
                .iter()
                .filter_map(|r| match r {
                    Ok(Ok(a)) if a.status == 200 => None,
                    Ok(Ok(a)) => Some(format!("HTTP {}", a.status)),
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(e) => Some(e.to_string()),
                })
                .collect();
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
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_17_the_wake_completes_when_the_operator_is_killed_after_the_first_held_request() {
    scenario(
        17,
        "operator pods killed right after the first held request: wake completes",
        || {
            let (ns, target) = held_web("e2e-s17", "Deployment", &[])?;
            let ns = ns.name.as_str();
            let _cg = InPodsCgroup::enter("s17")?;
            let held = format!(r#"elasti_agent_held{{namespace="{ns}",service="web",port="80"}}"#);
            let answer = block_on(async move {
                let request = tokio::spawn(client::get(target, "/"));
                let killed = tokio::task::spawn_blocking(move || {
                    wait_until("request held", Duration::from_secs(10), || {
                        agent_metric(&held).filter(|v| *v >= 1.0)
                    })?;
                    kubectl(&[
                        "-n",
                        "elasti-system",
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
                "elasti-system",
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
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_18_a_wake_without_a_valid_token_is_refused_and_the_target_stays_at_zero() {
    scenario(
        18,
        "wake without a valid token: 401, target stays at 0",
        || {
            let ns = setup(
                "e2e-s18",
                &app("web", "Deployment", 0, &[]),
                &elastiservice("web", "Deployment", ""),
            )?;
            let ns = ns.name.as_str();
            wait_mode(ns, "web", "proxy")?;
            let operator = addr(&cluster_ip("elasti-system", "elasti-operator")?, 8080)?;
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
            if replicas(ns, "deployment", "web") != "0" {
                bail!("the target was scaled by a refused wake");
            }
            Ok(())
        },
    );
}

#[test]
#[ignore = "needs the local cluster: run with `cargo xtask e2e` or `cargo xtask test`"]
fn scenario_19_every_cold_period_of_one_service_wakes_it() {
    scenario(
        19,
        "three cold periods of one service, served directly in between: each wakes",
        || {
            let ns = setup(
                "e2e-s19",
                &http_workload("web", 1),
                &elastiservice("web", "Deployment", ""),
            )?;
            let ns = ns.name.as_str();
            wait_mode(ns, "web", "serve")?;
            wait_client_ready(ns)?;
            let url = format!("http://{}/", cluster_ip(ns, "web")?);
            for period in 1..=3 {
                scale_to_zero_and_wait_held(ns, "deployment", "web")?;
                let start = Instant::now();
                let cold = get_from_client_pod(ns, &url, 60)?;
                ensure!(
                    cold.starts_with("HTTP/1.1 200"),
                    "cold period {period}: {cold}"
                );
                eprintln!("cold period {period} answered in {:?}", start.elapsed());
                wait_mode(ns, "web", "serve")?;
                // Served by the pod straight through the ClusterIP, not by the agent.
                let warm = get_from_client_pod(ns, &url, 10)?;
                ensure!(warm.starts_with("HTTP/1.1 200"), "warm: {warm}");
            }
            Ok(())
        },
    );
}
