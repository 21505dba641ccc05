//! HTTP/1.1 through a proxy in the path, as in the hand-back grace (the pods Ready, the
//! agent still in the path): wrk against the backend direct, through the agent's real
//! listener and forwarder, and through its peer, nginx from Debian as a reverse proxy with
//! upstream keep-alive (what a platform team would otherwise put in front of a service).
//! One backend (a child process), loopback only, the order rotating each round.
//!
//! Two client modes: keep-alive, and a new connection per request. The agent answers
//! every response with `Connection: close` (it leaves the path: the client's next connect
//! goes to the pods, `agent/src/forward/http.rs`), so with a keep-alive client it pays a
//! connection per request where nginx does not; per request, both proxies do the same work.
//!
//! Each run also reads the CPU time the proxy (the agent's runtime, this process; nginx's
//! master and workers) and the backend used, per request: on two cores shared by wrk, the
//! proxy and the backend, that is what the req/s ratio comes down to.
use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use elasti_agent::hold::Endpoints;
use elasti_testbed::{
    procs,
    stats::{Summary, summarize},
    wrk,
};
use serde::Serialize;

/// wrk's connections: what the cluster figures use.
const CONNECTIONS: u32 = 32;
/// nginx's upstream keep-alive pool: every wrk connection can keep one.
const UPSTREAM_KEEPALIVE: u32 = 64;

#[derive(Debug, Serialize)]
pub struct PathFigures {
    /// Requests per second, one sample per round.
    pub req_s: Summary,
    /// wrk's p99 latency per round, ms.
    pub p99_ms: Summary,
    /// The proxy's CPU time (user and system) per request, µs; none when direct.
    pub proxy_cpu_us: Option<Summary>,
    /// The backend's CPU time per request, µs.
    pub backend_cpu_us: Summary,
}

#[derive(Debug, Serialize)]
pub struct Paths {
    pub direct: PathFigures,
    pub agent: PathFigures,
    pub nginx: PathFigures,
}

#[derive(Debug, Serialize)]
pub struct ProxyInPath {
    pub connections: u32,
    pub seconds: u32,
    pub nginx_version: String,
    /// wrk's connections kept alive.
    pub keep_alive: Paths,
    /// `Connection: close` on every request.
    pub per_request: Paths,
}

/// `rounds` rounds of `secs`-second wrk runs on each path.
pub async fn run(nginx: &Path, rounds: usize, secs: u32) -> Result<ProxyInPath> {
    let nginx_version = version(nginx)?;
    let p = super::hold::proxy(1024)?;
    let (mut backend, backend_addr) = super::hold::spawn_backend("http")?;
    p.endpoints
        .send_replace(Endpoints::from(vec![backend_addr]));
    let result = async {
        let peer = Nginx::start(nginx, backend_addr)?;
        let urls = [
            format!("http://{backend_addr}/"),
            format!("http://{}/", p.addr),
            format!("http://{}/", peer.addr),
        ];
        let backend_procs = vec![procs::proc_dir(backend.id())];
        let proxy_procs = [
            None,
            Some(vec![procs::proc_dir(std::process::id())]),
            Some(procs::with_children(peer.child.id())?),
        ];
        // [mode][path]: keep-alive, per request × direct, agent, nginx.
        let mut runs: [[Vec<Run>; 3]; 2] = Default::default();
        for round in 0..rounds {
            for (mode, per_request) in [false, true].into_iter().enumerate() {
                for k in 0..3 {
                    let which = (round + k) % 3;
                    let url = urls[which].clone();
                    let proxy = proxy_procs[which].as_deref();
                    let cpu = |procs: Option<&[PathBuf]>| procs.map(procs::cpu_seconds).transpose();
                    let (proxy_before, backend_before) =
                        (cpu(proxy)?, procs::cpu_seconds(&backend_procs)?);
                    // Off the runtime's threads: the agent's forwarder runs on them.
                    let w = tokio::task::spawn_blocking(move || run_wrk(&url, secs, per_request))
                        .await??;
                    let requests = w.rps * f64::from(secs);
                    let per_request_us =
                        |before: f64, after: f64| (after - before) * 1e6 / requests;
                    let proxy_cpu_us = match (proxy_before, cpu(proxy)?) {
                        (Some(b), Some(a)) => Some(per_request_us(b, a)),
                        _ => None,
                    };
                    let backend_cpu_us =
                        per_request_us(backend_before, procs::cpu_seconds(&backend_procs)?);
                    runs[mode][which].push(Run {
                        wrk: w,
                        proxy_cpu_us,
                        backend_cpu_us,
                    });
                }
            }
        }
        drop(peer);
        Ok::<_, anyhow::Error>(runs)
    }
    .await;
    let _ = backend.kill();
    let _ = backend.wait();
    let [keep_alive, per_request] = result?;
    let figures = |v: &[Run]| {
        let proxy: Vec<f64> = v.iter().filter_map(|r| r.proxy_cpu_us).collect();
        PathFigures {
            req_s: summarize(&v.iter().map(|r| r.wrk.rps).collect::<Vec<_>>()),
            p99_ms: summarize(&v.iter().map(|r| r.wrk.p99_ms).collect::<Vec<_>>()),
            proxy_cpu_us: (!proxy.is_empty()).then(|| summarize(&proxy)),
            backend_cpu_us: summarize(&v.iter().map(|r| r.backend_cpu_us).collect::<Vec<_>>()),
        }
    };
    let paths = |[direct, agent, nginx]: [Vec<Run>; 3]| Paths {
        direct: figures(&direct),
        agent: figures(&agent),
        nginx: figures(&nginx),
    };
    Ok(ProxyInPath {
        connections: CONNECTIONS,
        seconds: secs,
        nginx_version,
        keep_alive: paths(keep_alive),
        per_request: paths(per_request),
    })
}

/// One wrk run on one path, with what the processes in the path spent on it.
struct Run {
    wrk: wrk::Wrk,
    proxy_cpu_us: Option<f64>,
    backend_cpu_us: f64,
}

fn run_wrk(url: &str, secs: u32, per_request: bool) -> Result<wrk::Wrk> {
    let args = if per_request {
        wrk::args_per_request(url, CONNECTIONS, secs)
    } else {
        wrk::args(url, CONNECTIONS, secs)
    };
    let out = Command::new(wrk::PROGRAM)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("{}: run `cargo xtask setup`", wrk::PROGRAM))?;
    if !out.status.success() {
        bail!("wrk {url}: {}", out.status);
    }
    wrk::parse(url, &String::from_utf8_lossy(&out.stdout))
}

/// `nginx version: nginx/1.22.1` → `1.22.1`.
fn version(nginx: &Path) -> Result<String> {
    let out = Command::new(nginx)
        .arg("-v")
        .output()
        .with_context(|| format!("{}: run `cargo xtask setup`", nginx.display()))?;
    let text = String::from_utf8_lossy(&out.stderr);
    Ok(text
        .trim()
        .rsplit('/')
        .next()
        .unwrap_or(text.trim())
        .to_string())
}

/// nginx serving `127.0.0.1:<free port>` as a reverse proxy to `upstream`, with its files
/// in a directory of its own; stopped (by its PID) and removed on drop.
struct Nginx {
    addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(nginx: &Path, upstream: SocketAddr) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("elasti-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        std::fs::write(dir.join("nginx.conf"), config(&dir, addr, upstream))?;
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", nginx.display()))?;
        let me = Self { addr, child, dir };
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                let log = std::fs::read_to_string(me.dir.join("error.log")).unwrap_or_default();
                bail!("nginx did not listen on {addr} within 10 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master: it stops its workers, then itself.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A reverse proxy as its documentation sets one up for keep-alive to the upstream
/// (HTTP/1.1, the `Connection` header cleared), no access log (the agent keeps none),
/// one worker per core (the agent's runtime has one thread per core).
fn config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "worker_processes auto;\n\
         daemon off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 client_body_temp_path {d}/client_body;\n\
         \x20 proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi;\n\
         \x20 uwsgi_temp_path {d}/uwsgi;\n\
         \x20 scgi_temp_path {d}/scgi;\n\
         \x20 upstream pod {{ server {upstream}; keepalive {UPSTREAM_KEEPALIVE}; }}\n\
         \x20 server {{\n\
         \x20   listen {listen};\n\
         \x20   location / {{\n\
         \x20     proxy_pass http://pod;\n\
         \x20     proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n"
    )
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
