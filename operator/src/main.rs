//! `elasti-operator`: args, tracing, run.
use elasti_operator::config::{Args, Error};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = match Args::load(std::env::args().collect()) {
        Ok(args) => args,
        // clap's own errors (and --help/--version) print and exit as clap does.
        Err(Error::Flags(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    elasti_runtime::init_tracing(args.common.log_json);
    elasti_operator::run::run(args).await?;
    Ok(())
}
