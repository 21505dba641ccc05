//! `cargo xtask demo`: the README's main job. Installs what is missing, brings the local
//! cluster up, installs elasti from its manifests, and runs a sample workload with an
//! ElastiService whose Prometheus trigger (Debian's `prometheus`, in the cluster's network
//! namespace) puts it to sleep. Then it shows the service at zero, a request from a pod
//! held and answered with the wake-up time, and the service going back to zero after the
//! cooldown. The cluster is left running; `cargo xtask cluster down` removes it.
use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{cluster, cmd, ebpf, images, paths, sample, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of idleness (no requests) before elasti puts the demo service to sleep.
    #[arg(long, default_value_t = 20)]
    pub cooldown_secs: u32,
}

const NAMESPACE: &str = "elasti-demo";
/// Where Prometheus listens, on the node's address inside the cluster's netns.
pub const PROMETHEUS: &str = "10.250.0.2:9091";

pub fn run(args: &Args) -> Result<()> {
    setup::run(&setup::Args {
        skip_apt: false,
        skip_ebpf_toolchain: false,
    })?;
    ebpf::build()?;
    images::build()?;
    cluster::up()?;

    let p = cmd::Progress::start("install elasti (kubectl apply -k deploy/local)");
    sample::install_elasti()?;
    p.done();

    let p = cmd::Progress::start("start Prometheus (scrapes the demo pods every 2s)");
    start_prometheus()?;
    p.done();

    let p = cmd::Progress::start(
        "deploy `web` (Deployment + Service + ElastiService) and a client pod",
    );
    cluster::apply(&demo_manifest(args.cooldown_secs))?;
    cmd::run(
        "rollout",
        cluster::kubectl().args([
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            "deploy/web",
            "--timeout=120s",
        ]),
    )?;
    cmd::run(
        "client",
        cluster::kubectl().args([
            "-n",
            NAMESPACE,
            "wait",
            "pod/client",
            "--for=condition=Ready",
            "--timeout=120s",
        ]),
    )?;
    scrape_web_pods()?;
    p.done();

    println!(
        "\n`web` gets no traffic, so once its {}s cooldown has passed, Prometheus reads\n  sum(rate(http_requests_total{{job=\"web\"}}[20s])) = 0  (threshold 0.5)\nand elasti scales it to zero...",
        args.cooldown_secs
    );
    let since = Instant::now();
    wait_replicas("0", Duration::from_secs(180))?;
    println!(
        "    web is at 0 replicas after {:.0}s",
        since.elapsed().as_secs_f64()
    );
    show(
        "kubectl get elastiservice",
        &["get", "elastiservice", "web"],
    )?;

    let ip = output(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let url = format!("http://{ip}/");
    println!("\nGET {url} from pod `client`, with web at 0 replicas:");
    let start = Instant::now();
    let answer = output(&[
        "exec",
        "client",
        "--",
        "/usr/local/bin/http-get",
        "--timeout",
        "120",
        &url,
    ])?;
    let cold = start.elapsed();
    println!("{}", indent(&answer));
    if !answer.starts_with("HTTP/1.1 200") {
        bail!("demo: the cold request was not answered 200");
    }
    println!(
        "    answered in {:.2}s: the agent held the request, the operator scaled web up, and\n    the request went to the new pod the moment it was Ready. Nothing was refused.",
        cold.as_secs_f64()
    );
    show(
        "kubectl get elastiservice",
        &["get", "elastiservice", "web"],
    )?;
    scrape_web_pods()?;

    println!(
        "\nNo more requests: after the {}s cooldown elasti scales web to zero again...",
        args.cooldown_secs
    );
    let since = Instant::now();
    wait_replicas("0", Duration::from_secs(180))?;
    println!(
        "    web is at 0 replicas again after {:.0}s",
        since.elapsed().as_secs_f64()
    );
    show(
        "events",
        &[
            "get",
            "events.events.k8s.io",
            "--field-selector",
            "regarding.kind=ElastiService",
        ],
    )?;
    println!(
        "\nThe cluster is still up: `cargo xtask cluster exec -- kubectl -n {NAMESPACE} get all`;\nPrometheus is at http://{PROMETHEUS} in the cluster netns. Remove it all with `cargo xtask cluster down`."
    );
    Ok(())
}

pub fn start_prometheus() -> Result<()> {
    let dir = paths::repo().join("target/cluster/prometheus");
    std::fs::create_dir_all(&dir)?;
    // Debian's Prometheus has no Kubernetes discovery: the demo writes the pods to scrape
    // to a file_sd file ([`scrape_web_pods`]).
    let config = format!(
        r#"global: {{scrape_interval: 2s, evaluation_interval: 2s}}
scrape_configs:
- job_name: prometheus
  static_configs: [{{targets: ["{PROMETHEUS}"]}}]
- job_name: web
  file_sd_configs: [{{files: ["{}"], refresh_interval: 1s}}]
"#,
        dir.join("targets.json").display()
    );
    std::fs::write(dir.join("targets.json"), "[]")?;
    std::fs::write(dir.join("prometheus.yml"), config)?;
    let _ = std::fs::remove_dir_all(dir.join("data"));
    cluster::host::spawn(
        "prometheus",
        Path::new("/usr/bin/prometheus"),
        &[
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={PROMETHEUS}"),
        ],
    )?;
    cluster::host::wait_for("Prometheus ready", Duration::from_secs(30), || {
        Command::output(
            cluster::in_cluster("/usr/bin/curl")
                .args(["-sf", &format!("http://{PROMETHEUS}/-/ready")]),
        )
        .is_ok_and(|o| o.status.success())
    })
}

/// Points Prometheus at the Ready `web` pods.
fn scrape_web_pods() -> Result<()> {
    let ips = output(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ])?;
    let targets: Vec<String> = ips
        .split_whitespace()
        .map(|ip| format!("\"{ip}:8080\""))
        .collect();
    let dir = paths::repo().join("target/cluster/prometheus");
    std::fs::write(
        dir.join("targets.json.tmp"),
        format!(r#"[{{"targets": [{}]}}]"#, targets.join(", ")),
    )?;
    std::fs::rename(dir.join("targets.json.tmp"), dir.join("targets.json"))?;
    Ok(())
}

fn demo_manifest(cooldown: u32) -> String {
    let image = images::reference("elasti-http-workload");
    format!(
        r#"{web}---
apiVersion: elasti.truefoundry.com/v1alpha1
kind: ElastiService
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  service: web
  minTargetReplicas: 1
  cooldownPeriod: {cooldown}
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}
  triggers:
  - type: prometheus
    metadata:
      serverAddress: http://{PROMETHEUS}
      query: sum(rate(http_requests_total{{job="web"}}[20s])) or vector(0)
      threshold: "0.5"
      uptimeFilter: job="prometheus"
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NAMESPACE}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {image}
    imagePullPolicy: Never
    env: [{{name: LISTEN, value: "127.0.0.1:18080"}}]
"#,
        web = sample::web(NAMESPACE)
    )
}

fn output(args: &[&str]) -> Result<String> {
    cmd::output(
        "kubectl",
        cluster::kubectl().args(["-n", NAMESPACE]).args(args),
    )
}

fn show(title: &str, args: &[&str]) -> Result<()> {
    println!("\n$ {title}");
    println!("{}", indent(&output(args)?));
    Ok(())
}

fn wait_replicas(want: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if output(&["get", "deploy/web", "-o", "jsonpath={.spec.replicas}"])? == want {
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
