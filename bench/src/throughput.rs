//! Raw TCP through the agent against a direct connection: a client child sends one large
//! transfer to a sink child, straight or through the agent's real listener and splice
//! (its service Ready, as in the hand-back grace), in alternating rounds. Bytes per second
//! from the client's connect to the sink's acknowledgement of the last byte.
use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use elasti_agent::hold::Endpoints;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use elasti_testbed::stats::{Summary, summarize};

/// The client's write size: large enough that the client and the sink are not what limits
/// the figure.
const CHUNK: usize = 256 << 10;

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub bytes: u64,
    /// Client straight to the sink, MB/s (10^6 bytes), one sample per round.
    pub direct_mb_s: Summary,
    /// Client through the agent's listener and splice, MB/s.
    pub agent_mb_s: Summary,
}

/// `rounds` transfers of `bytes` each way (direct, then through the agent; the order
/// alternates each round).
pub async fn run(bytes: u64, rounds: usize) -> Result<Throughput> {
    let p = super::hold::proxy(64)?;
    let (mut sink, sink_addr) = super::hold::spawn_backend("sink")?;
    p.endpoints.send_replace(Endpoints::from(vec![sink_addr]));
    let (mut direct, mut agent) = (Vec::new(), Vec::new());
    let result = (|| -> Result<()> {
        for round in 0..rounds {
            for through_agent in [round % 2 == 1, round % 2 == 0] {
                let to = if through_agent { p.addr } else { sink_addr };
                let secs = send_child(to, bytes)?;
                let mb_s = bytes as f64 / secs / 1e6;
                if through_agent {
                    agent.push(mb_s);
                } else {
                    direct.push(mb_s);
                }
            }
        }
        Ok(())
    })();
    let _ = sink.kill();
    let _ = sink.wait();
    result?;
    Ok(Throughput {
        bytes,
        direct_mb_s: summarize(&direct),
        agent_mb_s: summarize(&agent),
    })
}

/// Runs `send` in a child process; its seconds.
fn send_child(to: SocketAddr, bytes: u64) -> Result<f64> {
    let out = Command::new(std::env::current_exe()?)
        .args(["send", &to.to_string(), &bytes.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("send to {to}: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("secs=")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("send output: {text}"))
}

/// The client child: `bytes` to `to`, then waits for the sink's count. Prints `secs=…`.
pub async fn send(to: SocketAddr, bytes: u64) -> Result<()> {
    let buf = vec![0x5a_u8; CHUNK];
    let start = Instant::now();
    let mut s = TcpStream::connect(to).await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let mut ack = String::new();
    s.read_to_string(&mut ack).await?;
    let secs = start.elapsed().as_secs_f64();
    let got: u64 = ack.trim().parse().with_context(|| format!("ack {ack:?}"))?;
    if got != bytes {
        bail!("the sink counted {got} of {bytes} bytes");
    }
    println!("secs={secs}");
    Ok(())
}

/// The sink: counts what each connection sends until it closes its side, then answers the
/// count and closes.
pub async fn sink(l: TcpListener) -> Result<()> {
    loop {
        let (mut s, _) = l.accept().await?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = s.write_all(total.to_string().as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}
