//! `elasti-bench`, run by `cargo xtask bench` as root: every figure next to a baseline
//! measured in the same run, because these machines are noisy. Writes
//! `target/bench/results.json` and `results.md` and prints the table.
use std::{net::SocketAddr, path::PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde::Serialize;

mod connect_cost;
mod hold;
mod proxy_in_path;
mod throughput;

#[derive(Parser)]
#[command(about)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Where results.json and results.md go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// connect() calls per round of the connect-cost bench.
    #[arg(long, default_value_t = 20_000)]
    connects: usize,
    /// Rounds of the connect-cost bench (baseline, miss, hit, count-only rotate each round).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Connections (and, separately, HTTP requests) held at once in the capacity bench:
    /// the agent's default queue bound. Held, each costs the agent one descriptor; released,
    /// a second one only while its paced handshake and answer are in progress.
    #[arg(long, default_value_t = 10_000)]
    held: usize,
    /// Cold periods in the hand-off bench.
    #[arg(long, default_value_t = 50)]
    wakes: usize,
    /// Rounds of the capacity bench, each in a fresh process (memory, and the first and
    /// last answer after Ready).
    #[arg(long, default_value_t = 5)]
    capacity_rounds: usize,
    /// Bytes of each raw TCP transfer in the throughput bench (1 GiB).
    #[arg(long, default_value_t = 1 << 30)]
    transfer_bytes: u64,
    /// Rounds of the throughput bench (each: one transfer direct, one through the agent).
    #[arg(long, default_value_t = 5)]
    transfer_rounds: usize,
    /// Rounds of the proxy comparison (each: wrk direct, through the agent, through nginx).
    #[arg(long, default_value_t = 3)]
    proxy_rounds: usize,
    /// Seconds of each wrk run in the proxy comparison.
    #[arg(long, default_value_t = 5)]
    proxy_secs: u32,
    /// The peer reverse proxy's binary [default: the nginx `cargo xtask setup` unpacked].
    #[arg(long)]
    nginx: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// (internal) The connect loop run inside the bench cgroup.
    ConnectLoop { target: SocketAddr, loops: usize },
    /// (internal) The clients of the capacity bench.
    HoldClients {
        addr: SocketAddr,
        n: usize,
        protocol: String,
    },
    /// (internal) The backend of the capacity and throughput benches.
    Backend { protocol: String },
    /// (internal) One round of the capacity bench.
    CapacityRound { protocol: String, held: usize },
    /// (internal) The client of the throughput bench.
    Send { to: SocketAddr, bytes: u64 },
    /// The proxy comparison alone (agent, nginx, direct), its figures printed as JSON.
    ProxyInPath,
}

#[derive(Serialize)]
struct Results {
    date: String,
    cores: usize,
    connect: connect_cost::ConnectCost,
    handoff: hold::Handoff,
    capacity: Vec<hold::Capacity>,
    throughput: throughput::Throughput,
    proxy_in_path: proxy_in_path::ProxyInPath,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Every mode holds or opens tens of thousands of sockets.
    elasti_agent::run::raise_fd_limit();
    match args.cmd {
        Some(Cmd::ConnectLoop { target, loops }) => connect_cost::connect_loop(target, loops),
        Some(Cmd::Backend { protocol }) => {
            tokio::runtime::Runtime::new()?.block_on(hold::backend(&protocol))
        }
        Some(Cmd::CapacityRound { protocol, held }) => {
            let round = tokio::runtime::Runtime::new()?
                .block_on(hold::capacity_round(held, protocol == "http"))?;
            println!("{}", serde_json::to_string(&round)?);
            Ok(())
        }
        Some(Cmd::Send { to, bytes }) => {
            tokio::runtime::Runtime::new()?.block_on(throughput::send(to, bytes))
        }
        Some(Cmd::ProxyInPath) => {
            let figures = proxy_in_path(&args, &tokio::runtime::Runtime::new()?)?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Some(Cmd::HoldClients { addr, n, protocol }) => tokio::runtime::Runtime::new()?
            .block_on(hold::hold_clients(addr, n, protocol == "http")),
        None => {
            let connect = connect_cost::run(args.connects, args.rounds)?;
            let rt = tokio::runtime::Runtime::new()?;
            let handoff = rt.block_on(hold::handoff(args.wakes))?;
            let capacity = vec![
                hold::capacity(args.held, false, args.capacity_rounds)?,
                hold::capacity(args.held, true, args.capacity_rounds)?,
            ];
            let throughput =
                rt.block_on(throughput::run(args.transfer_bytes, args.transfer_rounds))?;
            let proxy_in_path = proxy_in_path(&args, &rt)?;
            let results = Results {
                date: date(),
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                connect,
                handoff,
                capacity,
                throughput,
                proxy_in_path,
            };
            std::fs::create_dir_all(&args.out)?;
            std::fs::write(
                args.out.join("results.json"),
                serde_json::to_vec_pretty(&results)?,
            )?;
            let md = markdown(&results);
            std::fs::write(args.out.join("results.md"), &md)?;
            println!("{md}");
            Ok(())
        }
    }
}

/// The proxy comparison with `args`' nginx (by default the one `setup` unpacked).
fn proxy_in_path(args: &Args, rt: &tokio::runtime::Runtime) -> Result<proxy_in_path::ProxyInPath> {
    let nginx = args
        .nginx
        .clone()
        .unwrap_or_else(elasti_testbed::paths::nginx);
    rt.block_on(proxy_in_path::run(
        &nginx,
        args.proxy_rounds,
        args.proxy_secs,
    ))
}

fn markdown(r: &Results) -> String {
    let c = &r.connect;
    let h = &r.handoff;
    let mut s = format!(
        "## elasti bench — {} — {} cores\n\n| figure | baseline (same run) | elasti | difference | ratio |\n| --- | --- | --- | --- | --- |\n",
        r.date, r.cores
    );
    s += &format!(
        "| connect()+close, program attached, map miss (median of {} rounds × {}) | {:.0} ns | {:.0} ns | {:+.0} ns | {:.3} |\n",
        c.rounds,
        c.connects_per_round,
        c.baseline_ns.p50,
        c.miss_ns.p50,
        c.miss_ns.p50 - c.baseline_ns.p50,
        c.miss_ns.p50 / c.baseline_ns.p50
    );
    s += &format!(
        "| connect()+close, map hit (steered) | {:.0} ns | {:.0} ns | {:+.0} ns | {:.3} |\n",
        c.baseline_ns.p50,
        c.hit_ns.p50,
        c.hit_ns.p50 - c.baseline_ns.p50,
        c.hit_ns.p50 / c.baseline_ns.p50
    );
    s += &format!(
        "| connect()+close, count-only hit (`activity` trigger, warm) against a map miss | miss {:.0} ns | {:.0} ns | {:+.0} ns | {:.3} |\n",
        c.miss_ns.p50,
        c.count_ns.p50,
        c.count_ns.p50 - c.miss_ns.p50,
        c.count_ns.p50 / c.miss_ns.p50
    );
    s += &format!(
        "| endpoint Ready → held connection reaches the pod, p50 / p99 ({} wakes) | direct connect→accept {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:+.0} / {:+.0} µs | |\n",
        h.held_us.n,
        h.direct_us.p50,
        h.direct_us.p99,
        h.held_us.p50,
        h.held_us.p99,
        h.held_us.p50 - h.direct_us.p50,
        h.held_us.p99 - h.direct_us.p99
    );
    for cap in &r.capacity {
        s += &format!(
            "| {} {} held at once ({} rounds): agent memory per held / first answer after Ready, p99 / all answered, median | | {:.0} B / {:.1} ms / {:.0} ms | goal ≤ {} B / ≤ 5 ms / ≤ 1,000 ms | |\n",
            cap.held,
            cap.protocol,
            cap.bytes_per_held.n,
            cap.bytes_per_held.p50,
            cap.first_answer_ms.p99,
            cap.all_answered_ms.p50,
            if cap.protocol == "http" { 8192 } else { 3072 },
        );
    }
    let t = &r.throughput;
    s += &format!(
        "| raw TCP, {} MiB per transfer ({} rounds), MB/s | direct {:.0} | through the agent {:.0} | | {:.3} (goal ≥ 0.8) |\n",
        t.bytes >> 20,
        t.agent_mb_s.n,
        t.direct_mb_s.p50,
        t.agent_mb_s.p50,
        t.agent_mb_s.p50 / t.direct_mb_s.p50
    );
    let x = &r.proxy_in_path;
    for (mode, paths) in [
        ("keep-alive client", &x.keep_alive),
        ("a connection per request", &x.per_request),
    ] {
        s += &format!(
            "| HTTP/1.1 through a proxy, pods Ready, {mode} (wrk c={}, {} rounds × {} s), req/s / p99 | nginx {} {:.0} / {:.2} ms; pod direct {:.0} / {:.2} ms | through the agent {:.0} / {:.2} ms | | agent/nginx {:.2} (goal ≥ 1.0), p99 {:.2}× nginx's (goal ≤ 1.0); agent/direct {:.2} (goal ≥ 0.5) |\n",
            x.connections,
            paths.agent.req_s.n,
            x.seconds,
            x.nginx_version,
            paths.nginx.req_s.p50,
            paths.nginx.p99_ms.p50,
            paths.direct.req_s.p50,
            paths.direct.p99_ms.p50,
            paths.agent.req_s.p50,
            paths.agent.p99_ms.p50,
            paths.agent.req_s.p50 / paths.nginx.req_s.p50,
            paths.agent.p99_ms.p50 / paths.nginx.p99_ms.p50,
            paths.agent.req_s.p50 / paths.direct.req_s.p50,
        );
        let cpu = |f: &proxy_in_path::PathFigures| f.proxy_cpu_us.as_ref().map_or(0.0, |c| c.p50);
        s += &format!(
            "| … CPU time per request, {mode}, µs: the proxy's (the backend's) | nginx {:.1} ({:.1}); pod direct: backend {:.1} | the agent {:.1} ({:.1}) | | agent/nginx {:.2}: on two cores shared with wrk and the backend, the proxies' req/s follow this |\n",
            cpu(&paths.nginx),
            paths.nginx.backend_cpu_us.p50,
            paths.direct.backend_cpu_us.p50,
            cpu(&paths.agent),
            paths.agent.backend_cpu_us.p50,
            cpu(&paths.agent) / cpu(&paths.nginx),
        );
    }
    s += &format!(
        "\nconnect() samples (ns, min/median/max): baseline {:.0}/{:.0}/{:.0}, miss {:.0}/{:.0}/{:.0}, hit {:.0}/{:.0}/{:.0}, count-only {:.0}/{:.0}/{:.0}. Hand-off samples (µs, min/median/max): {:.0}/{:.0}/{:.0}.\n",
        c.baseline_ns.min,
        c.baseline_ns.p50,
        c.baseline_ns.max,
        c.miss_ns.min,
        c.miss_ns.p50,
        c.miss_ns.max,
        c.hit_ns.min,
        c.hit_ns.p50,
        c.hit_ns.max,
        c.count_ns.min,
        c.count_ns.p50,
        c.count_ns.max,
        h.held_us.min,
        h.held_us.p50,
        h.held_us.max
    );
    s
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
