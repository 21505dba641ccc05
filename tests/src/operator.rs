//! The operator, run in-process against the cluster's real apiserver, and a stand-in
//! Prometheus that speaks the query API.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Parser;

use crate::kubectl;

/// An operator running on its own runtime thread. Dropping it stops it gracefully (the
/// Lease is released); [`RunningOperator::kill`] stops it as a crash would.
pub struct RunningOperator {
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub wake_address: SocketAddr,
    pub admin_address: SocketAddr,
}

/// A free loopback port (bound and released; the operator binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl RunningOperator {
    /// Starts `elasti-operator` with `args` (after the program name) plus its own wake and
    /// admin addresses on loopback.
    pub fn start(args: &[&str]) -> Self {
        crate::capture_logs();
        let wake_address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin_address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut argv = vec![
            "elasti-operator".to_string(),
            format!("--wake-address={wake_address}"),
            format!("--admin-address={admin_address}"),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let parsed = elasti_operator::config::Args::parse_from(argv);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<bool>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
            let (graceful_tx, graceful_rx) = tokio::sync::oneshot::channel::<()>();
            rt.block_on(async move {
                let run = elasti_operator::run::run_until(parsed, async move {
                    let _ = graceful_rx.await;
                });
                tokio::pin!(run);
                tokio::select! {
                    r = &mut run => {
                        if let Err(e) = r { eprintln!("operator stopped: {e}"); }
                    }
                    kill = stop_rx => {
                        if kill.unwrap_or(false) {
                            // A crash: drop everything, release nothing.
                            return;
                        }
                        let _ = graceful_tx.send(());
                        let _ = run.await;
                    }
                }
            });
            rt.shutdown_background();
        });
        let me = Self {
            stop: Some(stop),
            thread: Some(thread),
            wake_address,
            admin_address,
        };
        crate::wait_until("operator synced", Duration::from_secs(30), || {
            crate::get_from_netns(
                &admin_address.to_string(),
                "/readyz",
                Duration::from_secs(2),
            )
            .ok()
            .filter(|r| r.starts_with("HTTP/1.1 200"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        me
    }

    /// Stops the operator as a crash would: no Lease release, nothing finished.
    pub fn kill(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The text of its /metrics.
    pub fn metrics(&self) -> String {
        crate::get_from_netns(
            &self.admin_address.to_string(),
            "/metrics",
            Duration::from_secs(2),
        )
        .unwrap_or_default()
    }

    /// `POST /v1/wake` with `token` (if any) and `body`: the status code and body.
    pub fn wake(&self, token: Option<&str>, body: &str) -> Result<(u16, String)> {
        post(self.wake_address, "/v1/wake", token, body)
    }

    /// `POST /v1/wake` for `namespace/service` with `token`: the status code.
    pub fn wake_service(&self, token: &str, namespace: &str, service: &str) -> Result<u16> {
        let body = serde_json::json!({"namespace": namespace, "service": service}).to_string();
        Ok(self.wake(Some(token), &body)?.0)
    }

    /// `POST /v1/report` of `report` with `token`: the status code.
    pub fn report(&self, token: &str, report: &elasti_api::report::AgentReport) -> Result<u16> {
        let body = serde_json::to_string(report)?;
        Ok(post(
            self.wake_address,
            elasti_api::report::PATH,
            Some(token),
            &body,
        )?
        .0)
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(false);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A plain HTTP/1.1 POST from this process.
pub fn post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    Ok((code, resp))
}

/// Removes the finalizers of every ElastiService in `namespace`, so a namespace whose
/// operator is gone can still be deleted.
pub fn strip_finalizers(namespace: &str) {
    let names =
        kubectl(&["-n", namespace, "get", "elastiservices", "-o", "name"]).unwrap_or_default();
    for name in names.lines().filter(|l| !l.is_empty()) {
        let _ = kubectl(&[
            "-n",
            namespace,
            "patch",
            name,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
    }
}

/// What the stand-in Prometheus answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PromAnswer {
    /// Every query returns this one value; `up{…}` returns 1.
    Value(f64),
    /// Connections are closed unanswered, as when Prometheus is down.
    Down,
}

/// A stand-in Prometheus speaking `GET /api/v1/query`, on loopback.
pub struct FakePrometheus {
    pub address: SocketAddr,
    answer: Arc<Mutex<PromAnswer>>,
    /// Queries received, in order.
    pub queries: Arc<Mutex<Vec<String>>>,
}

impl FakePrometheus {
    /// On loopback: for an operator in this process.
    pub fn start(answer: PromAnswer) -> Self {
        Self::start_on("127.0.0.1:0", answer)
    }

    /// On `bind` (`0.0.0.0:0`: every address of this network namespace, where the
    /// operator pods reach it at this node's IP).
    pub fn start_on(bind: &str, answer: PromAnswer) -> Self {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let answer = Arc::new(Mutex::new(answer));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let (a, q) = (answer.clone(), queries.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let current = a.lock().map(|a| *a).unwrap_or(PromAnswer::Down);
                let PromAnswer::Value(value) = current else {
                    drop(stream);
                    continue;
                };
                let mut buf = [0u8; 8192];
                let n = stream.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                let query = target
                    .split_once('?')
                    .and_then(|(_, qs)| {
                        form_urlencoded::parse(qs.as_bytes())
                            .find(|(k, _)| k == "query")
                            .map(|(_, v)| v.into_owned())
                    })
                    .unwrap_or_default();
                if let Ok(mut q) = q.lock() {
                    q.push(query.clone());
                }
                let v = if query.starts_with("up{") { 1.0 } else { value };
                let body = format!(
                    r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1700000000.0,"{v}"]}}]}}}}"#
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            address,
            answer,
            queries,
        }
    }

    pub fn set(&self, answer: PromAnswer) {
        if let Ok(mut a) = self.answer.lock() {
            *a = answer;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Its URL at `ip` (the port it listens on).
    pub fn url_at(&self, ip: &str) -> String {
        format!("http://{ip}:{}", self.address.port())
    }
}

/// Creates ServiceAccount `elasti-agent` in `namespace` (the agents' own, for an operator
/// started with `--agent-namespace=<namespace>`) and returns a token of it with the wake
/// audience, as the agents' projected token has.
pub fn agent_token(namespace: &str) -> Result<String> {
    let _ = kubectl(&["-n", namespace, "create", "serviceaccount", "elasti-agent"]);
    Ok(kubectl(&[
        "-n",
        namespace,
        "create",
        "token",
        "elasti-agent",
        "--audience",
        elasti_api::wake::AUDIENCE,
    ])?
    .trim()
    .to_string())
}

/// The chart's operator (if an e2e run left elasti installed) scaled to zero, so it does
/// not reconcile the suite's ElastiServices beside the one under test. The scenarios'
/// `helm upgrade --install` scales it back.
pub fn quiet_chart_operator() {
    let ns = elasti_testbed::elasti::NAMESPACE;
    if kubectl(&["-n", ns, "get", "deployment", "elasti-operator"]).is_ok() {
        let _ = kubectl(&[
            "-n",
            ns,
            "scale",
            "deployment/elasti-operator",
            "--replicas=0",
        ]);
        let _ = crate::wait_until("the chart's operator gone", Duration::from_secs(60), || {
            kubectl(&[
                "-n",
                ns,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=elasti-operator",
                "-o",
                "name",
            ])
            .ok()
            .filter(|out| out.trim().is_empty())
        });
    }
}

/// An HTTP server that answers every request with `200 OK` and a body of `len` bytes of
/// `A` (a Prometheus that never ends talking), counting what it managed to send.
pub struct HostileServer {
    pub address: SocketAddr,
    pub sent: Arc<std::sync::atomic::AtomicU64>,
}

impl HostileServer {
    pub fn start_on(bind: &str, len: u64) -> Self {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    let _ = stream.read(&mut buf);
                    let head = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"x":""#;
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
                        head.len() as u64 + len
                    );
                    let chunk = vec![b'A'; 1 << 20];
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(chunk.len() as u64) as usize;
                        if stream.write_all(&chunk[..n]).is_err() {
                            return;
                        }
                        counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        left -= n as u64;
                    }
                });
            }
        });
        Self { address, sent }
    }

    /// Its URL at `ip`.
    pub fn url_at(&self, ip: &str) -> String {
        format!("http://{ip}:{}", self.address.port())
    }
}
