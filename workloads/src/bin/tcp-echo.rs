//! The raw-TCP test workload: echoes every byte back, except that a line `WHO\n` is
//! answered with `pod=<name>\n`, so a test can tell which pod it reached.
use std::net::SocketAddr;

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:9000")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let pod = elasti_workloads::pod_name();
    tracing::info!(%pod, listen = %args.listen, "tcp-echo serving");
    let shutdown = elasti_workloads::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let pod = pod.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let reply = if line == b"WHO\n" {
                    format!("pod={pod}\n").into_bytes()
                } else {
                    line.clone()
                };
                if w.write_all(&reply).await.is_err() {
                    break;
                }
            }
            tracing::debug!(%peer, "connection closed");
        });
    }
}
