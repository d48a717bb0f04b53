//! hybrid-proxy's agent: a Kubernetes service proxy that programs every Service into
//! nftables (the authoritative path) and serves hot services from eBPF fast paths.

pub mod bpf;
pub mod model;
pub mod plan;
