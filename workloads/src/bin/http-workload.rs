//! The HTTP test workload (see `elasti_workloads::http`): args, tracing, serve.
use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let pod = elasti_workloads::pod_name();
    tracing::info!(%pod, listen = %args.listen, "http-workload serving");
    tokio::select! {
        r = elasti_workloads::http::serve(listener, pod) => r?,
        () = elasti_workloads::shutdown_signal() => {}
    }
    Ok(())
}
