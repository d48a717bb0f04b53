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
