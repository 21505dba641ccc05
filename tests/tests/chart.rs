//! The chart's monitoring objects (`deploy/helm/elasti/templates/monitoring.yaml`): they
//! render, the dashboard is JSON Grafana reads, the alert rules pass `promtool`, and every
//! elasti metric they name is one the agent or the operator registers — so a renamed
//! metric fails here, not on a platform team's dashboard.
use std::{collections::BTreeSet, process::Command};

use elasti_testbed::paths;

/// Whether the tools are here; outside CI a missing one is said loudly, in CI it fails.
fn tool_or_skip(path: &std::path::Path, test: &str) -> bool {
    if path.exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {} is missing; `cargo xtask setup` installs it",
        path.display()
    );
    eprintln!(
        "\n!!! SKIPPED {test}: {} is missing; run `cargo xtask setup`. !!!\n",
        path.display()
    );
    false
}

fn rendered() -> Vec<serde_yaml::Value> {
    let out = Command::new(paths::helm_bin().join("helm"))
        .current_dir(paths::repo())
        .args([
            "template",
            "elasti",
            "deploy/helm/elasti",
            "--set",
            "monitoring.dashboard.enabled=true",
            "--set",
            "monitoring.prometheusRule.enabled=true",
        ])
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(objects: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The metric families the agent and the operator register (as `/metrics` names them;
/// a family shows there once it has a series, so each gets one).
fn registered() -> BTreeSet<String> {
    use elasti_agent::metrics::{Outcome, Protocol, WakeResult};
    let mut text = String::new();
    let mut r = prometheus_client::registry::Registry::default();
    let agent = elasti_agent::metrics::Metrics::register(&mut r);
    let id = elasti_agent::hold::ServiceId {
        namespace: "ns".into(),
        name: "web".into(),
        port: 80,
    };
    agent.outcome(&id, Protocol::Http1, Outcome::Forwarded);
    agent.refused(&id, "PortTaken");
    agent.held_gauge(&id).set(1);
    agent.waited(&id, std::time::Duration::from_millis(1));
    agent.cold_start(&id, std::time::Duration::from_millis(1));
    agent.wake(&id, WakeResult::Accepted);
    agent.rewrites(&id, 1, 1);
    agent.intercepting(&id, true);
    let operator = elasti_operator::metrics::Metrics::register(&mut r);
    operator.scaled("up", "wake");
    operator.reconciled(elasti_operator::metrics::ReconcileResult::Ok);
    operator.wake(202);
    operator.trigger_read("idle");
    operator.leader.set(1);
    operator.proxy_ports.set(1);
    prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// The `elasti_…` names in a PromQL text, without the series suffixes of counters and
/// histograms.
fn named(promql: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = promql;
    while let Some(i) = rest.find("elasti_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_total", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(family.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_dashboard_and_alerts_render_parse_and_name_only_real_metrics() {
    if !tool_or_skip(&paths::helm_bin().join("helm"), "chart monitoring") {
        return;
    }
    let objects = rendered();
    let registered = registered();
    assert!(
        registered.contains("elasti_agent_cold_start_seconds"),
        "{registered:?}"
    );

    let dashboard = of_kind(&objects, "ConfigMap");
    let json = dashboard["data"]["elasti.json"]
        .as_str()
        .expect("the dashboard's JSON");
    let json: serde_json::Value = serde_json::from_str(json).expect("the dashboard is JSON");
    let exprs: Vec<&str> = json["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");

    let rule = of_kind(&objects, "PrometheusRule");
    let rules: Vec<&serde_yaml::Value> = rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .collect();
    let alert_exprs: Vec<&str> = rules.iter().filter_map(|r| r["expr"].as_str()).collect();
    for name in exprs
        .iter()
        .chain(alert_exprs.iter())
        .flat_map(|e| named(e))
    {
        assert!(
            registered.contains(&name),
            "{name} is named by the chart's monitoring but registered by neither the agent nor the operator"
        );
    }

    // promtool reads the rule group as Prometheus will.
    let promtool = std::path::Path::new("/usr/bin/promtool");
    if !tool_or_skip(promtool, "promtool check rules") {
        return;
    }
    let file = std::env::temp_dir().join(format!("elasti-rules-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        serde_yaml::to_string(&rule["spec"]).expect("rules YAML"),
    )
    .expect("write rules");
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("run promtool");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
