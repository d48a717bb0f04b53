use clap::Parser;

/// hybrid-proxy: a Kubernetes service proxy for Linux nodes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
