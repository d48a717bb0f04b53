//! Deciding whether a privileged test can run.
//!
//! Outside CI, a test that needs root prints why and skips when run as an ordinary user.
//! `cargo xtask test` sets `HYBRID_PROXY_REQUIRE_PRIVILEGED=1`, and CI sets `CI=true`: there a
//! missing privilege is a failure, never a silent skip.

fn required() -> bool {
    std::env::var_os("HYBRID_PROXY_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1")
        || std::env::var_os("CI").is_some_and(|v| v == "true")
}

/// Returns `true` when the test may go on; prints the reason and returns `false` to skip.
///
/// # Panics
/// When the test is required to run (CI) but the process is not root.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !required(),
        "{test}: needs root (network namespaces, nftables, eBPF), and privileged tests are required here"
    );
    eprintln!("SKIP {test}: needs root to create network namespaces and load eBPF programs");
    false
}

/// Skips (printing why) when the kernel lacks a feature; never used for things the test
/// suite installs itself.
pub fn kernel_lacks(test: &str, feature: &str, err: &dyn std::fmt::Display) {
    eprintln!("SKIP {test}: the kernel lacks {feature}: {err}");
}
