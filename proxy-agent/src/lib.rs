//! hybrid-proxy's agent: a Kubernetes service proxy that programs every Service into
//! nftables (the authoritative path) and serves hot services from eBPF fast paths.

#[cfg(feature = "agent")]
pub mod bpf;
#[cfg(feature = "agent")]
pub mod cli;
pub mod config;
pub mod conntrack;
#[cfg(feature = "agent")]
pub mod health;
pub mod host;
#[cfg(feature = "agent")]
pub mod metrics;
pub mod model;
pub mod nft;
pub mod plan;
#[cfg(feature = "agent")]
pub mod preflight;
pub mod source;
#[cfg(feature = "agent")]
pub mod sync;
