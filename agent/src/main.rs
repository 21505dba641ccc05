//! `elasti-agent`: args, tracing, then the supervisor (which starts this binary again as
//! its worker) or the worker itself.
use elasti_agent::config::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = match Args::load(std::env::args().collect()) {
        Ok(args) => args,
        // clap's own errors (and --help/--version) print and exit as clap does.
        Err(elasti_agent::config::Error::Flags(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    elasti_runtime::init_tracing(args.common.log_json);
    if args.supervise && args.supervisor_fd.is_none() {
        elasti_agent::supervisor::run(args).await?;
    } else {
        elasti_agent::run::run(args).await?;
    }
    Ok(())
}
