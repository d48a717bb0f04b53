//! Shared pieces of hybrid-proxy's integration tests: a fake Kubernetes API server,
//! network-namespace labs, test servers and clients, privileged test gating and packet
//! crafting.
//!
//! All traffic a test sends stays between namespaces it created; nothing here touches the
//! root namespace's routes or firewall.

pub mod bench;
pub mod bpf_harness;
pub mod bpf_lab;
pub mod fake_api;
pub mod lab;
pub mod netns;
pub mod packet;
pub mod privileged;
pub mod reliability;
pub mod traffic;

/// The forwarding the fast-path scenarios run with: `HYBRID_PROXY_TEST_FORWARDING`
/// (`auto`, `redirect` or `stack`; default `auto`, which is `redirect` in the labs).
/// `cargo xtask test` runs the scenarios once more with `stack`.
///
/// # Panics
/// On any other value.
pub fn forwarding_under_test() -> &'static str {
    match std::env::var("HYBRID_PROXY_TEST_FORWARDING").as_deref() {
        Err(_) | Ok("" | "auto") => "auto",
        Ok("redirect") => "redirect",
        Ok("stack") => "stack",
        Ok(other) => panic!("HYBRID_PROXY_TEST_FORWARDING={other}: use auto, redirect or stack"),
    }
}
