//! `cargo xtask build-ebpf`.

use std::{ffi::OsString, fs, path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::{prereq, workspace_root};

#[derive(Debug, clap::Args)]
pub struct BuildOptions {
    /// Build without optimisations (the verifier rejects most unoptimised programs; for
    /// debugging the build only).
    #[arg(long)]
    pub debug: bool,
}

/// Where the agent's build script looks for the object.
pub fn object_path() -> PathBuf {
    workspace_root().join("target/ebpf/proxy-ebpf.o")
}

/// Builds the programs and copies the object to [`object_path`] when it changed, so that a
/// second run rebuilds neither the programs nor the agent.
pub fn build(opts: &BuildOptions) -> anyhow::Result<PathBuf> {
    prereq::ensure_ebpf_toolchain()?;
    let root = workspace_root();
    let profile = if opts.debug { "debug" } else { "release" };
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args([
            "+nightly",
            "build",
            "--quiet",
            "--package",
            "proxy-ebpf",
            "--bins",
        ])
        .args(["-Z", "build-std=core", "--target", "bpfel-unknown-none"]);
    if !opts.debug {
        cmd.arg("--release");
    }
    // The flags aya-build passes: the architecture cfg aya-ebpf needs for its helpers, and
    // full debug info so that bpf-linker emits BTF, which aya uses to load the maps.
    let mut rustflags = OsString::new();
    for (i, flag) in [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer cargo is stable; none of its settings may leak into the nightly build.
    for var in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    // bpf-linker may live in ~/.cargo/bin without that being on PATH (fresh CI shells).
    let cargo_bin = std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo/bin"),
        |h| PathBuf::from(h).join("bin"),
    );
    let mut path = OsString::from(cargo_bin);
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    cmd.env("PATH", path);

    let started = Instant::now();
    let status = cmd.status().context("starting cargo +nightly")?;
    if !status.success() {
        bail!("building the eBPF programs failed ({status}); the compiler's messages are above");
    }
    let built = root
        .join("target/bpfel-unknown-none")
        .join(profile)
        .join("proxy-ebpf");
    let bytes = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let dest = object_path();
    fs::create_dir_all(dest.parent().expect("object path has a parent"))?;
    if fs::read(&dest).ok().as_deref() != Some(bytes.as_slice()) {
        fs::write(&dest, &bytes).with_context(|| format!("writing {}", dest.display()))?;
    }
    eprintln!(
        "xtask: eBPF object {} ({} bytes) ready in {:.1?}",
        dest.display(),
        bytes.len(),
        started.elapsed()
    );
    Ok(dest)
}
