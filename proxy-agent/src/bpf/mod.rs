//! The eBPF fast path: which services it serves (pure), the map writes of a sync (pure), and
//! the kernel side: loading, attaching and pinning the programs, and their maps.
//!
//! Entry points for the agent: [`FastPath::open`], [`FastPath::apply`],
//! [`FastPath::collect_garbage`], [`FastPath::sync_interfaces`] with [`InterfaceWatcher`],
//! [`FastPath::status`] and [`cleanup`]. Everything it does not serve passes unchanged to
//! nftables.

pub mod bench;
pub mod config;
pub mod eligibility;
pub mod fastpath;
pub mod kernel;
pub mod maglev;
pub mod netlink;
pub mod object;
pub mod reconcile;
pub mod store;
pub mod writes;

pub use config::{AccelerationMode, FastPathConfig, FlowTimeouts, PodInterfaces, XdpAttachMode};
pub use eligibility::{PortEligibility, Reason};
pub use fastpath::{FastPath, FastPathStatus, InterfaceChanges, InterfaceWatcher, cleanup};
pub use object::{BpfError, embedded_object};
pub use reconcile::{ApplyReport, GcReport};

#[cfg(test)]
mod tests;
