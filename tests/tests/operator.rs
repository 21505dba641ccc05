//! The operator against the cluster's real kube-apiserver, run in-process: finalizer and
//! deletion at zero, mode and the fallback slice, namespace scoping, proxy ports under
//! concurrent creates and across a crash, leader failover, scale-down driven by a
//! Prometheus query API (and never while it is down), authenticated wakes, KEDA and HPA.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use elasti_api::{AutoscalerSpec, AutoscalerType, ElastiService};
use elasti_e2e::{
    operator::{FakePrometheus, PromAnswer, RunningOperator, strip_finalizers},
    *,
};

fn wait_for(ns: &str, what: &str, path: &str, want: &str, timeout: Duration) -> anyhow::Result<()> {
    wait_until(
        &format!("{what} {path} == {want:?} in {ns}"),
        timeout,
        || (jsonpath(ns, what, path) == want).then_some(()),
    )
    .map_err(|e| anyhow::anyhow!("{e}; last value {:?}", jsonpath(ns, what, path)))
}

fn replicas(ns: &str, deploy: &str) -> String {
    elasti_e2e::replicas(ns, Kind::Deployment, deploy).to_string()
}

fn condition(ns: &str, es: &str, type_: &str, field: &str) -> String {
    jsonpath(
        ns,
        &format!("elastiservice/{es}"),
        &format!("{{.status.conditions[?(@.type==\"{type_}\")].{field}}}"),
    )
}

/// An ElastiService for Service `name` and the Deployment of the same name.
fn es_for(name: &str) -> ElastiService {
    elastiservice(name, Kind::Deployment)
}

/// `es` with `cooldown` seconds.
fn cooldown(mut es: ElastiService, cooldown: i32) -> ElastiService {
    es.spec.cooldown_period = cooldown;
    es
}

/// `es` idle while `sum(rate(requests_total[1m]))` at `url` is under 0.5, after `secs`.
fn with_prometheus(es: ElastiService, url: &str, secs: i32) -> ElastiService {
    let mut es = cooldown(es, secs);
    es.spec.triggers = vec![prometheus_trigger(
        url,
        "sum(rate(requests_total[1m])) or vector(0)",
        "0.5",
    )];
    es
}

/// Stops the operator after stripping finalizers it can no longer remove.
struct Scoped<'a> {
    operator: Option<RunningOperator>,
    namespaces: Vec<&'a str>,
}

impl Drop for Scoped<'_> {
    fn drop(&mut self) {
        drop(self.operator.take());
        for ns in &self.namespaces {
            strip_finalizers(ns);
        }
    }
}

fn start(ns: &str, extra: &[&str]) -> RunningOperator {
    // One replica per test unless the test elects a leader itself.
    let elect = extra.iter().any(|a| a.starts_with("--leader-elect"));
    let mut args = vec![
        "--poll-interval-secs=2".to_string(),
        format!("--watch-namespaces={ns}"),
        format!("--agent-namespace={ns}"),
    ];
    if !elect {
        args.push("--leader-elect=false".into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    RunningOperator::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask test`"]
fn lifecycle_mode_fallback_slice_scoping_and_deletion_at_zero() -> anyhow::Result<()> {
    require_cluster();
    install_crd()?;
    let ns_owned = TempNamespace::create("op-life")?;
    let other_owned = TempNamespace::create("op-out")?;
    let (ns, other) = (ns_owned.name.as_str(), other_owned.name.as_str());
    deploy(ns, &App::http("web"))?;
    // The client pod plays an agent: the fallback slice lists the agents' pod IPs.
    deploy_client(ns, "client", None, false)?;
    kubectl(&[
        "-n",
        ns,
        "label",
        "pod",
        "client",
        "app.kubernetes.io/name=elasti-agent",
    ])?;
    let client_ip = jsonpath(ns, "pod/client", "{.status.podIP}");
    // Out of WATCH_NAMESPACES: applied first, so it would be reconciled first if seen.
    apply_es(other, &es_for("web"))?;
    let op = Scoped {
        operator: Some(start(ns, &[])),
        namespaces: vec![ns],
    };
    apply_es(ns, &cooldown(es_for("web"), 0))?;

    let es = "elastiservice/web";
    wait_for(ns, es, "{.status.mode}", "serve", Duration::from_secs(90))?;
    assert_eq!(
        jsonpath(ns, es, "{.metadata.finalizers[0]}"),
        "elasti.truefoundry.com/finalizer"
    );
    let proxy_port: u16 = jsonpath(ns, es, "{.status.proxyPorts[0].proxyPort}").parse()?;
    assert!((24000..=27999).contains(&proxy_port), "{proxy_port}");
    assert_eq!(jsonpath(ns, es, "{.status.proxyPorts[0].name}"), "http");
    assert_eq!(condition(ns, "web", "Ready", "status"), "True");
    assert_eq!(condition(ns, "web", "ScaledToZero", "reason"), "NoTriggers");
    assert!(
        kubectl(&["-n", ns, "get", "endpointslice", "web-elasti-ipv4"]).is_err(),
        "no fallback slice in serve mode"
    );

    // A manual scale to zero: proxy mode, and the fallback slice points at the agents.
    kubectl(&["-n", ns, "scale", "deployment/web", "--replicas=0"])?;
    wait_for(ns, es, "{.status.mode}", "proxy", Duration::from_secs(60))?;
    wait_for(
        ns,
        "endpointslice/web-elasti-ipv4",
        "{.endpoints[0].addresses[0]}",
        &client_ip,
        Duration::from_secs(20),
    )?;
    let slice = "endpointslice/web-elasti-ipv4";
    assert_eq!(
        jsonpath(ns, slice, "{.ports[0].port}"),
        proxy_port.to_string()
    );
    assert_eq!(jsonpath(ns, slice, "{.ports[0].name}"), "http");
    assert_eq!(
        condition(ns, "web", "ScaledToZero", "status"),
        "True",
        "the condition says the target is at zero"
    );

    // The out-of-scope ElastiService was never touched.
    assert_eq!(jsonpath(other, es, "{.metadata.finalizers}"), "");
    assert_eq!(jsonpath(other, es, "{.status}"), "");

    // Deleting it at zero scales the target back up and removes what elasti made.
    kubectl(&["-n", ns, "delete", "elastiservice", "web", "--wait=false"])?;
    wait_for(
        ns,
        "deployment/web",
        "{.spec.replicas}",
        "1",
        Duration::from_secs(30),
    )?;
    wait_until("ElastiService gone", Duration::from_secs(30), || {
        kubectl(&["-n", ns, "get", "elastiservice", "web"])
            .is_err()
            .then_some(())
    })?;
    assert!(
        kubectl(&["-n", ns, "get", "endpointslice", "web-elasti-ipv4"]).is_err(),
        "fallback slice removed"
    );
    let events = kubectl(&[
        "-n",
        ns,
        "get",
        "events.events.k8s.io",
        "-o",
        "jsonpath={.items[*].reason}",
    ])?;
    assert!(events.contains("ScaledUp"), "events: {events}");
    drop(op);
    Ok(())
}

/// `count` Services of two ports each (no pods behind them), each with an ElastiService.
fn services_and_elastiservices(ns: &str, count: usize) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    let k = kube()?;
    for i in 0..count {
        let name = format!("s{i}");
        let port = |name: &str, port: i32| ServicePort {
            name: Some(name.into()),
            port,
            ..Default::default()
        };
        let service = Service {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "none".to_string())].into()),
                ports: Some(vec![port("http", 80), port("grpc", 9000)]),
                ..Default::default()
            }),
            ..Default::default()
        };
        k.apply(ns, &service)?;
        k.apply(ns, &es_for(&name))?;
    }
    Ok(())
}

fn allocated(ns: &str) -> Vec<(String, String)> {
    let out = jsonpath(
        ns,
        "elastiservices",
        r#"{range .items[*]}{.metadata.name}={.status.proxyPorts[*].proxyPort}{"\n"}{end}"#,
    );
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask test`"]
fn proxy_ports_are_unique_under_concurrent_creates_and_survive_a_leader_crash() -> anyhow::Result<()>
{
    require_cluster();
    install_crd()?;
    let ns_owned = TempNamespace::create("op-ports")?;
    let ns = ns_owned.name.as_str();
    let lease = [
        "--lease-duration-secs=4",
        "--renew-deadline-secs=3",
        "--retry-period-secs=1",
        "--proxy-ports=25000-25099",
    ];
    let lease_ns = format!("--lease-namespace={ns}");
    let args_for = |id: &str| -> Vec<String> {
        lease
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--leader-elect=true".to_string(),
                lease_ns.clone(),
                format!("--identity={id}"),
            ])
            .collect()
    };
    let a_args = args_for("replica-a");
    let a = start(ns, &a_args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for(
        ns,
        "lease/elasti-operator",
        "{.spec.holderIdentity}",
        "replica-a",
        Duration::from_secs(15),
    )?;
    let b_args = args_for("replica-b");
    let mut guard = Scoped {
        operator: Some(start(
            ns,
            &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
        )),
        namespaces: vec![ns],
    };
    assert!(a.metrics().contains("elasti_operator_leader 1"));
    assert!(
        guard
            .operator
            .as_ref()
            .is_some_and(|b| b.metrics().contains("elasti_operator_leader 0")),
        "the second replica stands by"
    );

    // Twelve ElastiServices of two ports each, created in one go.
    services_and_elastiservices(ns, 12)?;
    let before = wait_until("24 proxy ports", Duration::from_secs(60), || {
        let a = allocated(ns);
        (a.len() == 12 && a.iter().all(|(_, p)| p.split(' ').count() == 2)).then_some(a)
    })?;
    let ports: Vec<u16> = before
        .iter()
        .flat_map(|(_, p)| p.split(' ').filter_map(|x| x.parse().ok()))
        .collect();
    let unique: BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(unique.len(), 24, "unique: {ports:?}");
    assert!(
        ports.iter().all(|p| (25000..=25099).contains(p)),
        "{ports:?}"
    );
    // No target exists: each says so, and still holds its ports.
    assert_eq!(condition(ns, "s0", "Ready", "reason"), "TargetNotFound");

    // The leader crashes: the standby takes over once the Lease expires.
    let crashed = Instant::now();
    a.kill();
    wait_for(
        ns,
        "lease/elasti-operator",
        "{.spec.holderIdentity}",
        "replica-b",
        Duration::from_secs(20),
    )?;
    let failover = crashed.elapsed();
    assert!(
        failover < Duration::from_secs(15),
        "failover took {failover:?}"
    );
    let b = guard
        .operator
        .as_ref()
        .map(RunningOperator::metrics)
        .unwrap_or_default();
    assert!(b.contains("elasti_operator_leader 1"), "{b}");

    // The new leader keeps every allocation and allocates around them.
    services_and_elastiservices(ns, 13)?;
    let after = wait_until("the 13th allocation", Duration::from_secs(30), || {
        let a = allocated(ns);
        (a.len() == 13 && a.iter().all(|(_, p)| p.split(' ').count() == 2)).then_some(a)
    })?;
    for (name, p) in &before {
        assert!(
            after.contains(&(name.clone(), p.clone())),
            "{name} kept {p}"
        );
    }
    let all: BTreeSet<&str> = after.iter().flat_map(|(_, p)| p.split(' ')).collect();
    assert_eq!(all.len(), 26, "{after:?}");
    eprintln!("leader failover after a crash: {failover:?}");
    guard.operator.take();
    Ok(())
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask test`"]
fn prometheus_drives_scale_down_after_cooldown_and_never_while_down() -> anyhow::Result<()> {
    require_cluster();
    install_crd()?;
    let ns_owned = TempNamespace::create("op-prom")?;
    let ns = ns_owned.name.as_str();
    deploy(ns, &App::http("web"))?;
    let prom = FakePrometheus::start(PromAnswer::Down);
    let _op = Scoped {
        operator: Some(start(ns, &[])),
        namespaces: vec![ns],
    };
    apply_es(ns, &with_prometheus(es_for("web"), &prom.url(), 3))?;

    // Prometheus down: after the cooldown the condition says so, and nothing scales.
    wait_until("PrometheusUnavailable", Duration::from_secs(30), || {
        (condition(ns, "web", "ScaledToZero", "reason") == "PrometheusUnavailable").then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        replicas(ns, "web"),
        "1",
        "never scaled down while Prometheus is down"
    );
    let warnings = kubectl(&[
        "-n",
        ns,
        "get",
        "events.events.k8s.io",
        "-o",
        "jsonpath={.items[*].reason}",
    ])?;
    assert!(warnings.contains("PrometheusUnavailable"), "{warnings}");

    // Idle: scaled to zero.
    prom.set(PromAnswer::Value(0.0));
    let idle = Instant::now();
    wait_for(
        ns,
        "deployment/web",
        "{.spec.replicas}",
        "0",
        Duration::from_secs(20),
    )?;
    eprintln!("idle reading to scale-to-zero: {:?}", idle.elapsed());
    wait_until("ScaledToZero condition", Duration::from_secs(10), || {
        (condition(ns, "web", "ScaledToZero", "status") == "True").then_some(())
    })?;
    let queries = prom.queries.lock().map(|q| q.clone()).unwrap_or_default();
    assert!(
        queries.iter().any(|q| q == r#"up{job="prometheus"}"#),
        "{queries:?}"
    );
    assert!(
        queries
            .iter()
            .any(|q| q.starts_with("sum(rate(requests_total")),
        "{queries:?}"
    );

    // A trigger above its threshold wakes it without any request.
    prom.set(PromAnswer::Value(3.0));
    wait_for(
        ns,
        "deployment/web",
        "{.spec.replicas}",
        "1",
        Duration::from_secs(20),
    )?;
    assert_ne!(
        jsonpath(ns, "elastiservice/web", "{.status.lastScaledUpTime}"),
        ""
    );
    Ok(())
}

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask test`"]
fn wake_is_authenticated_and_scales_up() -> anyhow::Result<()> {
    require_cluster();
    install_crd()?;
    let ns_owned = TempNamespace::create("op-wake")?;
    let ns = ns_owned.name.as_str();
    deploy(ns, &App::http("web").replicas(0))?;
    kubectl(&["-n", ns, "create", "serviceaccount", "elasti-agent"])?;
    kubectl(&["-n", ns, "create", "serviceaccount", "other"])?;
    let op = Scoped {
        operator: Some(start(ns, &[])),
        namespaces: vec![ns],
    };
    apply_es(ns, &es_for("web"))?;
    wait_for(
        ns,
        "elastiservice/web",
        "{.status.mode}",
        "proxy",
        Duration::from_secs(30),
    )?;
    let token = |sa: &str, audience: Option<&str>| -> anyhow::Result<String> {
        let mut args = vec!["-n", ns, "create", "token", sa];
        if let Some(a) = audience {
            args.extend(["--audience", a]);
        }
        Ok(kubectl(&args)?.trim().to_string())
    };
    let agent = token("elasti-agent", Some("elasti-operator"))?;
    let other = token("other", Some("elasti-operator"))?;
    let wrong_audience = token("elasti-agent", None)?;
    let body = format!(r#"{{"namespace":"{ns}","service":"web"}}"#);
    let Some(o) = op.operator.as_ref() else {
        unreachable!()
    };

    let code = |token: Option<&str>, body: &str| o.wake(token, body).map(|(c, _)| c).unwrap_or(0);
    assert_eq!(code(None, &body), 401, "no token");
    assert_eq!(code(Some("not-a-token"), &body), 401, "garbage token");
    assert_eq!(code(Some(&wrong_audience), &body), 401, "another audience");
    assert_eq!(code(Some(&other), &body), 403, "another ServiceAccount");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(replicas(ns, "web"), "0", "refused wakes scale nothing");
    assert_eq!(
        code(
            Some(&agent),
            &format!(r#"{{"namespace":"{ns}","service":"nope"}}"#)
        ),
        404,
        "unknown service"
    );
    assert_eq!(code(Some(&agent), "{not json"), 400);

    let (c, resp) = o.wake(Some(&agent), &body)?;
    assert_eq!(c, 202, "{resp}");
    assert_eq!(
        replicas(ns, "web"),
        "1",
        "scaled by the time 202 is answered"
    );
    assert_ne!(
        jsonpath(ns, "elastiservice/web", "{.status.lastScaledUpTime}"),
        ""
    );
    let (c, resp) = o.wake(Some(&agent), &body)?;
    assert_eq!(c, 202, "idempotent: {resp}");
    assert!(resp.contains("already"), "{resp}");
    let m = o.metrics();
    for code in ["401", "403", "404", "400", "202"] {
        assert!(
            m.contains(&format!(
                "elasti_operator_wake_requests_total{{code=\"{code}\"}}"
            )),
            "{code} counted:\n{m}"
        );
    }
    assert!(
        m.contains("elasti_operator_scales_total{direction=\"up\",cause=\"wake\"} 1"),
        "{m}"
    );
    Ok(())
}

const SCALED_OBJECT_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: scaledobjects.keda.sh}
spec:
  group: keda.sh
  names: {kind: ScaledObject, listKind: ScaledObjectList, plural: scaledobjects, singular: scaledobject, shortNames: [so]}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

#[test]
#[ignore = "needs the kind cluster: run with `cargo xtask test`"]
fn keda_is_paused_at_zero_and_resumed_and_an_hpa_does_not_fight() -> anyhow::Result<()> {
    require_cluster();
    install_crd()?;
    // KEDA is not in any registry these machines reach: a CRD of the same group, kind
    // and shape stands in for it (the operator only patches its annotation).
    apply("default", SCALED_OBJECT_CRD)?;
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/scaledobjects.keda.sh",
        "--timeout=30s",
    ])?;
    let ns_owned = TempNamespace::create("op-keda")?;
    let ns = ns_owned.name.as_str();
    deploy(ns, &App::http("web"))?;
    apply(
        ns,
        "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: web-so}\nspec:\n  scaleTargetRef: {name: web}\n  minReplicaCount: 1\n",
    )?;
    // An HPA on the same target: Kubernetes disables it at zero replicas.
    apply(
        ns,
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 1\n  maxReplicas: 3\n  metrics:\n  - type: Resource\n    resource: {name: cpu, target: {type: Utilization, averageUtilization: 80}}\n",
    )?;
    let prom = FakePrometheus::start(PromAnswer::Value(0.0));
    let _op = Scoped {
        operator: Some(start(ns, &[])),
        namespaces: vec![ns],
    };
    let mut es = with_prometheus(es_for("web"), &prom.url(), 2);
    es.spec.autoscaler = Some(AutoscalerSpec {
        kind: AutoscalerType::Keda,
        name: "web-so".into(),
    });
    apply_es(ns, &es)?;
    let paused = "{.metadata.annotations.autoscaling\\.keda\\.sh/paused-replicas}";
    wait_for(
        ns,
        "deployment/web",
        "{.spec.replicas}",
        "0",
        Duration::from_secs(30),
    )?;
    assert_eq!(
        jsonpath(ns, "scaledobject/web-so", paused),
        "0",
        "paused before the scale-down"
    );
    // The HPA does not scale it back (it is disabled at zero).
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(replicas(ns, "web"), "0", "the HPA left it at zero");

    prom.set(PromAnswer::Value(5.0));
    wait_for(
        ns,
        "deployment/web",
        "{.spec.replicas}",
        "1",
        Duration::from_secs(20),
    )?;
    wait_for(
        ns,
        "scaledobject/web-so",
        paused,
        "",
        Duration::from_secs(10),
    )?;
    // ...and does not block the scale-up either.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(replicas(ns, "web"), "1");
    Ok(())
}
