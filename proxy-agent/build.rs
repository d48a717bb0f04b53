//! Embeds the eBPF object when `cargo xtask build-ebpf` has produced it.
//!
//! The agent must also build on stable alone (no nightly, no bpf-linker), in which case it
//! serves through nftables only and says at run time how to get the fast path.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hybrid_proxy_ebpf)");
    println!("cargo::rerun-if-env-changed=HYBRID_PROXY_EBPF_OBJECT");
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");

    let object = if let Some(path) = env::var_os("HYBRID_PROXY_EBPF_OBJECT") {
        PathBuf::from(path)
    } else {
        let target = env::var_os("CARGO_TARGET_DIR").map_or_else(
            || PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../target"),
            PathBuf::from,
        );
        let dir = target.join("ebpf");
        // Watch the directory rather than the file: cargo re-runs a build script on every
        // build while a watched path is missing, and the directory can exist before the
        // object does.
        let _ = std::fs::create_dir_all(&dir);
        println!("cargo::rerun-if-changed={}", dir.display());
        dir.join("proxy-ebpf.o")
    };
    if object.is_file() {
        println!("cargo::rerun-if-changed={}", object.display());
        println!("cargo::rustc-cfg=hybrid_proxy_ebpf");
        println!(
            "cargo::rustc-env=HYBRID_PROXY_EBPF_OBJECT={}",
            object.display()
        );
    }
}
