//! Installing what the tasks need when the machine lacks it.
//!
//! Every install says what it does before doing it. Its output goes to a log file under
//! `target/xtask-logs/`; on failure the task prints the log's tail and the log's path
//! instead of pages of installer output.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::workspace_root;

/// LLVM major version bpf-linker is built against; Debian 12 carries it in
/// bookworm-security.
const LLVM_MAJOR: u32 = 22;
/// Pinned so that a new bpf-linker release cannot break a CI run.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests use at run time: `nft`, `ip`, `conntrack`, `ethtool` (to turn
/// checksum offload off so that checksums are really checked), `iptables` (kube-proxy
/// leftovers in migration tests) and `curl`.
pub const TEST_PACKAGES: &[&str] = &[
    "nftables",
    "iproute2",
    "conntrack",
    "ethtool",
    "iptables",
    "curl",
];

/// Third-party load and servers for the data-plane benchmark (installed without starting
/// any service: the benchmark runs nginx itself, inside a lab namespace).
pub const BENCH_PACKAGES: &[&str] = &["nginx", "wrk"];

/// Installs `packages` without letting their maintainer scripts start services on the
/// host (Debian's `policy-rc.d` convention: exit 101 forbids every start).
pub fn ensure_packages_without_services(packages: &[&str]) -> anyhow::Result<()> {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    if policy.exists() || packages.iter().all(|p| package_installed(p)) {
        return ensure_packages(packages);
    }
    fs::write(
        policy,
        "#!/bin/sh\n# written by cargo xtask for one install\nexit 101\n",
    )
    .context("writing /usr/sbin/policy-rc.d")?;
    fs::set_permissions(
        policy,
        <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )?;
    let result = ensure_packages(packages);
    let _ = fs::remove_file(policy);
    result
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn log_dir() -> PathBuf {
    let dir = workspace_root().join("target/xtask-logs");
    let _ = fs::create_dir_all(&dir);
    dir
}

/// Runs an install command with its output captured in `target/xtask-logs/<name>.log`.
pub fn run_logged(name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    let log_path = log_dir().join(format!("{name}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("starting {cmd:?}"))?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    for line in tail.iter().rev() {
        eprintln!("    | {line}");
    }
    bail!(
        "{name} failed ({status}); full output in {}",
        log_path.display()
    )
}

fn package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

/// Installs the Debian packages that are missing, after one `apt-get update`.
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!("missing Debian packages: {list}; install them as root: apt-get install -y {list}");
    }
    eprintln!("xtask: installing Debian packages: {list}");
    run_logged(
        "apt-get-update",
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update (is a Debian mirror reachable?)")?;
    run_logged(
        "apt-get-install",
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("apt-get install {list}"))
}

fn nightly_has(component: &str) -> anyhow::Result<bool> {
    let out = Command::new("rustup")
        .args(["+nightly", "component", "list", "--installed"])
        .output()
        .context("running rustup (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: `rustup toolchain install nightly` ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with(component)))
}

/// Installs a component of the nightly toolchain when it is missing.
pub fn ensure_nightly_component(component: &str) -> anyhow::Result<()> {
    if nightly_has(component)? {
        return Ok(());
    }
    eprintln!("xtask: installing {component} for nightly");
    run_logged(
        &format!("rustup-{component}"),
        Command::new("rustup").args(["+nightly", "component", "add", component]),
    )
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        PathBuf::from,
    );
    home.join("bin").join(name)
}

fn bpf_linker_works() -> bool {
    let on_path = Command::new("bpf-linker").arg("--version").output();
    on_path.is_ok_and(|o| o.status.success())
        || Command::new(cargo_bin("bpf-linker"))
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The eBPF toolchain: nightly's `rust-src` (for `-Z build-std=core`) and bpf-linker built
/// against LLVM 22.
pub fn ensure_ebpf_toolchain() -> anyhow::Result<()> {
    // -Z build-std=core needs the standard library's sources.
    ensure_nightly_component("rust-src")?;
    if bpf_linker_works() {
        return Ok(());
    }
    ensure_packages(&[
        &format!("llvm-{LLVM_MAJOR}-dev"),
        &format!("libpolly-{LLVM_MAJOR}-dev"),
    ])
    .context("bpf-linker needs LLVM's development files")?;
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} \
         (cargo install, about two minutes)"
    );
    let llvm_prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    run_logged(
        "cargo-install-bpf-linker",
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            // bpf-linker's build script reads LLVM_PREFIX; without it, it takes the first
            // llvm-config on PATH, which on Debian 12 is LLVM 14.
            .env("LLVM_PREFIX", &llvm_prefix)
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but does not run; see target/xtask-logs/");
    }
    Ok(())
}

/// Makes sure bpffs is mounted at `/sys/fs/bpf`, where the agent pins its maps and links.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.next();
        f.next() == Some("/sys/fs/bpf") && f.next() == Some("bpf")
    }) {
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted at /sys/fs/bpf; as root: mount -t bpf bpf /sys/fs/bpf");
    }
    eprintln!("xtask: mounting bpffs at /sys/fs/bpf");
    fs::create_dir_all(Path::new("/sys/fs/bpf")).ok();
    run_logged(
        "mount-bpffs",
        Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
    )
}
