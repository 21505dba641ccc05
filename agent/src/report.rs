//! `POST /v1/report` (`elasti_api::report`): this agent's connection counts for Services
//! with an `activity` trigger, and which Services it intercepts now (the operator patches
//! a scale-down's `/scale` only once every agent does). [`due`] decides when to send
//! (pure); [`Reporter`] sends, one request at a time.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use elasti_api::report::{
    AgentReport, HEARTBEAT, MAX_SERVICES, PATH, REPORT_INTERVAL, ServiceReport,
};
use hyper::StatusCode;

use crate::operator::OperatorClient;

/// How long one report may take; the next one is due a second later anyway.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times a report a non-leading operator refused is sent again at once.
const REFUSED_RETRIES: usize = 8;

/// What this agent would report now, per Service (namespace, name).
pub type Snapshot = BTreeMap<(String, String), ServiceReport>;

/// The last report the operator accepted, and the last attempt.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    pub accepted: Option<(Instant, Snapshot)>,
    pub attempted: Option<Instant>,
}

/// Whether a report is due at `now`:
/// - the intercepted set changed since the last accepted report: at once (a scale-down
///   waits for it), but not more than once per [`REPORT_INTERVAL`] while attempts fail;
/// - counts changed: at most once per [`REPORT_INTERVAL`];
/// - something to report and nothing accepted for a [`HEARTBEAT`]: again, so the operator
///   knows the agent still counts.
pub fn due(sent: &Sent, now_snapshot: &Snapshot, now: Instant) -> bool {
    let retry_ok = sent
        .attempted
        .is_none_or(|at| now.duration_since(at) >= REPORT_INTERVAL);
    let Some((at, last)) = &sent.accepted else {
        return !now_snapshot.is_empty() && retry_ok;
    };
    let since = now.duration_since(*at);
    let intercepting = |s: &Snapshot| -> Vec<(String, String)> {
        s.iter()
            .filter(|(_, r)| r.intercepting)
            .map(|(k, _)| k.clone())
            .collect()
    };
    if intercepting(last) != intercepting(now_snapshot) {
        let failed_just_now = sent.attempted.is_some_and(|a| a > *at) && !retry_ok;
        return !failed_just_now;
    }
    if last != now_snapshot {
        return since >= REPORT_INTERVAL && retry_ok;
    }
    !now_snapshot.is_empty() && since >= HEARTBEAT && retry_ok
}

/// Sends reports, one at a time.
pub struct Reporter {
    client: OperatorClient,
    node: String,
    incarnation: String,
    state: Mutex<(Sent, bool)>,
}

impl Reporter {
    pub fn new(client: OperatorClient, node: String, incarnation: String) -> Arc<Self> {
        Arc::new(Self {
            client,
            node,
            incarnation,
            state: Mutex::new((Sent::default(), false)),
        })
    }

    /// Sends `snapshot` if a report is due and none is under way.
    pub fn offer(self: &Arc<Self>, snapshot: Snapshot, now: Instant) {
        {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            let (sent, in_flight) = &mut *state;
            if *in_flight || !due(sent, &snapshot, now) {
                return;
            }
            *in_flight = true;
            sent.attempted = Some(now);
        }
        let this = self.clone();
        tokio::spawn(async move {
            let report = AgentReport {
                node: this.node.clone(),
                incarnation: this.incarnation.clone(),
                services: snapshot.values().take(MAX_SERVICES).cloned().collect(),
            };
            // A non-leading replica refuses (503, connection closed); the operator's Service
            // picks a replica per connection, so sending again at once soon reaches the
            // leader. Waiting a second each time would let a scale-down's intercept timeout
            // pass for this node (two replicas: 1 in 32 of them, measured in the demo).
            let mut answer = this.client.post(PATH, &report, REQUEST_TIMEOUT).await;
            for _ in 0..REFUSED_RETRIES {
                if !matches!(answer, Ok(StatusCode::SERVICE_UNAVAILABLE)) {
                    break;
                }
                answer = this.client.post(PATH, &report, REQUEST_TIMEOUT).await;
            }
            let accepted = matches!(answer, Ok(s) if s.is_success());
            match &answer {
                Ok(s) if s.is_success() => {
                    tracing::debug!(services = report.services.len(), "report accepted")
                }
                Ok(StatusCode::SERVICE_UNAVAILABLE) => {
                    tracing::debug!("report refused by a non-leading operator; sent again")
                }
                Ok(status) => {
                    tracing::warn!(%status, "report not accepted; sent again in a second")
                }
                Err(e) => {
                    tracing::warn!(error = %elasti_runtime::DisplayChain(e), "report not sent; sent again in a second")
                }
            }
            if let Ok(mut state) = this.state.lock() {
                let (sent, in_flight) = &mut *state;
                *in_flight = false;
                if accepted {
                    sent.accepted = Some((Instant::now(), snapshot));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for two operator replicas behind a Service: the first `refusals`
    /// connections get the non-leader's 503 and are closed, then 200. Returns the URL and
    /// the count of requests seen.
    async fn operators(refusals: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "http://{}",
            l.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = vec![0u8; 64 << 10];
                let _ = s.read(&mut buf).await;
                let answer: &[u8] = if n < refusals {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn a_report_refused_by_non_leaders_is_sent_again_at_once() {
        let (url, seen) = operators(3).await;
        let token =
            std::env::temp_dir().join(format!("elasti-report-token-{}", std::process::id()));
        std::fs::write(&token, "t").unwrap_or_else(|e| panic!("{e}"));
        let reporter = Reporter::new(
            OperatorClient::new(crate::operator::Config {
                operator_url: url,
                token_path: token.clone(),
            }),
            "n1".into(),
            "i1".into(),
        );
        reporter.offer(snapshot(&[("web", 0, 0, true)]), Instant::now());
        let accepted = tokio::time::timeout(Duration::from_millis(800), async {
            loop {
                let done = reporter
                    .state
                    .lock()
                    .map(|s| s.0.accepted.is_some())
                    .unwrap_or(false);
                if done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let _ = std::fs::remove_file(&token);
        assert!(
            accepted.is_ok(),
            "not accepted within 800 ms; requests seen: {}",
            seen.load(std::sync::atomic::Ordering::SeqCst)
        );
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    fn snapshot(entries: &[(&str, u64, u64, bool)]) -> Snapshot {
        entries
            .iter()
            .map(|(name, connects, open, intercepting)| {
                (
                    ("ns".to_string(), name.to_string()),
                    ServiceReport {
                        namespace: "ns".into(),
                        service: name.to_string(),
                        connects: *connects,
                        open: *open,
                        intercepting: *intercepting,
                    },
                )
            })
            .collect()
    }

    fn accepted(at: Instant, s: Snapshot) -> Sent {
        Sent {
            accepted: Some((at, s)),
            attempted: Some(at),
        }
    }

    #[test]
    fn nothing_to_say_is_not_said_and_the_first_counts_are_sent_at_once() {
        let t0 = Instant::now();
        assert!(!due(&Sent::default(), &Snapshot::new(), t0));
        assert!(due(
            &Sent::default(),
            &snapshot(&[("web", 0, 0, false)]),
            t0
        ));
    }

    #[test]
    fn a_change_of_interception_is_sent_at_once_counts_once_a_second() {
        let t0 = Instant::now();
        let sent = accepted(t0, snapshot(&[("web", 1, 0, false)]));
        let ms = Duration::from_millis;
        assert!(
            due(&sent, &snapshot(&[("web", 1, 0, true)]), t0 + ms(5)),
            "intercepting now: at once"
        );
        assert!(!due(
            &sent,
            &snapshot(&[("web", 2, 1, false)]),
            t0 + ms(500)
        ));
        assert!(due(
            &sent,
            &snapshot(&[("web", 2, 1, false)]),
            t0 + REPORT_INTERVAL
        ));
    }

    #[test]
    fn unchanged_counts_are_sent_again_each_heartbeat_while_there_is_something() {
        let t0 = Instant::now();
        let s = snapshot(&[("web", 3, 1, false)]);
        let sent = accepted(t0, s.clone());
        assert!(!due(&sent, &s, t0 + HEARTBEAT / 2));
        assert!(due(&sent, &s, t0 + HEARTBEAT));
        assert!(
            due(&sent, &Snapshot::new(), t0 + REPORT_INTERVAL),
            "the last service gone is news too"
        );
    }

    #[test]
    fn failed_attempts_are_retried_once_a_second_not_in_a_loop() {
        let t0 = Instant::now();
        let s = snapshot(&[("web", 0, 0, true)]);
        let failing = Sent {
            accepted: Some((t0, snapshot(&[("web", 0, 0, false)]))),
            attempted: Some(t0 + Duration::from_millis(10)),
        };
        assert!(!due(&failing, &s, t0 + Duration::from_millis(20)));
        assert!(due(
            &failing,
            &s,
            t0 + Duration::from_millis(10) + REPORT_INTERVAL
        ));
        let never = Sent {
            accepted: None,
            attempted: Some(t0),
        };
        assert!(!due(&never, &s, t0 + Duration::from_millis(5)));
        assert!(due(&never, &s, t0 + REPORT_INTERVAL));
    }
}
