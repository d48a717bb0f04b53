//! `cargo xtask test`: the project's one test command, also what CI runs.

use std::{process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::{bench, ebpf, fuzz, prereq, workspace_root};

#[derive(Debug, clap::Args)]
pub struct TestOptions {
    /// Skip `cargo fmt --check` and clippy (for a quick local run; CI never skips them).
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the short fuzz run (for a quick local run; CI never skips it).
    #[arg(long)]
    pub no_fuzz: bool,
    /// Passed to `cargo test` after `--` (e.g. a test name filter).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

fn step(name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: == {name}");
    let started = Instant::now();
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    eprintln!("xtask: {name} passed in {:.1?}", started.elapsed());
    Ok(())
}

pub fn run(opts: &TestOptions) -> anyhow::Result<()> {
    if !prereq::is_root() {
        bail!(
            "the test suite creates network namespaces, loads eBPF programs and programs \
             nftables: run it as root"
        );
    }
    prereq::ensure_packages(prereq::TEST_PACKAGES)?;
    prereq::ensure_bpffs()?;
    ebpf::build(&ebpf::BuildOptions { debug: false })?;

    if !opts.no_lint {
        // Nightly rustfmt: the grouping options in rustfmt.toml are not stable yet.
        step(
            "cargo fmt --check",
            Command::new("cargo").args(["+nightly", "fmt", "--all", "--check"]),
        )?;
        step(
            "cargo clippy",
            Command::new("cargo").args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    // The end-to-end tests run the agent binary as a separate process.
    step(
        "cargo build (agent binary)",
        Command::new("cargo").args(["build", "--package", "proxy-agent"]),
    )?;
    // The reliability and security tests each add a line (faults injected, requests sent,
    // requests failed) to this file; printed at the end, or right after the tests when they fail.
    let summary = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), std::path::PathBuf::from)
        .join("reliability/summary.txt");
    let _ = std::fs::remove_file(&summary);
    let tested = step(
        "cargo test",
        Command::new("cargo")
            .args(["test", "--workspace", "--"])
            .args(&opts.test_args)
            // Privileged tests skip only outside CI; here they must run.
            .env("HYBRID_PROXY_REQUIRE_PRIVILEGED", "1"),
    );
    let print_summary = || {
        if let Ok(text) = std::fs::read_to_string(&summary) {
            eprintln!(
                "xtask: == reliability summary ({})\n{text}",
                summary.display()
            );
        }
    };
    if tested.is_err() {
        print_summary();
    }
    tested?;
    // The fast-path scenarios once more with `forwarding: stack` (the first run took the
    // labs' default, `auto`, which redirects there): both modes must serve alike.
    let stacked = step(
        "cargo test (fast-path scenarios, forwarding stack)",
        Command::new("cargo")
            .args([
                "test",
                "--package",
                "hybrid-proxy-tests",
                "--test",
                "acceleration",
                "--test",
                "bpf_lab",
                "--",
            ])
            .args(&opts.test_args)
            .env("HYBRID_PROXY_REQUIRE_PRIVILEGED", "1")
            .env("HYBRID_PROXY_TEST_FORWARDING", "stack"),
    );
    if stacked.is_err() {
        print_summary();
    }
    stacked?;
    // A short fuzz run: the plan survives arbitrary manifests (the nightly-style run is
    // `cargo xtask fuzz`).
    if !opts.no_fuzz {
        fuzz::run(&fuzz::FuzzOptions {
            seconds: 30,
            target: "plan".into(),
        })?;
    }
    // The benchmark's smoke run: it runs and prints numbers, which nobody judges here.
    bench::run(&bench::BenchOptions {
        quick: true,
        only: None,
    })?;
    print_summary();
    Ok(())
}
