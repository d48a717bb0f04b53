//! The eBPF fast path: which services it serves (pure), the map writes of a sync (pure), and
//! the kernel side: loading, attaching and pinning the programs, and their maps.
//!
//! # Entry points
//!
//! - [`FastPath::open`]`(&FastPathConfig, node_pod_cidrs)`: load the embedded programs or
//!   adopt the pinned maps of a previous agent (flows included; another layout version is
//!   rebuilt instead), attach XDP + TC egress to the node interfaces and TC ingress + egress
//!   to the pod-facing ones, pin maps and links under `pin_path`.
//! - [`FastPath::apply`]`(&ProxyPlan, generation)`: after nftables applied the same plan.
//! - [`FastPath::collect_garbage`]: periodically (nothing else removes ended flows).
//! - [`FastPath::sync_interfaces`], woken by [`InterfaceWatcher::wait`].
//! - [`FastPath::observe`]`(&ProxyPlan, generation)`: in `auto` mode, every
//!   [`OBSERVE_PERIOD`]: reads the per-service counters, runs the hot-service [`policy`], and
//!   re-applies the plan when a service moved.
//! - [`FastPath::gauges`] for the `hybrid_proxy_fastpath_*` metrics, [`FastPath::status`],
//!   [`FastPath::set_mode`], [`FastPath::set_auto_thresholds`], and [`cleanup`]`(pin_path)`.
//!
//! # Measuring every service
//!
//! While the mode is not `off`, every TCP/UDP service address has an entry in its family's
//! service map (`HP_SERVICES`, `HP_SERVICES6`): accelerated, or a *counting* entry with
//! which the programs count the packet in the service port's per-CPU slot and pass it on to
//! nftables unchanged. Packets from clients are counted whichever path serves them (replies
//! are not), so a rate means the same on both paths; `auto` mode promotes and demotes on it.
//! The cost is a hash lookup that packets to service addresses without a flow entry paid
//! anyway, and an increment. Each counted port also has a record in `HP_PORTS` (its name
//! and the decision for each path; for a dual-stack port, its first family's), so that
//! `proxy-agent status` can explain the pinned maps without the agent.
//!
//! # Datapath (see `proxy-ebpf`)
//!
//! The connection table is looked up before the service table, so a flow keeps the path and
//! backend it started on: promotion takes new flows only (a TCP flow starts only with a SYN),
//! demotion leaves fast-path flows on their backend until they end. Translation happens at
//! the edges (DNAT at XDP / TC ingress, reverse translation at TC egress), so kernel
//! conntrack only ever sees the backend's tuple.
//!
//! **Both families.** IPv4 and IPv6 each have a service, backend, connection and affinity
//! map; the Maglev tables, counters and port records are shared. A dual-stack port has one
//! id and one counter slot, and two backend sets (the IPv6 one's `set` value carries
//! `proxy_common::set::IPV6`, so the two tables never collide). In the agent, both families'
//! entries travel as one [`writes::EntryKey`] / [`writes::Endpoint`], so a sync orders and
//! applies them together, with the same guarantees.
//!
//! **Connection table: a preallocated hash map with agent-side garbage collection, not an
//! LRU.** An LRU evicts the least recently used entry when full, which is an idle but
//! established flow; its next packet would reach nftables as a mid-stream packet to the
//! service address and be sent to a random backend. With a plain hash map a full table
//! refuses the *new* flow, which then goes to nftables unchanged (counted as `table_full`),
//! and established flows are never touched. The price is that the agent must remove ended
//! flows ([`FastPath::collect_garbage`], idle timeouts by TCP state, [`FlowTimeouts`]). The
//! affinity table is an LRU: losing an entry only lets a client's next flow choose afresh.
//! The IPv6 connection table is not preallocated (same capacity, same no-eviction rule), so
//! that an IPv4-only node does not pay for a second table.
//!
//! **Backend changes** are written under a new revision of the backend set (backends, then
//! its Maglev table), then each service entry is switched to it with one map update; the
//! revision before stays until the next change of that set, for packets that read the entry
//! just before the switch. A reader therefore sees a whole old set or a whole new one.
//!
//! **Promotion and nftables' UDP flows**: before newly promoted addresses get their entries,
//! the kernel's conntrack is read over ctnetlink and every flow to them is marked
//! nftables-owned in the connection table (its packets then pass unchanged); conntrack is
//! read again after the entries are written. Residual race: a UDP flow whose first packet
//! reached nftables after the first read and whose second packet reached the fast path
//! before its entry was marked is split (the window is one map update). TCP cannot be split:
//! only a SYN starts a fast-path flow (a SYN retransmitted across the promotion is covered by
//! the marking, as conntrack has the first one).
//!
//! # Limits (each passes the traffic to nftables unless said otherwise)
//!
//! - ICMP errors (of either family) about fast-path flows are not translated (they pass
//!   unchanged and the client ignores them); fragments, IPv4 options and IPv6 extension
//!   headers (any next header but TCP or UDP directly after the fixed header) are not
//!   handled.
//! - Hairpin (a pod reaching itself) and a reply tuple already used by another flow (the same
//!   client port to two services sharing a backend) pass, counted.
//! - `externalTrafficPolicy: Cluster` is never accelerated at XDP, even with every endpoint
//!   local: kube-proxy masquerades it, and the backend would see another source address.
//! - Node ports are captured on the plan's node-port addresses; with `nodePortAddresses`
//!   covering every local address, on the node's addresses from its Node object.
//! - Replies must leave through an interface the programs are attached to (a pod-facing one,
//!   or a configured node interface): list every uplink in `node_interfaces`.
//! - Kernels before 6.6 get clsact filters instead of TCX links: they stay attached without
//!   pins, and an upgrade replaces them with a short gap rather than atomically.
//! - A one-shot `apply` leaves the fast path serving, but nothing collects garbage until an
//!   agent runs again; a full table only sends new flows to nftables.
//! - A pinned layout of another version is rebuilt: fast-path flows then restart through
//!   nftables (established TCP connections on the fast path break).

pub mod bench;
pub mod config;
pub mod eligibility;
pub mod fastpath;
pub mod forwarding;
pub mod inspect;
pub mod kernel;
pub mod maglev;
pub mod netlink;
pub mod object;
pub mod policy;
pub mod reconcile;
pub mod store;
pub mod table;
pub mod verify;
pub mod writes;

pub use config::{
    AccelerationMode, AutoThresholds, FastPathConfig, FlowTimeouts, PodInterfaces, XdpAttachMode,
};
pub use eligibility::{PortEligibility, Reason};
pub use fastpath::{
    FastPath, FastPathGauges, FastPathStatus, InterfaceChanges, InterfaceWatcher, OBSERVE_PERIOD,
    ObserveReport, cleanup, is_pinned,
};
pub use object::{BpfError, embedded_object};
pub use reconcile::{ApplyReport, GcReport};

#[cfg(test)]
mod tests;
