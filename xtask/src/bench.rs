//! `cargo xtask bench`: the project's performance figures (DESIGN.md, "Performance").
//!
//! The measuring lives in the test crate's `bench` program, so that this crate stays light;
//! here: prerequisites, the eBPF object, the builds, and running it.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{ebpf, prereq, workspace_root};

#[derive(Debug, clap::Args)]
pub struct BenchOptions {
    /// A smoke run of a few seconds on small sizes, built in debug: it checks that the
    /// benchmark runs and prints numbers (what `cargo xtask test` runs); its figures mean
    /// nothing. Its report goes to `target/bench/quick/`.
    #[arg(long)]
    pub quick: bool,
    /// Measure one part only.
    #[arg(long, value_parser = ["control", "data"])]
    pub only: Option<String>,
}

/// Installs what the benchmark needs, builds the programs, the agent and the benchmark, and
/// runs it: the report goes to `target/bench/` and its main tables to stdout.
pub fn run(opts: &BenchOptions) -> anyhow::Result<()> {
    if !prereq::is_root() {
        bail!(
            "the benchmark builds network namespaces, programs nftables and loads eBPF programs: run it as root"
        );
    }
    prereq::ensure_packages(prereq::TEST_PACKAGES)?;
    prereq::ensure_packages_without_services(prereq::BENCH_PACKAGES)?;
    prereq::ensure_bpffs()?;
    ebpf::build(&ebpf::BuildOptions { debug: false })?;
    // The full run measures release builds; the smoke run reuses the debug builds that
    // `cargo xtask test` has just made.
    let profile = if opts.quick { "debug" } else { "release" };
    eprintln!("xtask: building the agent and the benchmark ({profile})");
    let mut build = Command::new("cargo");
    build.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "--package",
        "proxy-agent",
        "--package",
        "hybrid-proxy-tests",
        "--bin",
        "proxy-agent",
        "--bin",
        "bench",
    ]);
    if !opts.quick {
        build.arg("--release");
    }
    let status = build.status().context("starting cargo build")?;
    if !status.success() {
        bail!("building the agent and the benchmark failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), std::path::PathBuf::from);
    let bin = target.join(profile);
    let out = target.join(if opts.quick { "bench/quick" } else { "bench" });
    let mut cmd = Command::new(bin.join("bench"));
    cmd.current_dir(workspace_root())
        .arg("--agent")
        .arg(bin.join("proxy-agent"))
        .arg("--out")
        .arg(&out);
    if opts.quick {
        cmd.arg("--quick");
    }
    if let Some(part) = &opts.only {
        cmd.args(["--only", part]);
    }
    let status = cmd.status().context("running the benchmark")?;
    if !status.success() {
        bail!("the benchmark failed ({status})");
    }
    Ok(())
}
