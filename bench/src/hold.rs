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

struct Proxy {
    addr: SocketAddr,
    service: Arc<HeldService>,
    endpoints: watch::Sender<Endpoints>,
    _listener: ProxyListener,
}

fn proxy(max_held: usize) -> Result<Proxy> {
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

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Debug, Serialize)]
pub struct Capacity {
    pub protocol: &'static str,
    pub held: usize,
    /// Agent-side resident memory per held connection/request, bytes.
    pub bytes_per_held: f64,
    /// From publishing the Ready endpoint to every client having its answer, ms.
    pub drain_ms: f64,
}

/// Holds `n` connections (`http`: one GET each; else one line each), then releases them.
/// Clients and the backend run in child processes: this process holds only the agent's
/// two sockets per connection, as the agent would.
pub async fn capacity(n: usize, http: bool) -> Result<Capacity> {
    let p = proxy(n)?;
    let protocol = if http { "http" } else { "tcp" };
    let mut backend_child = Command::new(std::env::current_exe()?)
        .args(["backend", protocol])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut backend_out =
        BufReader::new(backend_child.stdout.take().context("backend stdout")?).lines();
    let backend: SocketAddr = backend_out
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| l.strip_prefix("addr=").and_then(|a| a.parse().ok()))
        .context("backend address")?;
    let before = rss_kib();
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "hold-clients",
            &p.addr.to_string(),
            &n.to_string(),
            if http { "http" } else { "tcp" },
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
    let after = rss_kib();
    let released = Instant::now();
    p.endpoints.send_replace(Endpoints::from(vec![backend]));
    let done = tokio::task::spawn_blocking(move || {
        lines.find(|l| l.as_deref().is_ok_and(|l| l.starts_with("answered")))
    })
    .await?;
    let drain_ms = released.elapsed().as_secs_f64() * 1e3;
    let _ = child.wait();
    let _ = backend_child.kill();
    let _ = backend_child.wait();
    if done.is_none() {
        bail!("hold-clients did not report all answers");
    }
    Ok(Capacity {
        protocol: if http { "http" } else { "tcp" },
        held: n,
        bytes_per_held: (after.saturating_sub(before) * 1024) as f64 / n as f64,
        drain_ms,
    })
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

/// The backend child of [`capacity`]: serves the HTTP workload or a line echo on a free
/// loopback port, printing `addr=…` first.
pub async fn backend(http: bool) -> Result<()> {
    // A listen backlog of `somaxconn` (4096 here), as Go servers get. With tokio's 1024
    // this backend, sharing two cores with 10,000 clients and the agent, does not accept
    // fast enough: its accept queue overflows and the kernel's 1 s SYN-ACK retransmit
    // triples the drain. That is the backend's limit, not the agent's.
    let l = bind_deep("127.0.0.1:0".parse()?)?;
    println!("addr={}", l.local_addr()?);
    if http {
        elasti_workloads::http::serve(l, "bench".into()).await?;
    } else {
        elasti_workloads::tcp_echo::serve(l, "bench".into()).await?;
    }
    Ok(())
}

/// The child side of [`capacity`]: opens `n` connections, sends one request on each,
/// prints `answered` once every one has its answer.
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
            anyhow::ensure!(!line.is_empty(), "connection closed without an answer");
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!("answered");
    Ok(())
}
