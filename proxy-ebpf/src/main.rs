//! hybrid-proxy's datapath programs.
//!
//! - `hp_xdp` (XDP, node interfaces): north-south flows to a hot service's NodePort, LB IP or
//!   ExternalIP whose backends are local are translated to a backend before the kernel sees
//!   them.
//! - `hp_tc_ingress` (TC ingress, pod-facing interfaces): flows from this node's pods to a hot
//!   service are translated to a backend (local or remote) before the kernel sees them.
//! - `hp_tc_egress` (TC egress, pod-facing and node interfaces): replies of fast-path flows
//!   get the service address back after the kernel routed them.
//!
//! So the kernel, conntrack included, only ever sees the backend's tuple. Every packet the
//! programs do not fully handle passes unchanged to the kernel, where nftables serves it.
//!
//! Both families are served: IPv4 (`v4.rs`: option-less, unfragmented TCP/UDP) and IPv6
//! (`v6.rs`: TCP/UDP directly after the fixed header; any extension header passes). Each
//! family has its own service, backend, connection and affinity maps (`HP_SERVICES6`, ...
//! with 16-byte addresses) and shares the Maglev tables, counters and port records. The
//! connection-table logic (`flow.rs`) is written once and compiled into each family's
//! module, so the IPv4 path does exactly what it did before IPv6 was added: a packet is
//! tried as IPv4 first and as IPv6 only when the IPv4 path declined it.
//!
//! While the fast path runs, every TCP/UDP service address has an entry in `HP_SERVICES`
//! or `HP_SERVICES6`, accelerated or not: a `COUNT_ONLY` entry makes the programs count the
//! packet in the service's per-CPU slot and pass it on unchanged. That is what `auto` mode
//! measures to decide which services are hot, for those nftables serves too.
//! The connection table (`HP_FLOWS`, `HP_FLOWS6`) is consulted before the service table, so
//! a flow stays on the path and backend it started on whatever happens to the service
//! afterwards.
//!
//! Built for `bpfel-unknown-none` by `cargo xtask build-ebpf`. On the host the crate still
//! compiles (so that clippy checks the program code on stable) into a binary that only says
//! where the real build comes from.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![expect(
    clippy::inline_always,
    reason = "every helper on the packet path is inlined on purpose: BPF-to-BPF calls cost \
              instructions and complicate the verifier's bounds tracking"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros take the context by value"
)]
#![cfg_attr(
    not(target_arch = "bpf"),
    expect(dead_code, reason = "on the host only the stub `main` is used")
)]

mod v4;
mod v6;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_PIPE, xdp_action},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use proxy_common::{
    AffinityKey, AffinityKey6, AffinityValue, AffinityValue6, Backend, Backend6, BackendKey,
    Counter, FlowKey, FlowKey6, FlowValue, FlowValue6, LocalEndpoint, MaglevKey, MaglevValue, Meta,
    PortInfo, ServiceCounter, ServiceKey, ServiceKey6, ServiceValue, StatIndex, capacity, scope,
};

// ---------------------------------------------------------------------------------------------
// Maps. Names and types are part of the layout (`proxy_common::LAYOUT_VERSION`). The tables
// the agent writes are not preallocated: an element replaced by an update is freed only after
// every reader is done with it, so a reader never sees a half-written entry.

/// Who created the maps and the last generation applied (written by the agent only).
#[map(name = "HP_META")]
static META: Array<Meta> = Array::with_max_entries(1, 0);

/// Per-CPU packet counters of every program, indexed by [`StatIndex`].
#[map(name = "STATS")]
static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(StatIndex::COUNT, 0);

#[map(name = "HP_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(capacity::SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "HP_MAGLEV")]
static MAGLEV: HashMap<MaglevKey, MaglevValue> =
    HashMap::with_max_entries(capacity::MAGLEV, BPF_F_NO_PREALLOC);

#[map(name = "HP_BACKENDS")]
static BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(capacity::BACKENDS, BPF_F_NO_PREALLOC);

/// The connection table. A plain, preallocated hash map, not an LRU: an LRU would evict an
/// idle established flow to make room for a new one, and that flow's next packet would reach
/// nftables, which would send it to a random backend. Here a full table refuses the *new*
/// flow instead (it goes to nftables, counted as `TableFull`), and the agent removes ended
/// flows.
#[map(name = "HP_FLOWS")]
static FLOWS: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(capacity::CONNECTIONS, 0);

/// ClientIP affinity. An LRU is right here: losing an entry only lets a client's next new
/// flow pick a backend afresh; no established flow depends on it.
#[map(name = "HP_AFFINITY")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(capacity::AFFINITY, 0);

/// IPv6 service entries. The IPv6 maps mirror the IPv4 ones with 16-byte addresses; the
/// Maglev tables, counters and port records are shared (an IPv6 set's `set` value carries
/// `set::IPV6`, so its Maglev table never collides with the IPv4 set of the same port).
#[map(name = "HP_SERVICES6")]
static SERVICES6: HashMap<ServiceKey6, ServiceValue> =
    HashMap::with_max_entries(capacity::SERVICES, BPF_F_NO_PREALLOC);

/// IPv6 backends, keyed like `HP_BACKENDS`.
#[map(name = "HP_BACKENDS6")]
static BACKENDS6: HashMap<BackendKey, Backend6> =
    HashMap::with_max_entries(capacity::BACKENDS, BPF_F_NO_PREALLOC);

/// The IPv6 connection table: a plain hash map like `HP_FLOWS` (a full table refuses new
/// flows, it never evicts), but not preallocated, so that a node without IPv6 traffic does
/// not pay for a second table of the full size.
#[map(name = "HP_FLOWS6")]
static FLOWS6: HashMap<FlowKey6, FlowValue6> =
    HashMap::with_max_entries(capacity::CONNECTIONS, BPF_F_NO_PREALLOC);

/// IPv6 ClientIP affinity (an LRU, as `HP_AFFINITY`).
#[map(name = "HP_AFFINITY6")]
static AFFINITY6: LruHashMap<AffinityKey6, AffinityValue6> =
    LruHashMap::with_max_entries(capacity::AFFINITY, 0);

/// Per-service per-CPU counters, in slots the agent assigns to every counted service port
/// (in the service entry, copied into each flow). An array, not a hash keyed by service: its
/// lookup is inlined by the verifier, which saves a third of an established packet's cost.
#[map(name = "HP_SVC_STATS")]
static SERVICE_STATS: PerCpuArray<ServiceCounter> =
    PerCpuArray::with_max_entries(capacity::SERVICE_STATS, 0);

/// The agent's record of each counted service port (name, decision), for `proxy-agent
/// status` without the agent. The programs never touch it; it is declared here so that it
/// is created and pinned with the other maps.
#[map(name = "HP_PORTS")]
static PORTS: HashMap<u64, PortInfo> =
    HashMap::with_max_entries(capacity::PORTS, BPF_F_NO_PREALLOC);

/// This node's pods (IPv4 address, network order) and where to deliver to them: the
/// agent writes it from the node's routes and neighbours. A redirected packet for an
/// address not here takes the FIB's route.
#[map(name = "HP_LOCAL_EPS")]
static LOCAL_ENDPOINTS: HashMap<u32, LocalEndpoint> =
    HashMap::with_max_entries(capacity::LOCAL_ENDPOINTS, BPF_F_NO_PREALLOC);

/// The interfaces our programs are attached to ([`proxy_common::iface`] values), written by
/// the agent: a redirect leaves only through one of them, so its replies meet a program.
#[map(name = "HP_IFACES")]
static INTERFACES: HashMap<u32, u32> =
    HashMap::with_max_entries(capacity::INTERFACES, BPF_F_NO_PREALLOC);

// ---------------------------------------------------------------------------------------------
// Packet layout.

const ETH_HLEN: usize = 14;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const EEXIST: i32 = 17;

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
}

/// The fields of one TCP/UDP packet the programs decide on (addresses and ports in network
/// order); `A` is the family's address.
#[derive(Clone, Copy)]
struct Packet<A> {
    saddr: A,
    daddr: A,
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
}

// ---------------------------------------------------------------------------------------------
// Counters.

#[inline(always)]
fn count(slot: StatIndex, bytes: usize) {
    if let Some(c) = STATS.get_ptr_mut(slot as u32) {
        // SAFETY: this CPU's own slot of a per-CPU array, touched by no other CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}

/// Counts a packet of a service port: `seen` for a packet from a client (whichever path
/// serves it), `fast` for a packet the fast path translates.
#[inline(always)]
fn count_service(slot: u32, seen: bool, fast: bool) {
    if slot == 0 {
        return;
    }
    if let Some(c) = SERVICE_STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's own copy of a per-CPU array value.
        unsafe {
            if seen {
                (*c).seen_packets += 1;
            }
            if fast {
                (*c).fast_packets += 1;
            }
        }
    }
}

/// Counts a packet of a service port the programs delivered themselves.
#[inline(always)]
fn count_redirect(slot: u32) {
    if slot == 0 {
        return;
    }
    if let Some(c) = SERVICE_STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's own copy of a per-CPU array value.
        unsafe { (*c).redirected_packets += 1 };
    }
}

/// Counts why a packet of a redirect flow went to the stack.
#[inline(always)]
fn count_no_redirect(why: v4::NoRedirect, bytes: usize) {
    count(
        match why {
            v4::NoRedirect::NoRoute => StatIndex::RedirectNoRoute,
            v4::NoRedirect::TooBig => StatIndex::RedirectTooBig,
        },
        bytes,
    );
}

// ---------------------------------------------------------------------------------------------
// Hashing (the families mix their addresses in with these).

#[inline(always)]
fn mix(h: u32, v: u32) -> u32 {
    let h = (h ^ v).wrapping_mul(0x9e37_79b1);
    h ^ (h >> 16)
}

#[inline(always)]
fn finish(h: u32) -> u32 {
    let h = (h ^ (h >> 15)).wrapping_mul(0x2c1b_3c6d);
    h ^ (h >> 12)
}

/// The time for flow and affinity timestamps: the coarse monotonic clock (one tick of
/// resolution is plenty for idle timeouts, and it is much cheaper than `bpf_ktime_get_ns`).
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

// ---------------------------------------------------------------------------------------------
// Rewriting.

/// RFC 1624 incremental update of a one's-complement checksum (byte-order agnostic).
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits first")]
fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    let mut s = u32::from(!check) + u32::from(!old) + u32::from(new);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "splitting into 16-bit halves"
)]
fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let c = csum_replace2(check, old as u16, new as u16);
    csum_replace2(c, (old >> 16) as u16, (new >> 16) as u16)
}

// ---------------------------------------------------------------------------------------------
// Programs.

#[xdp]
pub fn hp_xdp(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let bytes = end - data;
    count(StatIndex::XdpSeen, bytes);
    // IPv4 first, exactly as before IPv6 was handled; IPv6 only once IPv4 declined.
    if let Some(pkt) = v4::parse(data, end) {
        if let Some(v) = v4::forward(&pkt, scope::EXTERNAL, bytes) {
            let _ = v4::xdp_dnat(data, end, &pkt, &v.to);
        }
    } else if let Some(pkt) = v6::parse(data, end)
        && let Some(v) = v6::forward(&pkt, scope::EXTERNAL, bytes)
    {
        let _ = v6::xdp_dnat(data, end, &pkt, &v.to);
    }
    xdp_action::XDP_PASS
}

#[classifier]
pub fn hp_tc_ingress(ctx: TcContext) -> i32 {
    let bytes = ctx.len() as usize;
    count(StatIndex::TcIngressSeen, bytes);
    if let Some(pkt) = v4::tc_headers(&ctx) {
        if let Some(v) = v4::forward(&pkt, scope::POD, bytes) {
            if v4::tc_rewrite(&ctx, &pkt, false, pkt.daddr, pkt.dport, &v.to).is_ok() && v.redirect
            {
                return deliver_forward(&ctx, &pkt, &v, bytes);
            }
        } else if let Some(action) = deliver_reply(&ctx, &pkt, bytes) {
            // A reply of a redirect flow from a backend pod of this node.
            return action;
        }
    } else if let Some(pkt) = v6::tc_headers(&ctx)
        && let Some(v) = v6::forward(&pkt, scope::POD, bytes)
    {
        let _ = v6::tc_rewrite(&ctx, &pkt, false, &pkt.daddr, pkt.dport, &v.to);
    }
    TC_ACT_PIPE
}

/// Delivers a client's translated packet of a redirect flow, or leaves it to the stack
/// (a new flow then stays on the stack in both directions).
#[inline(always)]
fn deliver_forward(ctx: &TcContext, pkt: &v4::Packet, v: &v4::Verdict, bytes: usize) -> i32 {
    let translated = v4::Packet {
        daddr: v.to.addr,
        dport: v.to.port,
        ..*pkt
    };
    match v4::redirect(ctx, &translated) {
        Ok(action) => {
            count(StatIndex::Redirected, bytes);
            count_redirect(v.slot);
            action
        }
        Err(why) => {
            count_no_redirect(why, bytes);
            if v.new {
                v4::fall_back_to_stack(pkt, &v.to);
            }
            TC_ACT_PIPE
        }
    }
}

/// A reply of a redirect flow entering the node: translated back to the service address
/// and delivered to the client; `None` when the packet is no such reply (or must take the
/// stack, translated).
#[inline(always)]
fn deliver_reply(ctx: &TcContext, pkt: &v4::Packet, bytes: usize) -> Option<i32> {
    let (service, slot) = v4::reply(pkt, bytes, true)?;
    v4::tc_rewrite(ctx, pkt, true, pkt.saddr, pkt.sport, &service).ok()?;
    let translated = v4::Packet {
        saddr: service.addr,
        sport: service.port,
        ..*pkt
    };
    match v4::redirect(ctx, &translated) {
        Ok(action) => {
            count(StatIndex::RedirectedReply, bytes);
            count_redirect(slot);
            Some(action)
        }
        Err(why) => {
            count_no_redirect(why, bytes);
            None
        }
    }
}

/// TC ingress of node interfaces: replies of redirect flows whose backend is on another
/// node. Everything else passes (XDP already handled what comes from outside).
#[classifier]
pub fn hp_tc_reply(ctx: TcContext) -> i32 {
    let bytes = ctx.len() as usize;
    count(StatIndex::TcReplySeen, bytes);
    if let Some(pkt) = v4::tc_headers(&ctx)
        && let Some(action) = deliver_reply(&ctx, &pkt, bytes)
    {
        return action;
    }
    TC_ACT_PIPE
}

#[classifier]
pub fn hp_tc_egress(ctx: TcContext) -> i32 {
    let bytes = ctx.len() as usize;
    count(StatIndex::TcEgressSeen, bytes);
    if let Some(pkt) = v4::tc_headers(&ctx) {
        if let Some((to, _)) = v4::reply(&pkt, bytes, false) {
            let _ = v4::tc_rewrite(&ctx, &pkt, true, pkt.saddr, pkt.sport, &to);
        }
    } else if let Some(pkt) = v6::tc_headers(&ctx)
        && let Some((to, _)) = v6::reply(&pkt, bytes, false)
    {
        let _ = v6::tc_rewrite(&ctx, &pkt, true, &pkt.saddr, pkt.sport, &to);
    }
    TC_ACT_PIPE
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("proxy-ebpf holds eBPF programs; build them with `cargo xtask build-ebpf`");
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
