//! `cargo xtask fuzz`: the cargo-fuzz targets, for a bounded time.

use std::{fs, process::Command};

use anyhow::{Context as _, bail};

use crate::{prereq, workspace_root};

/// Pinned so that a new release cannot break a CI run.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(Debug, clap::Args)]
pub struct FuzzOptions {
    /// How long to fuzz, in seconds (CI runs a short smoke run; nightly runs longer).
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// The fuzz target.
    #[arg(long, default_value = "plan")]
    pub target: String,
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let works = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (cargo install, about a minute)");
    prereq::run_logged(
        "cargo-install-cargo-fuzz",
        Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ])
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

/// Runs a fuzz target for a bounded time; fails on a crash (the crashing input is kept in
/// `fuzz/artifacts/<target>/`).
pub fn run(opts: &FuzzOptions) -> anyhow::Result<()> {
    prereq::ensure_nightly_component("rust-src")?;
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let corpus = root.join("fuzz/corpus").join(&opts.target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    eprintln!("xtask: fuzzing `{}` for {} s", opts.target, opts.seconds);
    let status = Command::new("cargo")
        .current_dir(root.join("fuzz"))
        // No sanitizer: the fuzzed code has no unsafe, and a sanitizer build of it takes
        // minutes longer; what is fuzzed for is a panic.
        .args([
            "+nightly",
            "fuzz",
            "run",
            "--sanitizer",
            "none",
            &opts.target,
        ])
        .arg(&corpus)
        .arg(root.join("fuzz/seeds"))
        .arg("--")
        .arg(format!("-max_total_time={}", opts.seconds))
        .arg("-rss_limit_mb=2048")
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("running cargo fuzz")?;
    if !status.success() {
        bail!(
            "fuzz target `{}` failed ({status}); see fuzz/artifacts/{}",
            opts.target,
            opts.target
        );
    }
    Ok(())
}
