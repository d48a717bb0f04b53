//! IPv4: parsing, hashing and rewriting, and the family's maps and types under the names
//! the shared connection-table logic (`flow.rs`) uses.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, FlowKey, FlowValue, ServiceKey, StatIndex,
};

use crate::{
    AFFINITY, BACKENDS, ETH_HLEN, EthHdr, FLOWS, IPPROTO_TCP, IPPROTO_UDP, SERVICES, TCP_HLEN,
    UDP_HLEN, count, csum_replace2, csum_replace4, finish, mix,
};

#[expect(clippy::duplicate_mod, reason = "compiled once per family on purpose")]
#[path = "flow.rs"]
mod flow;
pub(crate) use flow::{forward, reply};

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
