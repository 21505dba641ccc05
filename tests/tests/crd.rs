//! The generated CRD against the real kube-apiserver: KubeElasti's sample manifest, and one
//! with every KubeElasti v0.1.30 field, apply unchanged (the latter with
//! `--validate=strict`), and bad input is refused at admission with a message naming the
//! field.
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
    kubectl_apply(ns, manifest, &["--dry-run=server"])
}

/// `kubectl apply --validate=strict` (plus `flags`): a field the schema does not know is an
/// error, not silently pruned.
fn strict_apply(ns: &str, manifest: &str, flags: &[&str]) -> Result<(), String> {
    let flags: Vec<&str> = ["--validate=strict"].iter().chain(flags).copied().collect();
    kubectl_apply(ns, manifest, &flags)
}

/// `kubectl apply <flags> -n ns -f -`, stderr in the error.
fn kubectl_apply(ns: &str, manifest: &str, flags: &[&str]) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("apply")
        .args(flags)
        .args(["-n", ns, "-f", "-"])
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

/// Every field KubeElasti v0.1.30's ElastiService has, as its e2e template and docs write them.
const FULL_SPEC: &str = r#"  minTargetReplicas: 1
  service: target-deployment
  cooldownPeriod: 300
  scaleTargetRef:
    apiVersion: apps/v1
    kind: deployments
    name: target-deployment
  triggers:
    - type: prometheus
      metadata:
        query: round(sum(rate(envoy_http_downstream_rq_total[1m])),0.001) or vector(0)
        serverAddress: http://prometheus-operated.monitoring.svc.cluster.local:9090
        threshold: "0.01"
        uptimeFilter: container="prometheus"
        headers:
          X-Scope-OrgID: tenant-a
  autoscaler:
    name: target-scaled-object
    type: keda
  enabledPeriod:
    schedule: "0 9 * * 1-5"
    duration: 8h
  probeResponse:
    - method: GET
      path:
        type: PathPrefix
        value: /healthz
      headers:
        - name: User-Agent
          type: RegularExpression
          value: ^kube-probe/
        - name: X-Check
          type: Exact
          value: "1"
      queryParams:
        - name: deep
          type: Exact
          value: "false"
      response:
        status: 200
        body: '{"ok":true}'
    - method: POST
      path:
        type: Exact
        value: /hook
      response:
        status: 200
        body: '{"ready":true}'
    - path:
        type: RegularExpression
        value: ^/v[0-9]+/ready$
      response:
        status: 204
        body: ""
"#;

/// `n` copies of a minimal probe rule, as `probeResponse` items.
fn probe_rules(n: usize) -> String {
    "    - response: {status: 200, body: ok}\n".repeat(n)
}

/// `n` copies of a header (or query parameter) matcher, as list items under a rule.
fn matchers(n: usize) -> String {
    "        - {name: x, value: \"1\"}\n".repeat(n)
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask test`"]
fn every_kubeelasti_field_applies_strictly_and_bad_input_is_refused() -> anyhow::Result<()> {
    require_cluster();
    install_crd()?;
    let ns = TempNamespace::create("crd-full")?;
    let ns = ns.name.as_str();

    strict_apply(ns, &manifest(FULL_SPEC), &[]).map_err(anyhow::Error::msg)?;
    let stored = kubectl(&[
        "-n",
        ns,
        "get",
        "elastiservice",
        "sample",
        "-o",
        "jsonpath={.spec.enabledPeriod.schedule}|{.spec.enabledPeriod.duration}|\
         {.spec.probeResponse[0].headers[0].type}|{.spec.probeResponse[0].queryParams[0].value}|\
         {.spec.probeResponse[0].response.body}|{.spec.probeResponse[2].response.status}|\
         {.spec.triggers[0].metadata.headers.X-Scope-OrgID}",
    ])?;
    assert_eq!(
        stored, r#"0 9 * * 1-5|8h|RegularExpression|false|{"ok":true}|204|tenant-a"#,
        "every field is stored as written"
    );

    let defaulted = manifest(&format!(
        "  service: s\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: d}}\n  \
         enabledPeriod: {{timeZone: Europe/Berlin}}\n  probeResponse:\n{}",
        probe_rules(1)
    ));
    strict_apply(
        ns,
        &defaulted.replace("name: sample", "name: defaulted"),
        &[],
    )
    .map_err(anyhow::Error::msg)?;
    let period = kubectl(&[
        "-n",
        ns,
        "get",
        "elastiservice",
        "defaulted",
        "-o",
        "jsonpath={.spec.enabledPeriod.schedule}|{.spec.enabledPeriod.duration}|{.spec.enabledPeriod.timeZone}",
    ])?;
    assert_eq!(
        period, "0 0 * * *|24h|Europe/Berlin",
        "the apiserver applies KubeElasti's enabledPeriod defaults"
    );

    let with_rules = |rules: String| {
        let start = FULL_SPEC
            .find("  probeResponse:\n")
            .unwrap_or(FULL_SPEC.len());
        format!("{}  probeResponse:\n{rules}", &FULL_SPEC[..start])
    };
    let one_rule = |rule: &str| with_rules(format!("    - {}\n", rule.trim_start()));
    let long_path = format!("/{}", "a".repeat(1024));
    let long_header = "v".repeat(4097);
    let cases = [
        (
            "33 probe rules",
            with_rules(probe_rules(33)),
            "spec.probeResponse",
        ),
        (
            "status 418",
            FULL_SPEC.replace("status: 204", "status: 418"),
            "spec.probeResponse[2].response.status",
        ),
        (
            "path value over 1024 bytes",
            FULL_SPEC.replace("value: /hook", &format!("value: {long_path}")),
            "spec.probeResponse[1].path.value",
        ),
        (
            "unknown path type",
            FULL_SPEC.replace("type: PathPrefix", "type: Prefix"),
            "spec.probeResponse[0].path.type",
        ),
        (
            "17 header matchers",
            one_rule(&format!(
                "response: {{status: 200, body: ok}}\n      headers:\n{}",
                matchers(17)
            )),
            "spec.probeResponse[0].headers",
        ),
        (
            "17 query parameter matchers",
            one_rule(&format!(
                "response: {{status: 200, body: ok}}\n      queryParams:\n{}",
                matchers(17)
            )),
            "spec.probeResponse[0].queryParams",
        ),
        (
            "header value over 4096 bytes",
            FULL_SPEC.replace("value: \"1\"", &format!("value: {long_header}")),
            "spec.probeResponse[0].headers[1].value",
        ),
        (
            "unknown header match type",
            FULL_SPEC.replace(
                "type: RegularExpression\n          value: ^kube",
                "type: Prefix\n          value: ^kube",
            ),
            "spec.probeResponse[0].headers[0].type",
        ),
        (
            "unknown method",
            FULL_SPEC.replace("method: POST", "method: FETCH"),
            "spec.probeResponse[1].method",
        ),
        (
            "rule without a response",
            one_rule("method: GET"),
            "response",
        ),
        (
            "response without a body",
            one_rule("response: {status: 200}"),
            "body",
        ),
        (
            "unknown response field",
            one_rule("response: {status: 200, body: ok, headers: {a: b}}"),
            "headers",
        ),
        (
            "empty trigger list",
            format!(
                "{}  triggers: []\n",
                &VALID_SPEC[..VALID_SPEC.find("  triggers:").unwrap_or(VALID_SPEC.len())]
            ),
            "spec.triggers",
        ),
        (
            "six-field schedule",
            FULL_SPEC.replace("\"0 9 * * 1-5\"", "\"0 0 9 * * 1-5\""),
            "spec.enabledPeriod.schedule",
        ),
        (
            "duration in days",
            FULL_SPEC.replace("duration: 8h", "duration: 1d"),
            "spec.enabledPeriod.duration",
        ),
        (
            "time zone that is a path",
            FULL_SPEC.replace("duration: 8h", "duration: 8h\n    timeZone: ../etc/passwd"),
            "spec.enabledPeriod.timeZone",
        ),
    ];
    for (what, spec, field) in cases {
        let err = strict_apply(ns, &manifest(&spec), &["--dry-run=server"]).err();
        let err = err.unwrap_or_else(|| panic!("{what}: the apiserver accepted it"));
        assert!(
            err.contains(field),
            "{what}: the error should name {field}: {err}"
        );
    }
    Ok(())
}
