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
//! While the fast path runs, every IPv4 TCP/UDP service address has an entry in
//! `HP_SERVICES`, accelerated or not: a `COUNT_ONLY` entry makes the programs count the
//! packet in the service's per-CPU slot and pass it on unchanged. That is what `auto` mode
//! measures to decide which services are hot, for those nftables serves too.
//! The connection table (`HP_FLOWS`) is consulted before the service table, so a flow stays
//! on the path and backend it started on whatever happens to the service afterwards.
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

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_PIPE,
        xdp_action,
    },
    helpers::bpf_ktime_get_coarse_ns,
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, Counter, FLOW_REFRESH_NS, FlowKey, FlowValue,
    MAGLEV_SIZE, MaglevKey, MaglevValue, Meta, PortInfo, ServiceCounter, ServiceKey, ServiceValue,
    StatIndex, capacity, dir, owner, scope, service_flags, tcp,
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

// ---------------------------------------------------------------------------------------------
// Packet layout.

const ETH_HLEN: usize = 14;
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const IP_HLEN: usize = 20;
const L4_OFF: usize = ETH_HLEN + IP_HLEN;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// More-fragments flag and fragment offset, network order.
const IP_FRAG_MASK_BE: u16 = 0x3fffu16.to_be();
const EEXIST: i32 = 17;

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
}

#[repr(C)]
struct Ipv4Hdr {
    vihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

/// The fields of one IPv4 TCP/UDP packet the programs decide on (addresses and ports in
/// network order).
#[derive(Clone, Copy)]
struct Packet {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
}

impl Packet {
    #[inline(always)]
    fn l4_csum_off(&self) -> usize {
        if self.proto == IPPROTO_UDP {
            L4_OFF + 6
        } else {
            L4_OFF + 16
        }
    }
}

/// Reads the packet between `data` and `end`; `None` for anything but an option-less,
/// unfragmented IPv4 TCP or UDP packet (which then passes unchanged).
#[inline(always)]
fn parse(data: usize, end: usize) -> Option<Packet> {
    if data + L4_OFF > end {
        return None;
    }
    // SAFETY: the bounds check above covers the Ethernet and IPv4 headers.
    let (eth_proto, vihl, frag_off, proto, saddr, daddr) = unsafe {
        let eth = data as *const EthHdr;
        let ip = (data + ETH_HLEN) as *const Ipv4Hdr;
        (
            (*eth).proto,
            (*ip).vihl,
            (*ip).frag_off,
            (*ip).proto,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    if eth_proto != ETH_P_IP_BE {
        return None;
    }
    if vihl != 0x45 || frag_off & IP_FRAG_MASK_BE != 0 {
        // IP options move the transport header, and only a first fragment carries ports.
        count(StatIndex::FragmentOrOptions, 0);
        return None;
    }
    let l4_len = match proto {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        _ => return None,
    };
    if data + L4_OFF + l4_len > end {
        return None;
    }
    // SAFETY: the bounds check above covers the transport header.
    let (sport, dport, tcp_flags) = unsafe {
        let l4 = (data + L4_OFF) as *const u8;
        let ports = (data + L4_OFF) as *const [u16; 2];
        let flags = if proto == IPPROTO_TCP { *l4.add(13) } else { 0 };
        ((*ports)[0], (*ports)[1], flags)
    };
    Some(Packet {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        tcp_flags,
    })
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

// ---------------------------------------------------------------------------------------------
// Choosing a backend and recording the flow.

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

/// Refreshes a flow entry's timestamp and TCP flags, writing only when something changed.
#[inline(always)]
fn touch(v: *mut FlowValue, flags: u8, now: u64) {
    // SAFETY: `v` points into a live map value; concurrent writers store the same kind of
    // data, and a lost update only delays a refresh.
    unsafe {
        if now.wrapping_sub((*v).last_seen_ns) > FLOW_REFRESH_NS {
            (*v).last_seen_ns = now;
        }
        if (*v).tcp_flags | flags != (*v).tcp_flags {
            (*v).tcp_flags |= flags;
        }
    }
}

/// Picks the backend of a new flow: the client's affinity entry when it has a live one, else
/// the backend set's Maglev table at the flow's (or, with affinity, the client's) hash.
#[inline(always)]
fn choose(svc: &ServiceValue, pkt: &Packet, now: u64) -> Option<Backend> {
    let affinity = svc.flags & service_flags::AFFINITY != 0;
    let akey = AffinityKey {
        id: svc.id,
        client: pkt.saddr,
        set: svc.set,
        _pad: [0; 3],
    };
    let hash = if affinity {
        if let Some(a) = AFFINITY.get_ptr_mut(akey) {
            let timeout = u64::from(svc.affinity_timeout_s) * 1_000_000_000;
            // SAFETY: a live map value; racing writers store whole, equivalent entries.
            unsafe {
                if now.wrapping_sub((*a).last_used_ns) < timeout {
                    (*a).last_used_ns = now;
                    return Some((*a).backend);
                }
            }
        }
        finish(mix(0x5bd1_e995, pkt.saddr))
    } else {
        let ports = (u32::from(pkt.sport) << 16) | u32::from(pkt.dport);
        finish(mix(
            mix(mix(mix(0x5bd1_e995, pkt.saddr), pkt.daddr), ports),
            u32::from(pkt.proto),
        ))
    };
    let table = MAGLEV.get_ptr(MaglevKey {
        id: svc.id,
        revision: svc.revision,
        set: svc.set,
        _pad: [0; 3],
    })?;
    let slot = hash as usize % MAGLEV_SIZE;
    // The compiler knows `slot < MAGLEV_SIZE` and drops the check, but the verifier does not
    // track the bound through a modulo: hide the value from the compiler so the check stays.
    // SAFETY: reading a local.
    let slot = unsafe { core::ptr::read_volatile(&raw const slot) };
    if slot >= MAGLEV_SIZE {
        return None;
    }
    // SAFETY: a live map value; the agent never writes a table in place (a new revision is a
    // new element).
    let index = unsafe { *(*table).slots.as_ptr().add(slot) };
    let backend = BACKENDS.get_ptr(BackendKey {
        id: svc.id,
        revision: svc.revision,
        set: svc.set,
        _pad: 0,
        index,
    })?;
    // SAFETY: as above.
    let backend = unsafe { *backend };
    if affinity {
        let _ = AFFINITY.insert(
            akey,
            AffinityValue {
                last_used_ns: now,
                backend,
            },
            0,
        );
    }
    Some(backend)
}

/// What to do with a packet arriving from a client (pod or external).
#[inline(always)]
fn forward(pkt: &Packet, scope: u8, bytes: usize) -> Option<Backend> {
    let key = FlowKey {
        src: pkt.saddr,
        dst: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        dir: dir::FORWARD,
        _pad: 0,
    };
    // The connection table first: a flow keeps its path and backend.
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        touch(v, pkt.tcp_flags, now());
        // SAFETY: a live map value.
        let (owner, nat, slot) = unsafe { ((*v).owner, (*v).nat, (*v).counter) };
        if owner != owner::FAST {
            count(StatIndex::NftablesOwned, bytes);
            count_service(slot, true, false);
            return None;
        }
        count(StatIndex::FlowHit, bytes);
        count_service(slot, true, true);
        return Some(nat);
    }
    let svc = SERVICES.get_ptr(ServiceKey {
        addr: pkt.daddr,
        port: pkt.dport,
        proto: pkt.proto,
        scope,
    })?;
    // SAFETY: a live map value, copied at once.
    let svc = unsafe { *svc };
    count_service(svc.counter, true, false);
    if svc.flags & service_flags::COUNT_ONLY != 0 {
        // Served by nftables: counted, passed unchanged.
        return None;
    }
    if pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (tcp::SYN | tcp::ACK) != tcp::SYN {
        // Only a SYN starts a fast-path TCP flow: anything else is either a flow nftables
        // started (before the service was promoted) or garbage for conntrack to judge.
        count(StatIndex::NotFirstPacket, bytes);
        return None;
    }
    let now = now();
    let Some(backend) = choose(&svc, pkt, now) else {
        count(StatIndex::NoBackend, bytes);
        return None;
    };
    if backend.addr == pkt.saddr {
        // Hairpin: the reply must look as if it came from elsewhere, which takes SNAT.
        count(StatIndex::Hairpin, bytes);
        return None;
    }
    record(key, pkt, &svc, backend, now, bytes)
}

/// Records a new fast-path flow (reply entry first, so that a reply never finds the flow
/// half-recorded) and returns its backend; `None` when it must go to nftables instead.
#[inline(always)]
fn record(
    key: FlowKey,
    pkt: &Packet,
    svc: &ServiceValue,
    backend: Backend,
    now: u64,
    bytes: usize,
) -> Option<Backend> {
    let rkey = FlowKey {
        src: backend.addr,
        dst: pkt.saddr,
        sport: backend.port,
        dport: pkt.sport,
        proto: pkt.proto,
        dir: dir::REPLY,
        _pad: 0,
    };
    let service = Backend {
        addr: pkt.daddr,
        port: pkt.dport,
        _pad: 0,
    };
    let reply = FlowValue {
        id: svc.id,
        last_seen_ns: now,
        nat: service,
        owner: owner::FAST,
        tcp_flags: 0,
        _pad: 0,
        counter: svc.counter,
    };
    if let Err(e) = FLOWS.insert(rkey, reply, u64::from(BPF_NOEXIST)) {
        if e != -EEXIST {
            count(StatIndex::TableFull, bytes);
            return None;
        }
        // The same flow recorded by another CPU is fine; another flow with this reply tuple
        // (the same client port to another service with the same backend) is not.
        let existing = FLOWS.get_ptr(rkey)?;
        // SAFETY: a live map value.
        let existing = unsafe { (*existing).nat };
        if existing.addr != service.addr || existing.port != service.port {
            count(StatIndex::ReplyClash, bytes);
            return None;
        }
    }
    let value = FlowValue {
        id: svc.id,
        last_seen_ns: now,
        nat: backend,
        owner: owner::FAST,
        tcp_flags: pkt.tcp_flags,
        _pad: 0,
        counter: svc.counter,
    };
    if let Err(e) = FLOWS.insert(key, value, u64::from(BPF_NOEXIST)) {
        if e == -EEXIST {
            // Another CPU started the same flow a moment ago: follow its choice.
            let v = FLOWS.get_ptr(key)?;
            // SAFETY: a live map value.
            let (owner, nat) = unsafe { ((*v).owner, (*v).nat) };
            return (owner == owner::FAST).then_some(nat);
        }
        let _ = FLOWS.remove(rkey);
        count(StatIndex::TableFull, bytes);
        return None;
    }
    count(StatIndex::NewFlow, bytes);
    count_service(svc.counter, false, true);
    Some(backend)
}

/// The service address to restore on a reply of a fast-path flow.
#[inline(always)]
fn reply(pkt: &Packet, bytes: usize) -> Option<Backend> {
    let key = FlowKey {
        src: pkt.saddr,
        dst: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        dir: dir::REPLY,
        _pad: 0,
    };
    let v = FLOWS.get_ptr_mut(key)?;
    touch(v, pkt.tcp_flags, now());
    // SAFETY: a live map value.
    let (owner, nat, slot) = unsafe { ((*v).owner, (*v).nat, (*v).counter) };
    if owner != owner::FAST {
        return None;
    }
    count(StatIndex::ReplyTranslated, bytes);
    count_service(slot, false, true);
    Some(nat)
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

/// XDP: rewrites the destination in place with incremental checksums (a packet from the
/// wire carries complete checksums).
#[inline(always)]
fn xdp_dnat(data: usize, end: usize, pkt: &Packet, to: &Backend) -> Option<()> {
    let csum_off = pkt.l4_csum_off();
    if data + csum_off + 2 > end {
        return None;
    }
    // SAFETY: `parse` checked the IPv4 and transport headers, and the check above the
    // checksum field.
    unsafe {
        let ip = (data + ETH_HLEN) as *mut Ipv4Hdr;
        let ports = (data + L4_OFF) as *mut [u16; 2];
        let csum = (data + csum_off) as *mut u16;
        (*ip).daddr = to.addr;
        (*ip).check = csum_replace4((*ip).check, pkt.daddr, to.addr);
        (*ports)[1] = to.port;
        let c = *csum;
        if !(pkt.proto == IPPROTO_UDP && c == 0) {
            let mut n = csum_replace4(c, pkt.daddr, to.addr);
            n = csum_replace2(n, pkt.dport, to.port);
            if pkt.proto == IPPROTO_UDP && n == 0 {
                n = 0xffff;
            }
            *csum = n;
        }
    }
    Some(())
}

/// TC: rewrites an address and port. The IPv4 header (whose checksum is always complete)
/// and the fields are written directly; the transport checksum goes through the kernel's
/// helper, which alone knows whether it is complete or the partial checksum of a locally
/// generated packet (`CHECKSUM_PARTIAL`). Direct writes come first: the helper moves the
/// packet's pointers.
#[inline(always)]
fn tc_rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    source: bool,
    old_addr: u32,
    old_port: u16,
    to: &Backend,
) -> Result<(), i64> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + L4_OFF + 4 > end {
        return Err(0);
    }
    // SAFETY: `parse` checked the IPv4 header at these offsets, the check above the two
    // ports; the verifier makes the packet writable (unclones it) for direct writes.
    unsafe {
        let ip = (data + ETH_HLEN) as *mut Ipv4Hdr;
        let ports = (data + L4_OFF) as *mut [u16; 2];
        if source {
            (*ip).saddr = to.addr;
            (*ports)[0] = to.port;
        } else {
            (*ip).daddr = to.addr;
            (*ports)[1] = to.port;
        }
        (*ip).check = csum_replace4((*ip).check, old_addr, to.addr);
    }
    let csum_off = pkt.l4_csum_off();
    let mangled0 = if pkt.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    ctx.l4_csum_replace(
        csum_off,
        u64::from(old_addr),
        u64::from(to.addr),
        u64::from(BPF_F_PSEUDO_HDR) | mangled0 | 4,
    )?;
    ctx.l4_csum_replace(
        csum_off,
        u64::from(old_port),
        u64::from(to.port),
        mangled0 | 2,
    )?;
    Ok(())
}

/// Makes sure the headers are in the linear part of the packet, for direct access.
#[inline(always)]
fn tc_headers(ctx: &TcContext) -> Option<Packet> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let want = L4_OFF + TCP_HLEN;
    let len = ctx.len() as usize;
    if data + want > end && len > end - data {
        #[expect(clippy::cast_possible_truncation, reason = "at most 54")]
        let _ = ctx.pull_data(want.min(len) as u32);
    }
    parse(ctx.data(), ctx.data_end())
}

// ---------------------------------------------------------------------------------------------
// Programs.

#[xdp]
pub fn hp_xdp(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let bytes = end - data;
    count(StatIndex::XdpSeen, bytes);
    if let Some(pkt) = parse(data, end)
        && let Some(to) = forward(&pkt, scope::EXTERNAL, bytes)
    {
        let _ = xdp_dnat(data, end, &pkt, &to);
    }
    xdp_action::XDP_PASS
}

#[classifier]
pub fn hp_tc_ingress(ctx: TcContext) -> i32 {
    let bytes = ctx.len() as usize;
    count(StatIndex::TcIngressSeen, bytes);
    if let Some(pkt) = tc_headers(&ctx)
        && let Some(to) = forward(&pkt, scope::POD, bytes)
    {
        let _ = tc_rewrite(&ctx, &pkt, false, pkt.daddr, pkt.dport, &to);
    }
    TC_ACT_PIPE
}

#[classifier]
pub fn hp_tc_egress(ctx: TcContext) -> i32 {
    let bytes = ctx.len() as usize;
    count(StatIndex::TcEgressSeen, bytes);
    if let Some(pkt) = tc_headers(&ctx)
        && let Some(to) = reply(&pkt, bytes)
    {
        let _ = tc_rewrite(&ctx, &pkt, true, pkt.saddr, pkt.sport, &to);
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
