//! Where the eBPF object comes from.
//!
//! `cargo xtask build-ebpf` writes the object to `target/ebpf/proxy-ebpf.o`; the agent's
//! build script embeds it when it is there (or `HYBRID_PROXY_EBPF_OBJECT` at build time names
//! another file). A stable-only build has no object and serves through nftables alone.

use thiserror::Error;

/// Failures of the eBPF fast path. None of them stops the agent: it keeps serving through
/// nftables and reports the reason.
#[derive(Debug, Error)]
pub enum BpfError {
    #[error("built without eBPF programs: run `cargo xtask build-ebpf`, then rebuild the agent")]
    NotBuilt,
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program `{name}` is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("eBPF map `{name}` is missing from the object")]
    MissingMap { name: &'static str },
    #[error("eBPF program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no interface `{interface}`")]
    NoInterface { interface: String },
    #[error("attaching {hook:?} to `{interface}`")]
    Attach {
        interface: String,
        hook: super::kernel::Hook,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("adopting the pinned {hook:?} link of `{interface}`")]
    Link {
        interface: String,
        hook: super::kernel::Hook,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning the link of `{interface}`")]
    Pin {
        interface: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("writing the maps")]
    Store(#[from] super::store::StoreError),
}

#[cfg(hybrid_proxy_ebpf)]
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("HYBRID_PROXY_EBPF_OBJECT"));

/// The eBPF object embedded at build time.
pub fn embedded_object() -> Result<&'static [u8], BpfError> {
    #[cfg(hybrid_proxy_ebpf)]
    {
        Ok(OBJECT)
    }
    #[cfg(not(hybrid_proxy_ebpf))]
    {
        Err(BpfError::NotBuilt)
    }
}
