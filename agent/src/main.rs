//! `elasti-agent`: args, tracing, run.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(about, version)]
struct Args {
    /// cgroup v2 directory whose processes' connects are intercepted. Production: the host's
    /// cgroup v2 root; tests: a subtree holding only test processes.
    #[arg(long, env = "ELASTI_CGROUP_PATH", default_value = "/sys/fs/cgroup")]
    cgroup_path: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let _interceptor = elasti_agent::intercept::Interceptor::attach(&args.cgroup_path)
        .with_context(|| format!("attaching at {}", args.cgroup_path.display()))?;
    tracing::info!(cgroup = %args.cgroup_path.display(), "eBPF programs attached");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
