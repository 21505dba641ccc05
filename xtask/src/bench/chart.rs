//! The README's picture: the cold-start breakdown (from `cluster.json`) and the proxy
//! comparison (from `results.json`), as one SVG of horizontal bars, medians. Rendered from
//! the figures a bench run just wrote, so the picture never drifts from the table.
use std::fmt::Write;

use serde_json::Value;

/// One bar: a label and its segments (value, colour, segment label).
struct Bar {
    label: String,
    segments: Vec<(f64, &'static str, String)>,
}

/// One panel: a title, the unit of its axis, its bars.
struct Panel {
    title: String,
    unit: &'static str,
    bars: Vec<Bar>,
}

const WIDTH: f64 = 860.0;
const LABEL_W: f64 = 250.0;
const BAR_H: f64 = 22.0;
const GAP: f64 = 10.0;
const COLOURS: [&str; 4] = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1"];

fn median(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(|s| s.get("median").or_else(|| s.get("p50")))
        .and_then(Value::as_f64)
}

/// The cold request through elasti, split into its parts, against a straight `/scale`
/// patch to Ready. `None` when the run measured no cold starts.
fn cold_start(cluster: &Value) -> Option<Panel> {
    let c = cluster.get("cold_start")?;
    let created = median(c, &["elasti", "request_to_pod_created_ms"])?;
    let start = median(c, &["elasti", "pod_start_to_ready_ms"])?;
    let answered = median(c, &["elasti", "ready_to_answered_ms"])?;
    let total = median(c, &["elasti", "cold_request_ms"])?;
    let baseline = median(c, &["baseline_scale_patch", "patch_to_ready_ms"])?;
    let rest = (total - created - start - answered).max(0.0);
    Some(Panel {
        title: "Cold request, median".into(),
        unit: "ms",
        bars: vec![
            Bar {
                label: "through elasti".into(),
                segments: vec![
                    (created, COLOURS[0], "request → pod created".into()),
                    (start, COLOURS[1], "pod start → Ready".into()),
                    (answered, COLOURS[2], "Ready → answered".into()),
                    (rest, COLOURS[3], "other".into()),
                ],
            },
            Bar {
                label: "/scale patched straight → Ready".into(),
                segments: vec![(baseline, "#9c9c9c", "baseline".into())],
            },
        ],
    })
}

/// req/s through the agent, nginx and straight to the backend, per client mode.
fn proxies(results: &Value) -> Option<Panel> {
    let p = results.get("proxy_in_path")?;
    let nginx = p.get("nginx_version").and_then(Value::as_str).unwrap_or("");
    let mut bars = Vec::new();
    for (mode, key) in [
        ("keep-alive", "keep_alive"),
        ("a connection per request", "per_request"),
    ] {
        for (who, path, colour) in [
            ("pod direct", "direct", "#9c9c9c"),
            ("nginx", "nginx", COLOURS[1]),
            ("elasti agent", "agent", COLOURS[0]),
        ] {
            let rps = median(p, &[key, path, "req_s"])?;
            let who = if path == "nginx" {
                format!("nginx {nginx}")
            } else {
                who.to_string()
            };
            bars.push(Bar {
                label: format!("{who}, {mode}"),
                segments: vec![(rps, colour, String::new())],
            });
        }
    }
    Some(Panel {
        title: "HTTP/1.1 through a proxy, pods Ready (wrk c=32), median".into(),
        unit: "req/s",
        bars,
    })
}

/// The SVG, or `None` when neither figure is in the results.
pub fn render(results: Option<&Value>, cluster: Option<&Value>) -> Option<String> {
    let panels: Vec<Panel> = [cluster.and_then(cold_start), results.and_then(proxies)]
        .into_iter()
        .flatten()
        .collect();
    if panels.is_empty() {
        return None;
    }
    let mut body = String::new();
    let mut y = 10.0;
    for panel in &panels {
        let max = panel
            .bars
            .iter()
            .map(|b| b.segments.iter().map(|s| s.0).sum::<f64>())
            .fold(0.0, f64::max)
            .max(1.0);
        let scale = (WIDTH - LABEL_W - 90.0) / max;
        y += 18.0;
        let _ = writeln!(
            body,
            r#"<text x="10" y="{y}" font-weight="bold">{}</text>"#,
            escape(&panel.title)
        );
        y += GAP;
        let mut legend: Vec<(&str, &str)> = Vec::new();
        for bar in &panel.bars {
            let _ = writeln!(
                body,
                r#"<text x="10" y="{}">{}</text>"#,
                y + BAR_H * 0.7,
                escape(&bar.label)
            );
            let mut x = LABEL_W;
            for (value, colour, name) in &bar.segments {
                let w = value * scale;
                let _ = writeln!(
                    body,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{BAR_H}" fill="{colour}"><title>{}: {value:.1} {}</title></rect>"#,
                    escape(if name.is_empty() { &bar.label } else { name }),
                    panel.unit
                );
                x += w;
                if !name.is_empty() && !legend.iter().any(|(n, _)| n == name) {
                    legend.push((name.as_str(), colour));
                }
            }
            let total: f64 = bar.segments.iter().map(|s| s.0).sum();
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{}">{} {}</text>"#,
                x + 6.0,
                y + BAR_H * 0.7,
                thousands(total),
                panel.unit
            );
            y += BAR_H + GAP;
        }
        let mut x = LABEL_W;
        for (name, colour) in legend {
            let _ = writeln!(
                body,
                r#"<rect x="{x:.1}" y="{y:.1}" width="12" height="12" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
                x + 16.0,
                y + 10.5,
                escape(name)
            );
            x += 24.0 + 7.0 * name.chars().count() as f64;
        }
        y += 24.0;
    }
    Some(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{:.0}\" font-family=\"sans-serif\" font-size=\"14\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n",
        y + 4.0
    ))
}

/// `71273.4` → `71,273`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(median: f64) -> Value {
        serde_json::json!({"n": 3, "min": median, "p50": median, "p99": median, "max": median})
    }

    #[test]
    fn bars_are_as_long_as_their_figures_and_labelled() {
        let paths = |direct: f64, agent: f64, nginx: f64| {
            serde_json::json!({
                "direct": {"req_s": summary(direct)},
                "agent": {"req_s": summary(agent)},
                "nginx": {"req_s": summary(nginx)},
            })
        };
        let results = serde_json::json!({"proxy_in_path": {
            "nginx_version": "1.22.1",
            "keep_alive": paths(60_000.0, 20_000.0, 30_000.0),
            "per_request": paths(15_000.0, 10_000.0, 12_000.0),
        }});
        let svg = render(Some(&results), None).expect("a chart");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("nginx 1.22.1, keep-alive") && svg.contains("60,000 req/s"));
        // The longest bar spans the plot's width; one a third of it, a third.
        let full = WIDTH - LABEL_W - 90.0;
        assert!(svg.contains(&format!(r#"width="{full:.1}""#)));
        assert!(svg.contains(&format!(r#"width="{:.1}""#, full / 3.0)));
        assert!(
            !svg.contains("Cold request"),
            "no cluster figures, no cold panel"
        );
        assert!(render(None, None).is_none());
    }

    #[test]
    fn the_cold_start_is_split_into_its_parts() {
        let cluster = serde_json::json!({"cold_start": {
            "elasti": {
                "cold_request_ms": summary(900.0),
                "request_to_pod_created_ms": summary(25.0),
                "pod_start_to_ready_ms": summary(820.0),
                "ready_to_answered_ms": summary(3.0),
            },
            "baseline_scale_patch": {"patch_to_ready_ms": summary(850.0)},
        }});
        let svg = render(None, Some(&cluster)).expect("a chart");
        for part in [
            "request → pod created: 25.0 ms",
            "pod start → Ready: 820.0 ms",
            "Ready → answered: 3.0 ms",
            "other: 52.0 ms",
            "baseline: 850.0 ms",
        ] {
            assert!(svg.contains(part), "{part} in {svg}");
        }
    }
}
