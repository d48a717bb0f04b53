//! The nftables path: the authoritative datapath for every Service.
//!
//! `render` turns a plan into the ruleset of our own tables (`ip hybrid-proxy` and
//! `ip6 hybrid-proxy`), `syncer` writes it, in full or only what changed, as one
//! [`Transaction`] per sync through an [`NftBackend`]: the `nft` command, or an in-memory
//! fake with the kernel's atomicity and reference checks for tests.
//!
//! Why `nft -f` with text: the same `nft` parses text about twice as fast as the JSON the
//! `nftables` crate produces (measured at 10,000 Services: 2.0 s text vs 3.9 s JSON in the
//! rule-per-endpoint layout), and linking libnftables in-process would tie the agent's build
//! to the host's library version for no measured gain; one process per sync costs a few
//! milliseconds.

mod backend;
mod fake;
mod libnft;
pub mod render;
mod syncer;
mod transaction;
pub mod verify;

use std::fmt;

pub use backend::{NftBackend, NftCli, TableObjects};
pub use fake::FakeNft;
pub use syncer::{NftSyncer, SyncKind, SyncReport};
use thiserror::Error;
pub use transaction::{BaseChain, Command, Transaction};
pub use verify::{Difference, verify};

use crate::model::IpFamily;

/// Name of our tables in both families.
pub const TABLE: &str = "hybrid-proxy";

/// nftables address family of one of our tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::Ip, Family::Ip6];

    /// `ip` or `ip6`, as in `ip daddr`.
    pub fn ip(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Ip6 => "ip6",
        }
    }

    pub fn addr_type(self) -> &'static str {
        match self {
            Self::Ip => "ipv4_addr",
            Self::Ip6 => "ipv6_addr",
        }
    }

    pub fn ip_family(self) -> IpFamily {
        match self {
            Self::Ip => IpFamily::V4,
            Self::Ip6 => IpFamily::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ip())
    }
}

/// Failures of the nftables path.
#[derive(Debug, Error)]
pub enum NftError {
    #[error("`{program}` not found: install nftables (nft >= 1.0.1)")]
    NotFound { program: String },
    #[error("running `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft rejected the transaction ({status}): {stderr}")]
    Rejected { status: String, stderr: String },
    #[error("nft could not list table {family} {TABLE}: {stderr}")]
    List { family: Family, stderr: String },
    /// Raised by the fake backend, with the kernel's errno name.
    #[error("{errno}: {what}")]
    Kernel { errno: &'static str, what: String },
}

#[cfg(test)]
mod tests;
