//! An abusive client for the suites (run inside a test pod): opens `--connections`
//! connections to `addr`, sends each `--send` (slowly, a byte every `--drip-ms`, to play a
//! slowloris) and holds them open for `--hold-secs`. Prints how many it opened and how
//! many the server closed on it.
use std::{
    io::Write,
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// `host:port`.
    addr: String,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Bytes to send on each (empty: send nothing).
    #[arg(long, default_value = "")]
    send: String,
    /// Milliseconds between two bytes sent on a connection (0: all at once).
    #[arg(long, default_value_t = 0)]
    drip_ms: u64,
    /// Seconds to keep them open.
    #[arg(long, default_value_t = 10)]
    hold_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addr: SocketAddr = args
        .addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{} resolved to nothing", args.addr))?;
    let mut open = Vec::new();
    let mut refused = 0usize;
    for _ in 0..args.connections {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => open.push(s),
            Err(_) => refused += 1,
        }
    }
    let bytes = args.send.as_bytes();
    let deadline = Instant::now() + Duration::from_secs(args.hold_secs);
    let mut closed = 0usize;
    if args.drip_ms == 0 {
        for s in &mut open {
            if s.write_all(bytes).is_err() {
                closed += 1;
            }
        }
    } else {
        for b in bytes {
            if Instant::now() >= deadline {
                break;
            }
            for s in &mut open {
                let _ = s.write_all(std::slice::from_ref(b));
            }
            std::thread::sleep(Duration::from_millis(args.drip_ms));
        }
    }
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // A connection the server closed fails a write now.
    for s in &mut open {
        if s.write_all(b"x").is_err() || s.write_all(b"x").is_err() {
            closed += 1;
        }
    }
    println!(
        "opened {} refused {refused} closed-by-server {closed}",
        open.len()
    );
    Ok(())
}
