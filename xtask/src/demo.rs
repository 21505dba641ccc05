//! `cargo xtask demo`: the README's main job. Installs what is missing, brings the local
//! cluster up, deploys the HTTP workload behind a Service, answers a request through it, then
//! scales it to zero and shows the request failing — the gap elasti closes. The cluster is
//! left running for exploring; `cargo xtask cluster down` removes it.
use std::{process::Command, thread, time::Duration};

use anyhow::{Result, bail};

use crate::{cluster, cmd, images, setup};

#[derive(clap::Args)]
pub struct Args {}

const NAMESPACE: &str = "elasti-demo";

pub fn run(_args: &Args) -> Result<()> {
    setup::run(&setup::Args {
        skip_apt: false,
        skip_ebpf_toolchain: false,
    })?;
    images::build()?;
    cluster::up()?;
    let manifest = format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: http
        image: {image}
        imagePullPolicy: Never
        env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        ports: [{{containerPort: 8080, name: http}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#,
        image = images::reference("elasti-http-workload")
    );
    let p = cmd::Progress::start("deploy the demo workload (Deployment web + Service web)");
    cluster::apply(&manifest)?;
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
    p.done();
    let ip = cmd::output(
        "service IP",
        cluster::kubectl().args([
            "-n",
            NAMESPACE,
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ]),
    )?;
    let url = format!("http://{ip}/");
    println!("\nGET {url} with 1 replica:");
    // kube-proxy programs a new Service within about a second; wait for it.
    let mut warm = None;
    for _ in 0..30 {
        if let Ok(out) = cmd::output("request", &mut http_get(&url)) {
            warm = Some(out);
            break;
        }
        thread::sleep(Duration::from_secs(1));
    }
    let Some(warm) = warm else {
        bail!("demo: {url} did not answer with one replica")
    };
    println!("{}", indent(&warm));

    let p = cmd::Progress::start("scale web to 0 replicas");
    cmd::run(
        "scale",
        cluster::kubectl().args(["-n", NAMESPACE, "scale", "deploy/web", "--replicas=0"]),
    )?;
    cmd::run(
        "wait",
        cluster::kubectl().args([
            "-n",
            NAMESPACE,
            "wait",
            "pods",
            "-l",
            "app=web",
            "--for=delete",
            "--timeout=60s",
        ]),
    )?;
    thread::sleep(Duration::from_secs(1));
    p.done();
    println!("\nGET {url} with 0 replicas (without elasti):");
    match Command::output(&mut http_get(&url)) {
        Ok(o) if o.status.success() => {
            bail!("demo: the request at zero replicas unexpectedly succeeded")
        }
        Ok(o) => println!("    failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => println!("    failed: {e}"),
    }
    println!("\nThat refused request is what elasti removes: its agent holds it and wakes `web`.");
    println!(
        "The cluster is still up: `cargo xtask cluster exec -- kubectl -n {NAMESPACE} get all`; remove it with `cargo xtask cluster down`."
    );
    Ok(())
}

fn http_get(url: &str) -> Command {
    let bin = crate::paths::repo().join("target/release/http-get");
    let mut c = cluster::in_cluster(&bin.display().to_string());
    c.args(["--timeout", "3", url]);
    c
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
