//! `elasti-agent`: args, tracing, run.
use elasti_agent::config::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = match Args::load(std::env::args().collect()) {
        Ok(args) => args,
        // clap's own errors (and --help/--version) print and exit as clap does.
        Err(elasti_agent::config::Error::Flags(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    elasti_agent::run::run(args).await?;
    Ok(())
}
