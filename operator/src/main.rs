//! `elasti-operator`: args, tracing, run. The control plane itself is issue #4's work; this
//! binary exists so the image and manifests can be built and deployed end to end.
use clap::Parser;

#[derive(Parser)]
#[command(about, version)]
struct Args {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let _args = Args::parse();
    tracing::info!("elasti-operator started; waiting for SIGTERM");
    elasti_operator_shutdown().await;
    Ok(())
}

async fn elasti_operator_shutdown() {
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}
