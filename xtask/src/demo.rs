//! `cargo xtask demo`: the README's main job. Installs what is missing, brings the kind
//! cluster up (one control plane, two workers), installs elasti from its Helm chart, and
//! runs a sample workload `web` on one worker with an ElastiService whose Prometheus
//! trigger (Debian's `prometheus`, beside the cluster) puts it to sleep. Then it shows the
//! service at zero, a request from a pod on the other worker held and answered with the
//! wake-up time, the hand-back from proxy to serve, and the service going back to zero
//! after the cooldown. The cluster is left running; `cargo xtask cluster down` removes it.
use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use elasti_testbed::{
    cmd, elasti,
    kind::{self, Cluster},
    kube::kube,
    objects::{self, App},
    paths,
    prometheus::Prometheus,
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};

use crate::{cluster, ebpf, images, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of idleness (no requests) before elasti puts the demo service to sleep.
    #[arg(long, default_value_t = 20)]
    pub cooldown_secs: i32,
}

const NAMESPACE: &str = "elasti-demo";
/// Prometheus's port beside the cluster.
const PROMETHEUS_PORT: u16 = 9091;

pub fn run(args: &Args) -> Result<()> {
    setup::run(&setup::Args::default())?;
    ebpf::build()?;
    images::build()?;
    let cluster = cluster::up(kind::DEFAULT_WORKERS)?;
    let workers = cluster.workers();
    let (server_node, client_node) = match workers.as_slice() {
        [a, b, ..] => (a.name.clone(), b.name.clone()),
        _ => bail!("demo: needs two workers"),
    };

    let p = cmd::Progress::start("install elasti (helm upgrade --install deploy/helm/elasti)");
    elasti::install_on(&cluster, &[])?;
    p.done();

    let p = cmd::Progress::start("start Prometheus (scrapes the demo pods every 2s)");
    let prometheus = Prometheus::start(
        &cluster,
        PROMETHEUS_PORT,
        paths::repo().join("target/kind/prometheus"),
    )?;
    p.done();

    let p = cmd::Progress::start(format!(
        "deploy `web` (Deployment + Service + ElastiService) on {server_node}, a client pod on {client_node}"
    ));
    let k = kube()?;
    if k.get_opt::<k8s_openapi::api::core::v1::ServiceAccount>(NAMESPACE, "default")?
        .is_none()
    {
        k.create_namespace(NAMESPACE)?;
    }
    let web = App::http("web").on_node(&server_node);
    web.apply(k, NAMESPACE)?;
    let mut es = web.elastiservice();
    es.spec.cooldown_period = args.cooldown_secs;
    es.spec.triggers = vec![objects::prometheus_trigger(
        &prometheus.url,
        r#"sum(rate(http_requests_total{job="web"}[20s])) or vector(0)"#,
        "0.5",
    )];
    k.apply(NAMESPACE, &es)?;
    k.apply(
        NAMESPACE,
        &objects::client_pod("client", Some(&client_node), false),
    )?;
    k.wait_for::<Pod>(
        NAMESPACE,
        "client",
        "client pod Ready",
        Duration::from_secs(120),
        is_ready,
    )?;
    wait_replicas(1, Duration::from_secs(120))?;
    scrape_web_pods(&prometheus)?;
    p.done();

    println!(
        "\n`web` gets no traffic, so once its {}s cooldown has passed, Prometheus reads\n  sum(rate(http_requests_total{{job=\"web\"}}[20s])) = 0  (threshold 0.5)\nand elasti scales it to zero...",
        args.cooldown_secs
    );
    let since = Instant::now();
    wait_replicas(0, Duration::from_secs(180))?;
    println!(
        "    web is at 0 replicas after {:.0}s",
        since.elapsed().as_secs_f64()
    );
    show(&cluster, &["get", "elastiservice", "web"])?;

    let svc = k.get::<k8s_openapi::api::core::v1::Service>(NAMESPACE, "web")?;
    let ip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    let url = format!("http://{ip}/");
    println!("\nGET {url} from pod `client` on {client_node}, with web at 0 replicas:");
    let start = Instant::now();
    let answer = cmd::output(
        "http-get from the client pod",
        cluster.kubectl().args([
            "-n",
            NAMESPACE,
            "exec",
            "client",
            "--",
            "/usr/local/bin/http-get",
            "--timeout",
            "120",
            &url,
        ]),
    )?;
    let cold = start.elapsed();
    println!("{}", indent(&answer));
    if !answer.starts_with("HTTP/1.1 200") {
        bail!("demo: the cold request was not answered 200");
    }
    println!(
        "    answered in {:.2}s: the agent on {client_node} held the request, the operator scaled web\n    up, and the request went to the new pod on {server_node} the moment it was Ready.\n    Nothing was refused.",
        cold.as_secs_f64()
    );
    // The pod is Ready, so the status says serve at once; the agents keep steering new
    // connects to themselves for the hand-back grace, then leave the path to kube-proxy.
    show(&cluster, &["get", "elastiservice", "web"])?;
    let series = elasti::port_series("intercepting", NAMESPACE, "web", 80);
    let steered = |cluster: &Cluster| -> Result<Vec<bool>> {
        let admins: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| elasti::agent_admin(&n.ip))
            .collect();
        let series = series.clone();
        cluster.run_beside(move || {
            admins
                .iter()
                .map(|a| elasti::sample(&elasti::metrics_text(a), &series) == Some(1.0))
                .collect()
        })
    };
    let start = Instant::now();
    let during = steered(&cluster)?;
    while steered(&cluster)?.iter().any(|s| *s) && start.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(100));
    }
    println!(
        "    hand-back: connects to web steered to the agent on {} of {} nodes right after the
    answer; on none {:.1}s later (the hand-back grace): from now on kube-proxy alone serves web.",
        during.iter().filter(|s| **s).count(),
        during.len(),
        start.elapsed().as_secs_f64()
    );
    scrape_web_pods(&prometheus)?;

    println!(
        "\nNo more requests: after the {}s cooldown elasti scales web to zero again...",
        args.cooldown_secs
    );
    let since = Instant::now();
    wait_replicas(0, Duration::from_secs(180))?;
    println!(
        "    web is at 0 replicas again after {:.0}s",
        since.elapsed().as_secs_f64()
    );
    show(
        &cluster,
        &[
            "get",
            "events.events.k8s.io",
            "--field-selector",
            "regarding.kind=ElastiService",
        ],
    )?;
    prometheus.detach();
    println!(
        "\nThe cluster is still up: `cargo xtask cluster exec -- kubectl -n {NAMESPACE} get all -o wide`.\nRemove it all with `cargo xtask cluster down`."
    );
    Ok(())
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Points Prometheus at the Ready `web` pods.
fn scrape_web_pods(prometheus: &Prometheus) -> Result<()> {
    let pods = kube()?.list::<Pod>(NAMESPACE, "app=web")?;
    let targets: Vec<String> = pods
        .iter()
        .filter(|p| is_ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .map(|ip| format!("{ip}:8080"))
        .collect();
    prometheus.scrape(&targets)
}

fn show(cluster: &Cluster, args: &[&str]) -> Result<()> {
    println!("\n$ kubectl -n {NAMESPACE} {}", args.join(" "));
    let out = cmd::output(
        "kubectl",
        cluster.kubectl().args(["-n", NAMESPACE]).args(args),
    )?;
    println!("{}", indent(&out));
    Ok(())
}

fn wait_replicas(want: i32, timeout: Duration) -> Result<()> {
    let k = kube()?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let d = k.get::<Deployment>(NAMESPACE, "web")?;
        let spec = d.spec.and_then(|s| s.replicas).unwrap_or(1);
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        if spec == want && (want == 0 || ready >= want) {
            return Ok(());
        }
        thread::sleep(Duration::from_secs(1));
    }
    bail!("demo: web did not reach {want} replicas within {timeout:?}")
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
