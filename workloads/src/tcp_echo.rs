//! The raw-TCP test workload's server: echoes every line back, except that `WHO\n` is
//! answered with `pod=<name>\n`, so a test can tell which pod it reached.
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

/// Serves on `listener` as pod `pod`, until the task is dropped.
pub async fn serve(listener: TcpListener, pod: String) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
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
