//! hybrid-proxy's agent: a Kubernetes service proxy that programs every Service into
//! nftables (the authoritative path) and serves hot services from eBPF fast paths.

pub mod bpf;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod health;
pub mod host;
pub mod metrics;
pub mod model;
pub mod nft;
pub mod plan;
pub mod preflight;
pub mod source;
pub mod sync;
