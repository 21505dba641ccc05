//! The generated CRD against the real kube-apiserver: KubeElasti's sample manifest applies
//! unchanged, and bad input is refused at admission with a message naming the field.
use std::process::{Command, Stdio};

use elasti_e2e::*;

fn manifest(spec: &str) -> String {
    format!(
        "apiVersion: elasti.truefoundry.com/v1alpha1\nkind: ElastiService\nmetadata:\n  name: sample\nspec:\n{spec}"
    )
}

const VALID_SPEC: &str = r#"  minTargetReplicas: 1
  service: target-service
  cooldownPeriod: 5
  scaleTargetRef:
    apiVersion: apps/v1
    kind: deployments
    name: target-deployment
  triggers:
    - type: prometheus
      metadata:
        query: sum(rate(nginx_ingress_controller_nginx_process_requests_total[1m])) or vector(0)
        serverAddress: http://kube-prometheus-stack-prometheus.monitoring.svc.cluster.local:9090
        threshold: "0.5"
"#;

/// `kubectl apply --dry-run=server`: admission runs, nothing is stored.
fn server_dry_run(ns: &str, manifest: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .args(["apply", "--dry-run=server", "-n", ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(manifest.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask test`"]
fn kubeelasti_sample_applies_and_bad_input_is_refused() -> anyhow::Result<()> {
    require_cluster();
    install_crd()?;
    let ns = TempNamespace::create("crd")?;
    let ns = ns.name.as_str();

    apply(ns, &manifest(VALID_SPEC))?;
    let min = kubectl(&[
        "-n",
        ns,
        "get",
        "elastiservice",
        "sample",
        "-o",
        "jsonpath={.spec.minTargetReplicas}",
    ])?;
    assert_eq!(min, "1");
    let defaulted = manifest(
        "  service: s\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: d}\n",
    );
    apply(ns, &defaulted.replace("name: sample", "name: defaulted"))?;
    let cooldown = kubectl(&[
        "-n",
        ns,
        "get",
        "elastiservice",
        "defaulted",
        "-o",
        "jsonpath={.spec.cooldownPeriod} {.spec.minTargetReplicas}",
    ])?;
    assert_eq!(
        cooldown, "900 1",
        "the apiserver applies KubeElasti's defaults"
    );

    let cases = [
        (
            "empty service",
            VALID_SPEC.replace("service: target-service", "service: \"\""),
            "spec.service",
        ),
        (
            "cooldown out of range",
            VALID_SPEC.replace("cooldownPeriod: 5", "cooldownPeriod: 700000"),
            "spec.cooldownPeriod",
        ),
        (
            "non-numeric threshold",
            VALID_SPEC.replace("threshold: \"0.5\"", "threshold: \"half\""),
            "threshold",
        ),
        (
            "unknown trigger type",
            VALID_SPEC.replace("type: prometheus", "type: datadog"),
            "type",
        ),
        (
            "unknown target kind",
            VALID_SPEC.replace("kind: deployments", "kind: DaemonSet"),
            "kind",
        ),
        (
            "minTargetReplicas 0",
            VALID_SPEC.replace("minTargetReplicas: 1", "minTargetReplicas: 0"),
            "spec.minTargetReplicas",
        ),
    ];
    for (what, spec, field) in cases {
        let err = server_dry_run(ns, &manifest(&spec)).err();
        let err = err.unwrap_or_else(|| panic!("{what}: the apiserver accepted it"));
        assert!(
            err.contains(field),
            "{what}: the error should name {field}: {err}"
        );
    }
    Ok(())
}
