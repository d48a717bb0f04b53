//! `cargo xtask demo`: the project's main job on the built-in lab.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{ebpf, prereq, workspace_root};

/// Installs what the demo needs, builds the programs and the agent, and runs the demo
/// program (a binary of the test crate), which builds the lab, shows where traffic goes
/// with acceleration off and on, and removes the lab.
pub fn run() -> anyhow::Result<()> {
    if !prereq::is_root() {
        bail!(
            "the demo builds network namespaces, programs nftables and loads eBPF programs: run it as root"
        );
    }
    prereq::ensure_packages(prereq::TEST_PACKAGES)?;
    prereq::ensure_bpffs()?;
    ebpf::build(&ebpf::BuildOptions { debug: false })?;
    eprintln!("xtask: building the agent and the demo");
    let status = Command::new("cargo")
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "--release",
            "--package",
            "proxy-agent",
            "--package",
            "hybrid-proxy-tests",
            "--bin",
            "proxy-agent",
            "--bin",
            "demo",
        ])
        .status()
        .context("starting cargo build")?;
    if !status.success() {
        bail!("building the agent and the demo failed ({status})");
    }
    let demo = workspace_root().join("target/release/demo");
    let status = Command::new(&demo)
        .status()
        .with_context(|| format!("running {}", demo.display()))?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}
