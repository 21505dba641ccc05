//! What the demo and the cluster benchmarks deploy on the local cluster: elasti itself
//! (from `deploy/local`) and the sample HTTP workload `web`.
use anyhow::Result;

use crate::{cluster, cmd, images, paths};

/// `kubectl apply -k deploy/local`, then waits for the agent and the operator.
pub fn install_elasti() -> Result<()> {
    let local = paths::repo().join("deploy/local");
    cmd::run(
        "install elasti",
        cluster::kubectl().args(["apply", "-k", &local.display().to_string()]),
    )?;
    for what in ["daemonset/elasti-agent", "deployment/elasti-operator"] {
        cmd::run(
            "rollout",
            cluster::kubectl().args([
                "-n",
                "elasti-system",
                "rollout",
                "status",
                what,
                "--timeout=180s",
            ]),
        )?;
    }
    Ok(())
}

/// Namespace `namespace` with Deployment and Service `web` (the HTTP workload, 1 replica).
pub fn web(namespace: &str) -> String {
    let image = images::reference("elasti-http-workload");
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {namespace}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
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
metadata: {{name: web, namespace: {namespace}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}
