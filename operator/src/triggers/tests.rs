//! Triggers against stand-in servers on loopback, and the pure readings.
use std::{
    sync::{Arc, atomic::AtomicUsize, atomic::Ordering},
    time::Duration,
};

use elasti_api::{PrometheusTrigger, ScaleTrigger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{prometheus::*, *};

#[test]
fn vector_and_scalar_answers_parse() {
    let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.25"]}]}}"#;
    assert_eq!(parse_samples(vector), Ok(vec![0.25]));
    let scalar =
        br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"3"]}}"#;
    assert_eq!(parse_samples(scalar), Ok(vec![3.0]));
}

#[test]
fn errors_are_explained_in_elastis_words() {
    let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
    let err = parse_samples(bad).err().unwrap_or_default();
    assert!(
        err.contains("bad_data") && !err.contains("parse error"),
        "{err}"
    );
    let odd = br#"{"status":"error","errorType":"<b>click me</b>","error":"x"}"#;
    let err = parse_samples(odd).err().unwrap_or_default();
    assert!(!err.contains("click"), "{err}");
    assert!(parse_samples(b"<html>").is_err());
    assert!(single_value(&[]).is_err());
    assert!(single_value(&[1.0, 2.0]).is_err());
    assert_eq!(single_value(&[2.0]), Ok(2.0));
}

#[test]
fn health_needs_every_up_series_at_one() {
    assert!(healthy(&[1.0, 1.0]));
    assert!(!healthy(&[1.0, 0.0]));
    assert!(!healthy(&[]));
}

#[test]
fn activity_reads_idle_only_after_a_whole_cooldown() {
    let cooldown = Duration::from_secs(60);
    assert_eq!(
        from_activity(Activity::Quiet(Duration::from_secs(60)), cooldown),
        Idleness::Idle
    );
    assert!(matches!(
        from_activity(Activity::Quiet(Duration::from_secs(45)), cooldown),
        Idleness::Recent { recheck, .. } if recheck == Duration::from_secs(15)
    ));
    assert!(matches!(
        from_activity(Activity::Open(vec!["n1".into()]), cooldown),
        Idleness::Busy { .. }
    ));
    assert!(matches!(
        from_activity(Activity::Unknown("silent".into()), cooldown),
        Idleness::Unknown { .. }
    ));
}

/// A Prometheus stand-in on loopback that answers every request with `head`, then
/// `filler` bytes of `b'A'`, then `tail`; it counts the filler bytes it managed to send.
async fn hostile(
    head: &'static str,
    filler: usize,
    tail: &'static str,
) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let len = head.len() + filler + tail.len();
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{head}"
                );
                if s.write_all(header.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'A'; 1 << 20];
                let mut left = filler;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if s.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    counter.fetch_add(n, Ordering::Relaxed);
                    left -= n;
                }
                let _ = s.write_all(tail.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}"), sent)
}

fn trigger(url: &str) -> PrometheusTrigger {
    PrometheusTrigger {
        server_address: url.into(),
        query: "sum(rate(x[1m]))".into(),
        threshold: "0.5".into(),
        uptime_filter: None,
        headers: None,
        headers_from_secret: None,
    }
}

fn prometheus(timeout: Duration, allowed: &[&str]) -> Prometheus {
    Prometheus::new(Settings {
        timeout,
        ca_bundle: None,
        allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn detail(p: &Prometheus, url: &str) -> String {
    match p.read(&trigger(url), &Default::default()).await {
        Ok(r) => panic!("read {r:?}"),
        Err(e) => DisplayChain(&e).to_string(),
    }
}

/// Issue 14 item 3: a 1 GiB answer is not read whole (the operator's memory is not the
/// server's to fill), and none of it reaches a condition or an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gigabyte_answer_is_cut_short_and_never_copied() {
    let (url, sent) = hostile(r#"{"status":"error","error":""#, 1 << 30, r#""}"#).await;
    let detail = detail(&prometheus(Duration::from_secs(20), &[]), &url).await;
    assert!(detail.len() < 1024, "{} bytes of detail", detail.len());
    assert!(!detail.contains("AAAA"), "answer bytes in the detail");
    assert!(detail.contains("longer than"), "{detail}");
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent < 64 << 20, "{sent} bytes read");
}

/// Issue 14 item 3: what a server says goes nowhere a user reads it as elasti's words.
#[tokio::test]
async fn an_error_text_from_the_server_is_not_copied() {
    let (url, _) = hostile(
        r#"{"status":"error","error":"click http://evil.example"#,
        0,
        r#""}"#,
    )
    .await;
    let detail = detail(&prometheus(Duration::from_secs(5), &[]), &url).await;
    assert!(!detail.contains("evil"), "{detail}");
}

/// Issue 14 item 3: https is a supported scheme (system roots plus a CA bundle).
#[tokio::test]
async fn https_is_tried_not_refused() {
    let detail = detail(
        &prometheus(Duration::from_secs(2), &[]),
        "https://127.0.0.1:1",
    )
    .await;
    assert!(detail.contains("querying https://127.0.0.1:1"), "{detail}");
}

/// Issue 14 item 3: with `--prometheus-allowed-hosts`, any other host is never asked.
#[tokio::test]
async fn only_allowed_hosts_are_asked() {
    let (url, _) = hostile(r#"{"status":"success""#, 0, "}").await;
    let port = url.rsplit(':').next().unwrap_or_default().to_string();
    let p = prometheus(Duration::from_secs(2), &["prometheus.monitoring.svc"]);
    let d = detail(&p, &url).await;
    assert!(
        d.contains("not in the operator's --prometheus-allowed-hosts"),
        "{d}"
    );
    let with_port = format!("127.0.0.1:{port}");
    let p = prometheus(Duration::from_secs(2), &[with_port.as_str()]);
    let d = detail(&p, &url).await;
    assert!(!d.contains("allowed-hosts"), "allowed by host:port: {d}");
    let d = detail(&p, "ftp://127.0.0.1/").await;
    assert!(d.contains("not an http:// or https:// URL"), "{d}");
}

#[tokio::test]
async fn several_triggers_read_into_one_reading() {
    let (url, _) = hostile(
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"#,
        0,
        r#""]}]}}"#,
    )
    .await;
    let mut es = ElastiService::new(
        "web",
        serde_json::from_value(serde_json::json!({
            "service": "web",
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        }))
        .unwrap_or_else(|e| panic!("{e}")),
    );
    es.spec.triggers = vec![
        ScaleTrigger {
            kind: TriggerType::Prometheus,
            metadata: Some(trigger(&url)),
        },
        ScaleTrigger {
            kind: TriggerType::Activity,
            metadata: None,
        },
    ];
    let client = Client::try_from(kube::Config::new(
        "http://127.0.0.1:1"
            .parse()
            .unwrap_or_else(|_| unreachable!()),
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let p = prometheus(Duration::from_secs(2), &[]);
    let r = read(&client, &p, &es, |_| Idleness::Idle).await;
    assert!(matches!(r, Idleness::Busy { .. }), "1 >= 0.5: {r:?}");
}
