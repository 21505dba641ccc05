//! Holding at scale, in-process with the real listener, hold queue and forwarders: many
//! connections held at once (clients in a child process, so the agent side's memory is
//! measured alone), then released onto a real backend; and the hand-off latency from
//! "endpoint Ready" to "first held request reaches the pod", against a direct connect.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use elasti_agent::{
    hold::{Budget, Endpoints, HeldService, ServiceId, admission::Limits},
    listen::{Caps, Context as ListenContext, Host, ProxyListener, bind_reuseport},
    metrics::Metrics,
};
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};

use elasti_testbed::stats::{Summary, summarize};

pub struct Proxy {
    pub addr: SocketAddr,
    pub service: Arc<HeldService>,
    pub endpoints: watch::Sender<Endpoints>,
    _listener: ProxyListener,
}

/// The agent's listener, hold queue and forwarders for one service on a loopback port.
pub fn proxy(max_held: usize) -> Result<Proxy> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let (tx, rx) = watch::channel(Endpoints::from(Vec::new()));
    let id = ServiceId {
        namespace: "bench".into(),
        name: "svc".into(),
        port: 80,
    };
    let limits = Limits {
        max_held,
        deadline: Duration::from_secs(600),
    };
    let service = Arc::new(HeldService::new(
        id.clone(),
        rx,
        limits,
        Arc::new(Budget::default()),
        Arc::new(|| {}),
        metrics.held_gauge(&id),
    ));
    let listener = bind_reuseport("127.0.0.1:0".parse()?)?;
    let proxy_port = listener.local_addr()?.port();
    let ctx = ListenContext {
        service: service.clone(),
        metrics,
        host: Host::Standalone {
            listen_address: "127.0.0.1".parse()?,
        },
        proxy_port,
    };
    let caps = Caps {
        per_listener: max_held * 2,
        node: Arc::new(tokio::sync::Semaphore::new(max_held * 2)),
    };
    let listener = ProxyListener::spawn(listener, ctx, &caps)?;
    Ok(Proxy {
        addr: listener.local_addr(),
        service,
        endpoints: tx,
        _listener: listener,
    })
}

/// A line-echo backend that reports the instant of every accept.
async fn echo_backend() -> Result<(SocketAddr, mpsc::UnboundedReceiver<Instant>)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = tx.send(Instant::now());
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok((addr, rx))
}

fn bind_deep(addr: SocketAddr) -> Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(65_535)?;
    s.set_nonblocking(true)?;
    Ok(TcpListener::from_std(s.into())?)
}

/// This process's resident memory, bytes.
fn rss_bytes() -> Result<u64> {
    elasti_testbed::procs::rss_bytes(&[elasti_testbed::procs::proc_dir(std::process::id())])
}

/// One round of [`capacity`], measured in a process of its own (`capacity-round`): memory
/// freed by an earlier round would otherwise be reused and hide what holding costs.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Round {
    /// Agent-side resident memory per held connection/request, bytes.
    pub bytes_per_held: f64,
    /// From publishing the Ready endpoint to the first client having its answer, ms.
    pub first_ms: f64,
    /// … to every client having its answer, ms.
    pub all_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Capacity {
    pub protocol: &'static str,
    pub held: usize,
    /// Agent-side resident memory per held connection/request, bytes, one sample per round.
    pub bytes_per_held: Summary,
    /// Endpoint published → the first held one answered, ms.
    pub first_answer_ms: Summary,
    /// Endpoint published → every held one answered, ms.
    pub all_answered_ms: Summary,
}

/// `rounds` rounds of holding `n` at once (`http`: one GET each; else one line each), each
/// in a fresh `capacity-round` child.
pub fn capacity(n: usize, http: bool, rounds: usize) -> Result<Capacity> {
    let protocol = if http { "http" } else { "tcp" };
    let mut all = Vec::new();
    for _ in 0..rounds {
        let out = Command::new(std::env::current_exe()?)
            .args(["capacity-round", protocol, &n.to_string()])
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("capacity-round {protocol} {n}: {}", out.status);
        }
        let round: Round = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("capacity-round: {}", String::from_utf8_lossy(&out.stdout)))?;
        all.push(round);
    }
    let col = |f: fn(&Round) -> f64| summarize(&all.iter().map(f).collect::<Vec<_>>());
    Ok(Capacity {
        protocol,
        held: n,
        bytes_per_held: col(|r| r.bytes_per_held),
        first_answer_ms: col(|r| r.first_ms),
        all_answered_ms: col(|r| r.all_ms),
    })
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for this process and its children.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// One round of [`capacity`]: holds `n` connections from a `hold-clients` child, then
/// releases them onto a `backend` child. This process holds only the agent's sockets, as
/// the agent would.
pub async fn capacity_round(n: usize, http: bool) -> Result<Round> {
    let p = proxy(n)?;
    let protocol = if http { "http" } else { "tcp" };
    let (mut backend_child, backend) = spawn_backend(protocol)?;
    let before = rss_bytes()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "hold-clients",
            &p.addr.to_string(),
            &n.to_string(),
            protocol,
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    while p.service.held() < n {
        if Instant::now() > deadline {
            bail!("only {} of {n} held", p.service.held());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let allocations settle before reading RSS.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_bytes()?;
    let released = monotonic_ns();
    p.endpoints.send_replace(Endpoints::from(vec![backend]));
    let done = tokio::task::spawn_blocking(move || {
        lines.find_map(|l| l.ok().and_then(|l| Answered::parse(&l)))
    })
    .await?;
    let _ = child.wait();
    let _ = backend_child.kill();
    let _ = backend_child.wait();
    let done = done.context("hold-clients did not report all answers")?;
    let ms = |t: u64| t.saturating_sub(released) as f64 / 1e6;
    Ok(Round {
        bytes_per_held: after.saturating_sub(before) as f64 / n as f64,
        first_ms: ms(done.first_ns),
        all_ms: ms(done.last_ns),
    })
}

/// What `hold-clients` reports once every answer is in: the first and the last answer's
/// [`monotonic_ns`].
struct Answered {
    first_ns: u64,
    last_ns: u64,
}

impl Answered {
    fn line(&self) -> String {
        format!("answered first={} last={}", self.first_ns, self.last_ns)
    }

    fn parse(line: &str) -> Option<Self> {
        let mut words = line.strip_prefix("answered ")?.split(' ');
        let mut field = |name: &str| words.next()?.strip_prefix(name)?.parse().ok();
        Some(Self {
            first_ns: field("first=")?,
            last_ns: field("last=")?,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Handoff {
    /// Endpoint published → the held connection's first byte reaches the pod, µs.
    pub held_us: Summary,
    /// Baseline: a client connecting straight to the pod, connect → accept, µs.
    pub direct_us: Summary,
}

/// `wakes` cold periods: one held connection each, released by publishing the endpoint.
pub async fn handoff(wakes: usize) -> Result<Handoff> {
    let p = proxy(16)?;
    let (backend, mut accepts) = echo_backend().await?;
    let (mut held, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..wakes {
        p.endpoints.send_replace(Endpoints::from(Vec::new()));
        let mut c = TcpStream::connect(p.addr).await?;
        c.write_all(b"x\n").await?;
        while p.service.held() < 1 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let t0 = Instant::now();
        p.endpoints.send_replace(Endpoints::from(vec![backend]));
        let accepted = accepts.recv().await.context("backend accept")?;
        held.push(accepted.duration_since(t0).as_secs_f64() * 1e6);
        drop(c);

        let t0 = Instant::now();
        let d = TcpStream::connect(backend).await?;
        let accepted = accepts.recv().await.context("backend accept")?;
        direct.push(accepted.duration_since(t0).as_secs_f64() * 1e6);
        drop(d);
    }
    Ok(Handoff {
        held_us: summarize(&held),
        direct_us: summarize(&direct),
    })
}

/// Starts the [`backend`] child for `protocol`; its address.
pub fn spawn_backend(protocol: &str) -> Result<(std::process::Child, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["backend", protocol])
        .stdout(Stdio::piped())
        .spawn()?;
    let addr = BufReader::new(child.stdout.take().context("backend stdout")?)
        .lines()
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| l.strip_prefix("addr=").and_then(|a| a.parse().ok()));
    match addr {
        Some(addr) => Ok((child, addr)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the {protocol} backend did not say its address")
        }
    }
}

/// The backend child of [`capacity`], [`super::throughput`] and [`super::proxy_in_path`]:
/// serves the HTTP workload, a line echo or a sink on a free loopback port, printing
/// `addr=…` first.
pub async fn backend(protocol: &str) -> Result<()> {
    // A listen backlog of `somaxconn` (4096 here), as Go servers get. With tokio's 1024
    // this backend, sharing two cores with 10,000 clients and the agent, does not accept
    // fast enough: its accept queue overflows and the kernel's 1 s SYN-ACK retransmit
    // triples the drain. That is the backend's limit, not the agent's.
    let l = bind_deep("127.0.0.1:0".parse()?)?;
    println!("addr={}", l.local_addr()?);
    match protocol {
        "http" => elasti_workloads::http::serve(l, "bench".into()).await?,
        "sink" => super::throughput::sink(l).await?,
        _ => elasti_workloads::tcp_echo::serve(l, "bench".into()).await?,
    }
    Ok(())
}

/// The child side of [`capacity`]: opens `n` connections, sends one request on each,
/// reports when the first and the last answer came ([`Answered`]).
pub async fn hold_clients(addr: SocketAddr, n: usize, http: bool) -> Result<()> {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            if http {
                s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    .await?;
            } else {
                s.write_all(format!("hello {i}\n").as_bytes()).await?;
            }
            let mut line = String::new();
            tokio::io::BufReader::new(s).read_line(&mut line).await?;
            let at = monotonic_ns();
            anyhow::ensure!(!line.is_empty(), "connection closed without an answer");
            Ok::<_, anyhow::Error>(at)
        }));
    }
    let (mut first, mut last) = (u64::MAX, 0);
    for t in tasks {
        let at = t.await??;
        first = first.min(at);
        last = last.max(at);
    }
    println!(
        "{}",
        Answered {
            first_ns: first,
            last_ns: last
        }
        .line()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answered_line_round_trips() {
        let a = Answered {
            first_ns: 12,
            last_ns: 345,
        };
        let b = Answered::parse(&a.line()).unwrap_or_else(|| panic!("{}", a.line()));
        assert_eq!((b.first_ns, b.last_ns), (12, 345));
        assert!(Answered::parse("answered").is_none());
    }
}
