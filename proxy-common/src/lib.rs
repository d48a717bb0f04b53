//! Types shared by the agent (userspace) and the eBPF programs.
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]` with explicit padding and no
//! `bool`, so that both sides agree byte for byte; the layout tests at the bottom pin the
//! sizes and alignments. Addresses and ports are stored as they appear on the wire (network
//! byte order), so that the programs compare and copy them without swapping.
//!
//! The maps are pinned and outlive the agent. Any change to a type below, to a map's name,
//! kind or size, or to the meaning of a field must bump [`LAYOUT_VERSION`]: an agent that
//! finds pinned maps of another version does not adopt them (it rebuilds the fast path).
#![no_std]
#![expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding fields are public so that both sides can build the values"
)]

/// Version of the map layout. Stored in [`Meta::layout_version`] of the pinned `META` map.
pub const LAYOUT_VERSION: u32 = 5;

/// Slots in every Maglev table (a prime, as Maglev needs). Each backend owns about
/// `MAGLEV_SIZE / n` slots; 4093 keeps the imbalance under a few percent up to ~100 backends
/// and a table at 8 KiB.
pub const MAGLEV_SIZE: usize = 4093;

/// Most backends one service's backend set may have on the fast path (a larger set stays on
/// nftables). Maglev needs the table to be much larger than the set.
pub const MAX_BACKENDS: usize = 512;

/// Capacities of the maps (`max_entries`). Fixed in the object: they are part of the layout.
pub mod capacity {
    /// Service entries (VIP, port, protocol, scope): accelerated ones and, while the fast
    /// path runs, a counting entry for every other TCP/UDP service address. Per family:
    /// `HP_SERVICES` and `HP_SERVICES6` each have this many, as do the other per-family maps
    /// below.
    pub const SERVICES: u32 = 131_072;
    /// Maglev tables: two revisions of up to 16k backend sets.
    pub const MAGLEV: u32 = 32_768;
    /// Backends over every set and revision.
    pub const BACKENDS: u32 = 262_144;
    /// Connection-table entries (two per fast-path flow: forward and reply). The agent's
    /// flow-table setting overrides it, for both families.
    pub const CONNECTIONS: u32 = 524_288;
    /// ClientIP affinity entries.
    pub const AFFINITY: u32 = 65_536;
    /// Per-service counter slots (slot 0 is "none"), one per counted service port: 24 bytes
    /// per slot and per CPU, so 768 KiB per CPU.
    pub const SERVICE_STATS: u32 = 32_768;
    /// Entries of `HP_PORTS`, the agent's record of each counted service port.
    pub const PORTS: u32 = SERVICE_STATS;
    /// Pods of this node the programs can deliver to (`HP_LOCAL_EPS`).
    pub const LOCAL_ENDPOINTS: u32 = 8_192;
    /// Interfaces the programs are attached to (`HP_IFACES`).
    pub const INTERFACES: u32 = 8_192;
}

/// Which programs consult a service entry.
pub mod scope {
    /// TC ingress on pod-facing interfaces: traffic from this node's pods.
    pub const POD: u8 = 1;
    /// XDP on node interfaces: traffic from outside the node.
    pub const EXTERNAL: u8 = 2;
}

/// Which endpoint list of a service port a backend set holds.
pub mod set {
    /// The plan's `cluster_endpoints`.
    pub const CLUSTER: u8 = 0;
    /// The plan's `local_endpoints`.
    pub const LOCAL: u8 = 1;
    /// Added to the value for an IPv6 set. A dual-stack port has the same id in both
    /// families, and `HP_MAGLEV` is shared: the bit keeps the two families' tables apart
    /// (an IPv6 set's table indexes `HP_BACKENDS6`, an IPv4 set's `HP_BACKENDS`).
    pub const IPV6: u8 = 0x80;
}

/// Bits of [`ServiceValue::flags`].
pub mod service_flags {
    /// ClientIP session affinity, with [`super::ServiceValue::affinity_timeout_s`].
    pub const AFFINITY: u8 = 1;
    /// Not accelerated: the programs only count the packet (in the entry's counter slot) and
    /// pass it unchanged to nftables. Such an entry has no backend set.
    pub const COUNT_ONLY: u8 = 2;
    /// New flows of this (pod-scope, IPv4) entry bypass the node's stack: the programs
    /// deliver them with a redirect in both directions (see [`super::forwarding`]).
    pub const REDIRECT: u8 = 4;
}

/// Values of [`FlowKey::dir`].
pub mod dir {
    /// The tuple as the client sends it (to the service address).
    pub const FORWARD: u8 = 0;
    /// The tuple as the backend replies (backend to client).
    pub const REPLY: u8 = 1;
}

/// Values of [`FlowValue::owner`].
pub mod owner {
    /// Started by the fast path: translate every packet.
    pub const FAST: u8 = 1;
    /// Started by nftables before the service was promoted: pass every packet unchanged.
    pub const NFTABLES: u8 = 2;
}

/// TCP flag bits as in the TCP header's flags byte (also stored in [`FlowValue::tcp_flags`]).
/// How a flow's packets reach the other end ([`FlowValue::forwarding`]), fixed when the flow
/// starts so that both directions always take the same way.
pub mod forwarding {
    /// Translated, then handed to the node's stack (routing, conntrack, filter chains).
    pub const STACK: u8 = 0;
    /// Translated and redirected by the programs in both directions: the node's stack never
    /// sees the flow (it is not in conntrack; the connection table is its tracker).
    pub const REDIRECT: u8 = 1;
}

pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// An IPv6 address as stored in the maps: its 16 bytes in wire order, as four 32-bit words
/// (so that the programs compare, copy and checksum it a word at a time).
pub type Ipv6Words = [u32; 4];

/// Key of `SERVICES`: a service address as a packet addresses it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// IPv4 address, network order.
    pub addr: u32,
    /// Port, network order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// A [`scope`] value.
    pub scope: u8,
}

/// Value of `SERVICES`: which backend set serves the address, and how.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// The plan's `ServicePortId`: keys the backend set.
    pub id: u64,
    /// Revision of the backend set to use (see [`MaglevKey`]).
    pub revision: u32,
    /// ClientIP affinity timeout (seconds), when [`service_flags::AFFINITY`] is set.
    pub affinity_timeout_s: u32,
    /// Backends in the set (never zero in a written entry).
    pub backend_count: u16,
    /// A [`set`] value.
    pub set: u8,
    /// [`service_flags`] bits.
    pub flags: u8,
    /// Slot of the service's counters in `HP_SVC_STATS` (0: none).
    pub counter: u32,
}

/// Per-CPU value of `HP_SVC_STATS`: one service port's packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounter {
    /// Packets from clients to the service address, whichever path served them (the fast
    /// path, or nftables after the programs passed them): what `auto` mode measures. Replies
    /// are not counted, so the rate means the same on both paths.
    pub seen_packets: u64,
    /// Packets the fast path translated, both directions.
    pub fast_packets: u64,
    /// Of those, packets the programs delivered themselves (redirect), both directions.
    pub redirected_packets: u64,
}

/// Values of `HP_IFACES` (key: an interface index): which of our programs an interface
/// has, so that a redirect only ever leaves through an interface whose replies come back to
/// a program (a flow must never be redirected one way only).
pub mod iface {
    /// A pod-facing interface (TC ingress and egress).
    pub const POD: u32 = 1;
    /// A node interface (XDP, TC egress and the reply program on TC ingress).
    pub const NODE: u32 = 2;
}

/// Value of `HP_LOCAL_EPS` (key: a pod address of this node, IPv4, network order): where
/// the programs deliver a redirected packet for that pod. Written by the agent from the
/// node's routes and neighbours.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalEndpoint {
    /// The pod's host-side interface (a veth whose peer is in the pod).
    pub if_index: u32,
    /// The pod's own MAC address (all zero: unknown, the destination MAC is left as is).
    pub pod_mac: [u8; 6],
    /// The MAC address of the host-side interface (the source of delivered frames).
    pub host_mac: [u8; 6],
}

/// Longest service-port name `HP_PORTS` records (longer ones are cut).
pub const PORT_NAME_LEN: usize = 160;

/// Value of `HP_PORTS` (key: the service port's `ServicePortId`): what the agent decided
/// for a counted service port, so that `proxy-agent status` can explain the maps without
/// the agent. Written by the agent only; the programs never read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// `namespace/name port/PROTOCOL`, UTF-8, NUL-padded.
    pub name: [u8; PORT_NAME_LEN],
    /// Its slot in `HP_SVC_STATS`.
    pub counter: u32,
    /// Traffic from pods: 0 on the fast path, else the agent's code of why not.
    pub pods: u8,
    /// Traffic from outside (XDP): as `pods`.
    pub external: u8,
    pub _pad: u16,
}

impl Default for PortInfo {
    fn default() -> Self {
        Self {
            name: [0; PORT_NAME_LEN],
            counter: 0,
            pods: 0,
            external: 0,
            _pad: 0,
        }
    }
}

/// Key of `MAGLEV`: one revision of one backend set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    pub id: u64,
    pub revision: u32,
    pub set: u8,
    pub _pad: [u8; 3],
}

/// Value of `MAGLEV`: slot -> index of the backend in the set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevValue {
    pub slots: [u16; MAGLEV_SIZE],
    pub _pad: u16,
}

impl Default for MaglevValue {
    fn default() -> Self {
        Self {
            slots: [0; MAGLEV_SIZE],
            _pad: 0,
        }
    }
}

/// Key of `BACKENDS`: one backend of one revision of one set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub id: u64,
    pub revision: u32,
    pub set: u8,
    pub _pad: u8,
    pub index: u16,
}

/// Value of `BACKENDS`, and the address a flow is translated to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// IPv4 address, network order.
    pub addr: u32,
    /// Port, network order.
    pub port: u16,
    pub _pad: u16,
}

/// Key of `FLOWS`, the connection table: one direction of one flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Source address, network order.
    pub src: u32,
    /// Destination address, network order.
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// A [`dir`] value.
    pub dir: u8,
    pub _pad: u16,
}

/// Value of `FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowValue {
    /// The service port (`ServicePortId`) the flow belongs to; 0 for nftables-owned entries.
    pub id: u64,
    /// `bpf_ktime_get_coarse_ns()` (`CLOCK_MONOTONIC_COARSE`) of the last packet, refreshed
    /// at most every [`FLOW_REFRESH_NS`]; or when the agent wrote the entry.
    pub last_seen_ns: u64,
    /// Forward: the backend the flow was sent to. Reply: the service address to restore.
    pub nat: Backend,
    /// An [`owner`] value.
    pub owner: u8,
    /// OR of the TCP flags seen in this direction.
    pub tcp_flags: u8,
    /// A [`forwarding`] value, the same in both directions of a flow.
    pub forwarding: u8,
    pub _pad: u8,
    /// The service's counter slot (0: not counted).
    pub counter: u32,
}

/// How stale [`FlowValue::last_seen_ns`] may be before a packet refreshes it: writing it on
/// every packet would bounce the entry's cache line between CPUs for nothing.
pub const FLOW_REFRESH_NS: u64 = 1_000_000_000;

/// Key of `AFFINITY`: one client of one backend set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    pub id: u64,
    /// Client address, network order.
    pub client: u32,
    pub set: u8,
    pub _pad: [u8; 3],
}

/// Value of `AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// `bpf_ktime_get_coarse_ns()` when the client last started a flow.
    pub last_used_ns: u64,
    pub backend: Backend,
}

/// Key of `SERVICES6`: an IPv6 service address as a packet addresses it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey6 {
    pub addr: Ipv6Words,
    /// Port, network order.
    pub port: u16,
    /// IP protocol number (next header).
    pub proto: u8,
    /// A [`scope`] value.
    pub scope: u8,
}

/// Value of `BACKENDS6` (key: [`BackendKey`] of a set with [`set::IPV6`]), and the address
/// an IPv6 flow is translated to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend6 {
    pub addr: Ipv6Words,
    /// Port, network order.
    pub port: u16,
    pub _pad: u16,
}

/// Key of `FLOWS6`, the IPv6 connection table: one direction of one flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey6 {
    pub src: Ipv6Words,
    pub dst: Ipv6Words,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// A [`dir`] value.
    pub dir: u8,
    pub _pad: u16,
}

/// Value of `FLOWS6`: as [`FlowValue`], with an IPv6 translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowValue6 {
    pub id: u64,
    pub last_seen_ns: u64,
    pub nat: Backend6,
    pub owner: u8,
    pub tcp_flags: u8,
    /// A [`forwarding`] value (IPv6 flows are always [`forwarding::STACK`] today).
    pub forwarding: u8,
    pub _pad: u8,
    pub counter: u32,
    pub _pad2: u32,
}

/// Key of `AFFINITY6`: one IPv6 client of one backend set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey6 {
    pub id: u64,
    pub client: Ipv6Words,
    pub set: u8,
    pub _pad: [u8; 7],
}

/// Value of `AFFINITY6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue6 {
    pub last_used_ns: u64,
    pub backend: Backend6,
    pub _pad: u32,
}

/// Value of the one-entry `META` array: who wrote the pinned maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`LAYOUT_VERSION`] of the agent that created the maps.
    pub layout_version: u32,
    /// The [`forwarding`] value in force for Services without a forwarding annotation, as
    /// the agent last decided it (for `status` and `verify` without the agent).
    pub forwarding: u32,
    /// Generation of the last plan applied to the maps.
    pub generation: u64,
    /// Hash of the eBPF object whose programs are attached.
    pub object_hash: u64,
}

/// Packet and byte counters: per-CPU values of `STATS`.
///
/// Every CPU increments its own copy without atomics (the BPF target has no atomic
/// compare-and-swap), and the agent sums the copies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Slots of the `STATS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatIndex {
    /// Every packet the XDP program saw.
    XdpSeen = 0,
    /// Every packet the TC ingress program saw.
    TcIngressSeen = 1,
    /// Every packet the TC egress program saw.
    TcEgressSeen = 2,
    /// New flows the fast path started (DNAT of a first packet).
    NewFlow = 3,
    /// Later packets of fast-path flows translated from the connection table.
    FlowHit = 4,
    /// Replies translated back to the service address.
    ReplyTranslated = 5,
    /// New flows passed to nftables because the connection table was full.
    TableFull = 6,
    /// Packets of nftables-owned flows passed unchanged.
    NftablesOwned = 7,
    /// New flows passed because the backend is the client itself (hairpin).
    Hairpin = 8,
    /// TCP packets to a fast-path service that are not a first SYN and have no flow.
    NotFirstPacket = 9,
    /// IPv4 fragments and packets with IP options, IPv6 packets with extension headers
    /// (fragments included), passed unchanged.
    FragmentOrOptions = 10,
    /// New flows passed because their reply tuple is taken by another flow.
    ReplyClash = 11,
    /// New flows passed because a backend set was incomplete (never expected).
    NoBackend = 12,
    /// Packets from clients the programs delivered themselves (redirect forwarding).
    Redirected = 13,
    /// Replies the programs translated and delivered themselves at the ingress where they
    /// entered the node.
    RedirectedReply = 14,
    /// Packets of redirect flows handed to the stack because no plain forward was found
    /// (no route, a tunnel or L3 device, forwarding disabled, TTL expiring).
    RedirectNoRoute = 15,
    /// Packets of redirect flows handed to the stack because they exceed the egress MTU
    /// (the stack then sends ICMP "fragmentation needed" or fragments).
    RedirectTooBig = 16,
    /// Every packet the TC program on node interfaces' ingress saw.
    TcReplySeen = 17,
}

impl StatIndex {
    /// Number of slots the `STATS` array must hold.
    pub const COUNT: u32 = 18;

    pub const ALL: [StatIndex; 18] = [
        Self::XdpSeen,
        Self::TcIngressSeen,
        Self::TcEgressSeen,
        Self::NewFlow,
        Self::FlowHit,
        Self::ReplyTranslated,
        Self::TableFull,
        Self::NftablesOwned,
        Self::Hairpin,
        Self::NotFirstPacket,
        Self::FragmentOrOptions,
        Self::ReplyClash,
        Self::NoBackend,
        Self::Redirected,
        Self::RedirectedReply,
        Self::RedirectNoRoute,
        Self::RedirectTooBig,
        Self::TcReplySeen,
    ];

    /// A short name for status output and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::XdpSeen => "xdp_seen",
            Self::TcIngressSeen => "tc_ingress_seen",
            Self::TcEgressSeen => "tc_egress_seen",
            Self::NewFlow => "new_flow",
            Self::FlowHit => "flow_hit",
            Self::ReplyTranslated => "reply_translated",
            Self::TableFull => "table_full",
            Self::NftablesOwned => "nftables_owned",
            Self::Hairpin => "hairpin",
            Self::NotFirstPacket => "not_first_packet",
            Self::FragmentOrOptions => "fragment_or_options",
            Self::ReplyClash => "reply_clash",
            Self::NoBackend => "no_backend",
            Self::Redirected => "redirected",
            Self::RedirectedReply => "redirected_reply",
            Self::RedirectNoRoute => "redirect_no_route",
            Self::RedirectTooBig => "redirect_too_big",
            Self::TcReplySeen => "tc_reply_seen",
        }
    }
}

/// Names of the maps, as the programs declare them and the agent pins them.
pub mod map_names {
    pub const META: &str = "HP_META";
    pub const STATS: &str = "STATS";
    pub const SERVICES: &str = "HP_SERVICES";
    pub const MAGLEV: &str = "HP_MAGLEV";
    pub const BACKENDS: &str = "HP_BACKENDS";
    pub const FLOWS: &str = "HP_FLOWS";
    pub const AFFINITY: &str = "HP_AFFINITY";
    pub const SERVICE_STATS: &str = "HP_SVC_STATS";
    pub const PORTS: &str = "HP_PORTS";
    pub const SERVICES6: &str = "HP_SERVICES6";
    pub const BACKENDS6: &str = "HP_BACKENDS6";
    pub const FLOWS6: &str = "HP_FLOWS6";
    pub const AFFINITY6: &str = "HP_AFFINITY6";
    pub const LOCAL_ENDPOINTS: &str = "HP_LOCAL_EPS";
    pub const INTERFACES: &str = "HP_IFACES";
    pub const ALL: [&str; 15] = [
        META,
        STATS,
        SERVICES,
        MAGLEV,
        BACKENDS,
        FLOWS,
        AFFINITY,
        SERVICE_STATS,
        PORTS,
        SERVICES6,
        BACKENDS6,
        FLOWS6,
        AFFINITY6,
        LOCAL_ENDPOINTS,
        INTERFACES,
    ];
}

/// Names of the programs.
pub mod program_names {
    pub const XDP: &str = "hp_xdp";
    pub const TC_INGRESS: &str = "hp_tc_ingress";
    pub const TC_EGRESS: &str = "hp_tc_egress";
    /// TC ingress of node interfaces: replies of redirect flows from other nodes.
    pub const TC_REPLY: &str = "hp_tc_reply";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is `#[repr(C)]` plain data made of integers only, with every padding
    // byte an explicit field (the layout tests check there is no implicit padding).
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::MaglevKey {}
    unsafe impl aya::Pod for super::MaglevValue {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::Meta {}
    unsafe impl aya::Pod for super::ServiceCounter {}
    unsafe impl aya::Pod for super::PortInfo {}
    unsafe impl aya::Pod for super::ServiceKey6 {}
    unsafe impl aya::Pod for super::Backend6 {}
    unsafe impl aya::Pod for super::FlowKey6 {}
    unsafe impl aya::Pod for super::FlowValue6 {}
    unsafe impl aya::Pod for super::AffinityKey6 {}
    unsafe impl aya::Pod for super::AffinityValue6 {}
    unsafe impl aya::Pod for super::LocalEndpoint {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;

    /// Sizes equal the sum of the fields (no implicit padding) and are pinned: changing one
    /// changes the layout, which needs a [`LAYOUT_VERSION`] bump.
    #[test]
    fn layouts_are_pinned() {
        assert_eq!(LAYOUT_VERSION, 5, "bump together with the sizes below");
        assert_eq!((size_of::<Counter>(), align_of::<Counter>()), (16, 8));
        assert_eq!((size_of::<ServiceKey>(), align_of::<ServiceKey>()), (8, 4));
        assert_eq!(
            (size_of::<ServiceValue>(), align_of::<ServiceValue>()),
            (24, 8)
        );
        assert_eq!((size_of::<MaglevKey>(), align_of::<MaglevKey>()), (16, 8));
        assert_eq!(size_of::<MaglevValue>(), 2 * MAGLEV_SIZE + 2);
        assert_eq!((size_of::<BackendKey>(), align_of::<BackendKey>()), (16, 8));
        assert_eq!((size_of::<Backend>(), align_of::<Backend>()), (8, 4));
        assert_eq!((size_of::<FlowKey>(), align_of::<FlowKey>()), (16, 4));
        assert_eq!((size_of::<FlowValue>(), align_of::<FlowValue>()), (32, 8));
        assert_eq!(
            (size_of::<AffinityKey>(), align_of::<AffinityKey>()),
            (16, 8)
        );
        assert_eq!(
            (size_of::<AffinityValue>(), align_of::<AffinityValue>()),
            (16, 8)
        );
        assert_eq!((size_of::<Meta>(), align_of::<Meta>()), (24, 8));
        assert_eq!(
            (size_of::<ServiceCounter>(), align_of::<ServiceCounter>()),
            (24, 8)
        );
        assert_eq!(
            (size_of::<LocalEndpoint>(), align_of::<LocalEndpoint>()),
            (16, 4)
        );
        assert_eq!(
            (size_of::<PortInfo>(), align_of::<PortInfo>()),
            (PORT_NAME_LEN + 8, 4)
        );
        assert_eq!(
            (size_of::<ServiceKey6>(), align_of::<ServiceKey6>()),
            (20, 4)
        );
        assert_eq!((size_of::<Backend6>(), align_of::<Backend6>()), (20, 4));
        assert_eq!((size_of::<FlowKey6>(), align_of::<FlowKey6>()), (40, 4));
        assert_eq!((size_of::<FlowValue6>(), align_of::<FlowValue6>()), (48, 8));
        assert_eq!(
            (size_of::<AffinityKey6>(), align_of::<AffinityKey6>()),
            (32, 8)
        );
        assert_eq!(
            (size_of::<AffinityValue6>(), align_of::<AffinityValue6>()),
            (32, 8)
        );
    }

    /// Where each field of the IPv6 types sits: every byte is a named field, so a key
    /// the agent builds and one the programs build hash the same.
    #[test]
    fn ipv6_fields_leave_no_gaps() {
        use core::mem::offset_of;
        assert_eq!(
            [
                offset_of!(ServiceKey6, port),
                offset_of!(ServiceKey6, proto),
                offset_of!(ServiceKey6, scope)
            ],
            [16, 18, 19]
        );
        assert_eq!(
            [offset_of!(Backend6, port), offset_of!(Backend6, _pad)],
            [16, 18]
        );
        assert_eq!(
            [
                offset_of!(FlowKey6, dst),
                offset_of!(FlowKey6, sport),
                offset_of!(FlowKey6, dport),
                offset_of!(FlowKey6, proto),
                offset_of!(FlowKey6, dir),
                offset_of!(FlowKey6, _pad)
            ],
            [16, 32, 34, 36, 37, 38]
        );
        assert_eq!(
            [
                offset_of!(FlowValue6, last_seen_ns),
                offset_of!(FlowValue6, nat),
                offset_of!(FlowValue6, owner),
                offset_of!(FlowValue6, tcp_flags),
                offset_of!(FlowValue6, forwarding),
                offset_of!(FlowValue6, _pad),
                offset_of!(FlowValue6, counter),
                offset_of!(FlowValue6, _pad2)
            ],
            [8, 16, 36, 37, 38, 39, 40, 44]
        );
        assert_eq!(
            [
                offset_of!(AffinityKey6, client),
                offset_of!(AffinityKey6, set),
                offset_of!(AffinityKey6, _pad)
            ],
            [8, 24, 25]
        );
        assert_eq!(
            [
                offset_of!(AffinityValue6, backend),
                offset_of!(AffinityValue6, _pad)
            ],
            [8, 28]
        );
    }

    #[test]
    fn the_ipv6_set_bit_is_apart_from_the_set_values() {
        for s in [set::CLUSTER, set::LOCAL] {
            assert_eq!(s & set::IPV6, 0);
        }
    }

    #[test]
    fn maglev_table_is_prime_and_larger_than_any_set() {
        let m = MAGLEV_SIZE;
        assert!(
            (2..m)
                .take_while(|d| d * d <= m)
                .all(|d| !m.is_multiple_of(d))
        );
        const { assert!(MAX_BACKENDS * 4 <= MAGLEV_SIZE && MAX_BACKENDS <= u16::MAX as usize) };
    }

    #[test]
    fn stat_slots_are_dense() {
        for (i, slot) in StatIndex::ALL.iter().enumerate() {
            assert_eq!(*slot as u32 as usize, i);
        }
        assert_eq!(StatIndex::ALL.len(), StatIndex::COUNT as usize);
    }
}
