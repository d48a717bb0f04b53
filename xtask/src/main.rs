//! `cargo xtask <task>`: everything beyond `cargo build` and `cargo test`.
//!
//! Each task installs what it needs when it is missing (Debian packages, the nightly
//! `rust-src` component, bpf-linker), saying what it installs and why, so that a fresh
//! machine needs nothing but this repository and a Rust toolchain.

mod bench;
mod demo;
mod ebpf;
mod fuzz;
mod prereq;
mod test;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "hybrid-proxy development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the XDP/TC programs (nightly, `-Z build-std=core`, `bpfel-unknown-none`) into
    /// `target/ebpf/proxy-ebpf.o`, where the agent's build embeds them.
    BuildEbpf(ebpf::BuildOptions),
    /// The one test command: install prerequisites, build the eBPF object, check formatting
    /// and lints, and run every test, the privileged ones included.
    Test(test::TestOptions),
    /// The main job on the built-in lab: network namespaces with a node, a second node, pods
    /// and an external client; example Services; real TCP and UDP traffic; a table of which
    /// backend served what by which path, with acceleration off and on. Removes the lab.
    Demo,
    /// Performance: nftables programming at 1k, 10k and 30k Services against kube-proxy's
    /// layout and a bare `nft -f`, and nftables against the eBPF fast path in the namespace
    /// lab. Writes `target/bench/report.md`, `report.json` and SVG charts.
    Bench(bench::BenchOptions),
    /// Fuzz the plan with arbitrary manifests for a bounded time (cargo-fuzz, nightly).
    Fuzz(fuzz::FuzzOptions),
}

/// The repository root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::BuildEbpf(opts) => ebpf::build(&opts).map(|_| ()),
        Task::Test(opts) => test::run(&opts),
        Task::Fuzz(opts) => fuzz::run(&opts),
        Task::Demo => demo::run(),
        Task::Bench(opts) => bench::run(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
