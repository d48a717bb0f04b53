//! IPv4: parsing, hashing and rewriting, and the family's maps and types under the names
//! the shared connection-table logic (`flow.rs`) uses.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT},
    helpers::generated::{
        bpf_check_mtu, bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
    },
    programs::TcContext,
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, FlowKey, FlowValue, ServiceKey, StatIndex,
};

use crate::{
    AFFINITY, BACKENDS, ETH_HLEN, EthHdr, FLOWS, INTERFACES, IPPROTO_TCP, IPPROTO_UDP,
    LOCAL_ENDPOINTS, SERVICES, TCP_HLEN, UDP_HLEN, count, csum_replace2, csum_replace4, finish,
    mix,
};

#[expect(clippy::duplicate_mod, reason = "compiled once per family on purpose")]
#[path = "flow.rs"]
mod flow;
pub(crate) use flow::{Verdict, fall_back_to_stack, forward, reply};

pub(crate) const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const IP_HLEN: usize = 20;
const L4_OFF: usize = ETH_HLEN + IP_HLEN;
/// More-fragments flag and fragment offset, network order.
const IP_FRAG_MASK_BE: u16 = 0x3fffu16.to_be();

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

/// An IPv4 address in network order.
pub(crate) type Addr = u32;
pub(crate) type Packet = crate::Packet<Addr>;

#[inline(always)]
fn addr_eq(a: &Addr, b: &Addr) -> bool {
    a == b
}

/// The Maglev hash of a client (ClientIP affinity).
#[inline(always)]
fn hash_client(pkt: &Packet) -> u32 {
    finish(mix(0x5bd1_e995, pkt.saddr))
}

/// The Maglev hash of a flow's 5-tuple.
#[inline(always)]
fn hash_flow(pkt: &Packet) -> u32 {
    let ports = (u32::from(pkt.sport) << 16) | u32::from(pkt.dport);
    finish(mix(
        mix(mix(mix(0x5bd1_e995, pkt.saddr), pkt.daddr), ports),
        u32::from(pkt.proto),
    ))
}

#[inline(always)]
fn l4_csum_off(pkt: &Packet) -> usize {
    if pkt.proto == IPPROTO_UDP {
        L4_OFF + 6
    } else {
        L4_OFF + 16
    }
}

/// Reads the packet between `data` and `end`; `None` for anything but an option-less,
/// unfragmented IPv4 TCP or UDP packet (which then passes unchanged).
#[inline(always)]
pub(crate) fn parse(data: usize, end: usize) -> Option<Packet> {
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

/// XDP: rewrites the destination in place with incremental checksums (a packet from the
/// wire carries complete checksums).
#[inline(always)]
pub(crate) fn xdp_dnat(data: usize, end: usize, pkt: &Packet, to: &Backend) -> Option<()> {
    let csum_off = l4_csum_off(pkt);
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
pub(crate) fn tc_rewrite(
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
    let csum_off = l4_csum_off(pkt);
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
pub(crate) fn tc_headers(ctx: &TcContext) -> Option<Packet> {
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
// Delivery without the node's stack (redirect forwarding).

const AF_INET: u8 = 2;
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;
/// Without a length to check, the kernel checks the packet itself against the egress MTU.
const FIB_FRAG_NEEDED: i64 = 8;
const TTL_OFF: usize = ETH_HLEN + 8;

/// The kernel's `struct bpf_fib_lookup` (64 bytes), IPv4 fields named: the generated binding
/// spreads it over anonymous unions.
#[repr(C)]
struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    /// In: length to check the MTU against (0: no check). Out: the MTU.
    tot_len: u16,
    /// In: the ingress interface. Out: the egress interface.
    ifindex: u32,
    tos: u32,
    src: [u32; 4],
    dst: [u32; 4],
    vlan: u32,
    /// In: `mark` in the first four bytes (0). Out: the source and destination MACs.
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// Why a packet of a redirect flow goes to the stack instead.
#[derive(Clone, Copy)]
pub(crate) enum NoRedirect {
    /// No plain L2 forward (no route, local, tunnel or L3 device, TTL expiring, ...).
    NoRoute,
    /// Larger than the egress MTU: the stack sends ICMP or fragments.
    TooBig,
}

/// Decrements the TTL of the (already translated) IPv4 packet and writes the MACs, when
/// given (`(source, destination)`; a destination all zero is kept).
#[inline(always)]
fn prepare(ctx: &TcContext, macs: Option<(&[u8; 6], &[u8; 6])>) -> Result<(), NoRedirect> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + L4_OFF > end {
        return Err(NoRedirect::NoRoute);
    }
    // SAFETY: the check above covers the Ethernet and IPv4 headers.
    unsafe {
        let eth = data as *mut EthHdr;
        let ip = (data + ETH_HLEN) as *mut Ipv4Hdr;
        let ttl = (*ip).ttl;
        if ttl <= 1 {
            // The stack answers with ICMP time exceeded.
            return Err(NoRedirect::NoRoute);
        }
        let word = (data + TTL_OFF) as *const u16;
        let old = *word;
        (*ip).ttl = ttl - 1;
        (*ip).check = csum_replace2((*ip).check, old, *word);
        if let Some((src, dst)) = macs {
            if dst.iter().any(|b| *b != 0) {
                (*eth).dst = *dst;
            }
            (*eth).src = *src;
        }
    }
    Ok(())
}

/// Delivers the translated packet (`pkt` as it now is) to its destination without the
/// node's stack: into a local pod's namespace (`bpf_redirect_peer`), or out of the
/// interface the FIB names with the next hop's MAC (`bpf_redirect`, `bpf_redirect_neigh`
/// while the neighbour is unresolved). Returns the TC action; an error leaves the packet
/// for the stack.
#[inline(always)]
pub(crate) fn redirect(ctx: &TcContext, pkt: &Packet) -> Result<i32, NoRedirect> {
    let daddr = pkt.daddr;
    if let Some(ep) = LOCAL_ENDPOINTS.get_ptr(daddr) {
        // SAFETY: a live map value, copied at once.
        let ep = unsafe { *ep };
        prepare(ctx, Some((&ep.host_mac, &ep.pod_mac)))?;
        // SAFETY: a helper taking plain values.
        let action = unsafe { bpf_redirect_peer(ep.if_index, 0) };
        #[expect(clippy::cast_possible_truncation, reason = "a TC action")]
        return Ok(action as i32);
    }
    // SAFETY: the context's skb pointer is valid for the program's run.
    let if_index = unsafe { (*ctx.skb.skb).ifindex };
    let mut fib = FibParams {
        family: AF_INET,
        l4_protocol: pkt.proto,
        sport: 0,
        dport: 0,
        tot_len: 0,
        ifindex: if_index,
        tos: 0,
        src: [pkt.saddr, 0, 0, 0],
        dst: [daddr, 0, 0, 0],
        vlan: 0,
        smac: [0; 6],
        dmac: [0; 6],
    };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "64 bytes"
    )]
    let size = size_of::<FibParams>() as i32;
    // SAFETY: `fib` is a `struct bpf_fib_lookup` of the size given.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), (&raw mut fib).cast(), size, 0) };
    if rc == FIB_FRAG_NEEDED {
        return Err(NoRedirect::TooBig);
    }
    if rc != FIB_SUCCESS && rc != FIB_NO_NEIGH {
        return Err(NoRedirect::NoRoute);
    }
    // Only out of an interface of ours: the replies must meet a program where they enter
    // (anything else, a tunnel or an unlisted uplink, is the stack's).
    if INTERFACES.get_ptr(fib.ifindex).is_none() {
        return Err(NoRedirect::NoRoute);
    }
    let action = if rc == FIB_SUCCESS {
        // The lookup checked the packet against the egress MTU already (FIB_FRAG_NEEDED).
        prepare(ctx, Some((&fib.smac, &fib.dmac)))?;
        // SAFETY: a helper taking plain values.
        unsafe { bpf_redirect(fib.ifindex, 0) }
    } else {
        // Without a neighbour the lookup checks no MTU: this does.
        let mut mtu_len = 0u32;
        // SAFETY: the context and a local out-parameter.
        if unsafe { bpf_check_mtu(ctx.as_ptr(), fib.ifindex, &raw mut mtu_len, 0, 0) } != 0 {
            return Err(NoRedirect::TooBig);
        }
        // The kernel writes the Ethernet header once it resolved the neighbour.
        prepare(ctx, None)?;
        // SAFETY: without parameters the helper resolves the next hop itself.
        unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) }
    };
    if action != i64::from(TC_ACT_REDIRECT) {
        return Err(NoRedirect::NoRoute);
    }
    #[expect(clippy::cast_possible_truncation, reason = "a TC action")]
    Ok(action as i32)
}
