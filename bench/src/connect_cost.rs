//! What the eBPF programs add to `connect()`: loops of loopback connects from a process in
//! a child cgroup, in a network namespace of the bench's own, with no program attached
//! (baseline), attached with the map missing, attached with the map hitting (the connect
//! steered), and attached with a count-only entry (an `activity` trigger's warm Service:
//! counted and its socket tracked until released, not steered). Rounds rotate so drift on
//! a noisy machine hits all four alike.
use std::{fs, net::SocketAddr, os::unix::process::CommandExt, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use elasti_agent::intercept::{Interceptor, keys::Entry};
use serde::Serialize;

use elasti_testbed::stats::{Summary, summarize};

/// A ClusterIP that exists nowhere; only the map makes connects to it succeed.
const CLUSTER_IP: &str = "10.96.0.50:80";

#[derive(Debug, Serialize)]
pub struct ConnectCost {
    pub connects_per_round: usize,
    pub rounds: usize,
    /// Nanoseconds per connect+close, one sample per round.
    pub baseline_ns: Summary,
    pub miss_ns: Summary,
    pub hit_ns: Summary,
    /// A count-only entry hit: counted, tracked as open, released on close.
    pub count_ns: Summary,
}

/// A network namespace and a cgroup v2 child, removed on drop.
struct Bed {
    name: String,
    cgroup: PathBuf,
}

impl Bed {
    fn new() -> Result<Self> {
        let name = format!("elasti-bench-{}", std::process::id());
        let root =
            elasti_agent::intercept::programs::cgroup2_mount().context("no cgroup v2 mount")?;
        let cgroup = root.join(&name);
        fs::create_dir_all(&cgroup).context("creating the bench cgroup")?;
        let bed = Self { name, cgroup };
        for args in [
            vec!["netns", "add", &bed.name],
            vec!["-n", &bed.name, "link", "set", "lo", "up"],
        ] {
            if !Command::new("ip").args(&args).status()?.success() {
                bail!("ip {}", args.join(" "));
            }
        }
        Ok(bed)
    }

    /// Runs `loops` connects to `target` from a child process in the cgroup and netns;
    /// returns nanoseconds per connect.
    fn connect_loop(&self, target: &str, loops: usize) -> Result<f64> {
        let procs = self.cgroup.join("cgroup.procs");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(std::env::current_exe()?)
            .args(["connect-loop", target, &loops.to_string()]);
        // SAFETY: only open/write/close between fork and exec.
        unsafe {
            cmd.pre_exec(move || fs::write(&procs, b"0"));
        }
        let out = cmd.output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .strip_prefix("ns_per_connect=")
            .and_then(|v| v.parse().ok())
            .with_context(|| {
                format!(
                    "connect-loop to {target}: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = fs::remove_dir(&self.cgroup);
    }
}

pub fn run(loops: usize, rounds: usize) -> Result<ConnectCost> {
    let bed = Bed::new()?;
    // Every connect is refused by a closed loopback port in the bench's namespace: the
    // kernel does the same SYN/RST work in all three cases, no ephemeral port is left in
    // TIME_WAIT, and the difference is the programs alone. The hit case is steered to
    // that same closed port.
    let closed: SocketAddr = "127.0.0.1:9".parse()?;
    let direct = closed.to_string();
    let (mut base, mut miss, mut hit, mut count) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Rotate which case goes first, so warm-up and drift favour none of them.
        for case in (0..4).map(|i| (i + round) % 4) {
            match case {
                0 => base.push(bed.connect_loop(&direct, loops)?),
                1 => {
                    let mut interceptor = Interceptor::attach(&bed.cgroup)?;
                    // A held service other than the one dialled: every lookup misses.
                    interceptor.hold("10.96.0.99:80".parse()?, Entry::steer(closed), 1)?;
                    miss.push(bed.connect_loop(&direct, loops)?);
                }
                2 => {
                    let mut interceptor = Interceptor::attach(&bed.cgroup)?;
                    interceptor.hold(CLUSTER_IP.parse()?, Entry::steer(closed), 2)?;
                    hit.push(bed.connect_loop(CLUSTER_IP, loops)?);
                }
                _ => {
                    let mut interceptor = Interceptor::attach(&bed.cgroup)?;
                    // The dialled address is counted, not steered.
                    interceptor.hold(closed, Entry::CountOnly, 3)?;
                    count.push(bed.connect_loop(&direct, loops)?);
                    let counted = interceptor.activity(closed).map_or(0, |a| a.connects);
                    if counted != loops as u64 {
                        bail!("the count-only entry counted {counted} of {loops} connects");
                    }
                }
            }
        }
    }
    Ok(ConnectCost {
        connects_per_round: loops,
        rounds,
        baseline_ns: summarize(&base),
        miss_ns: summarize(&miss),
        hit_ns: summarize(&hit),
        count_ns: summarize(&count),
    })
}

/// The child side: `loops` socket+connect+close calls to `target`, each of which must be
/// refused (anything else means the bench measured the wrong thing). Prints
/// `ns_per_connect=…`.
pub fn connect_loop(target: SocketAddr, loops: usize) -> Result<()> {
    use socket2::{Domain, Socket, Type};
    let start = std::time::Instant::now();
    for _ in 0..loops {
        let s = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
        match s.connect(&target.into()) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => bail!("connect to {target}: expected refused, got {other:?}"),
        }
    }
    println!(
        "ns_per_connect={}",
        start.elapsed().as_nanos() as f64 / loops as f64
    );
    Ok(())
}
