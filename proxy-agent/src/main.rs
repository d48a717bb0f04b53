use std::process::ExitCode;

use clap::Parser as _;
use proxy_agent::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // kube-client logs every failed connection attempt at ERROR while the source already
    // reports outages once, with their retry: keep that one quiet unless asked for.
    let directives = if cli.log.contains("kube_client") {
        cli.log.clone()
    } else {
        format!("{},kube_client::client::builder=off", cli.log)
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    cli::logging::init(filter, cli.log_format());
    cli::run(cli)
}
