//! IPv6: parsing, hashing and rewriting, and the family's maps and types under the names
//! the shared connection-table logic (`flow.rs`) uses.
//!
//! Only a packet whose next header is directly TCP or UDP is handled: any extension header
//! (hop-by-hop, routing, fragment, destination options, ...) moves the transport header or
//! hides it, and such a packet passes unchanged, as does any other next header. IPv6 has
//! no header checksum; the transport checksum covers a pseudo-header with both 128-bit
//! addresses, so a rewritten address is four 32-bit checksum updates. The hop limit is left
//! alone, as the IPv4 path leaves the TTL.

use aya_ebpf::{
    bindings::{BPF_F_MARK_ENFORCE, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use proxy_common::{
    AffinityKey6 as AffinityKey, AffinityValue6 as AffinityValue, Backend6 as Backend,
    FlowKey6 as FlowKey, FlowValue6 as FlowValue, Ipv6Words, ServiceKey6 as ServiceKey, StatIndex,
};

use crate::{
    AFFINITY6 as AFFINITY, BACKENDS6 as BACKENDS, ETH_HLEN, EthHdr, FLOWS6 as FLOWS, IPPROTO_TCP,
    IPPROTO_UDP, SERVICES6 as SERVICES, TCP_HLEN, UDP_HLEN, count, csum_replace2, csum_replace4,
    finish, mix,
};

#[expect(clippy::duplicate_mod, reason = "compiled once per family on purpose")]
#[path = "flow.rs"]
mod flow;
pub(crate) use flow::{forward, reply};

pub(crate) const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
const IP6_HLEN: usize = 40;
const L4_OFF: usize = ETH_HLEN + IP6_HLEN;

#[repr(C)]
struct Ipv6Hdr {
    vtc_flow: u32,
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: Ipv6Words,
    daddr: Ipv6Words,
}

pub(crate) type Addr = Ipv6Words;
pub(crate) type Packet = crate::Packet<Addr>;

/// Word by word: an array comparison may become a `memcmp` call, which BPF has not.
#[inline(always)]
fn addr_eq(a: &Addr, b: &Addr) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

#[inline(always)]
fn mix_addr(h: u32, a: &Addr) -> u32 {
    mix(mix(mix(mix(h, a[0]), a[1]), a[2]), a[3])
}

/// The Maglev hash of a client (ClientIP affinity).
#[inline(always)]
fn hash_client(pkt: &Packet) -> u32 {
    finish(mix_addr(0x5bd1_e995, &pkt.saddr))
}

/// The Maglev hash of a flow's 5-tuple.
#[inline(always)]
fn hash_flow(pkt: &Packet) -> u32 {
    let ports = (u32::from(pkt.sport) << 16) | u32::from(pkt.dport);
    finish(mix(
        mix(
            mix_addr(mix_addr(0x5bd1_e995, &pkt.saddr), &pkt.daddr),
            ports,
        ),
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

/// Reads the packet between `data` and `end`; `None` for anything but an IPv6 packet whose
/// next header is TCP or UDP (which then passes unchanged).
#[inline(always)]
pub(crate) fn parse(data: usize, end: usize) -> Option<Packet> {
    if data + L4_OFF > end {
        return None;
    }
    // SAFETY: the bounds check above covers the Ethernet and IPv6 headers.
    let (eth_proto, nexthdr, saddr, daddr) = unsafe {
        let eth = data as *const EthHdr;
        let ip = (data + ETH_HLEN) as *const Ipv6Hdr;
        let (s, d) = (&(*ip).saddr, &(*ip).daddr);
        (
            (*eth).proto,
            (*ip).nexthdr,
            [s[0], s[1], s[2], s[3]],
            [d[0], d[1], d[2], d[3]],
        )
    };
    if eth_proto != ETH_P_IPV6_BE {
        return None;
    }
    let l4_len = match nexthdr {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        // The extension headers a node may meet (RFC 8200 section 4, RFC 7045): hop-by-hop,
        // routing, fragment, ESP, AH, destination options, mobility, HIP, shim6.
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => {
            count(StatIndex::FragmentOrOptions, 0);
            return None;
        }
        _ => return None,
    };
    if data + L4_OFF + l4_len > end {
        return None;
    }
    // SAFETY: the bounds check above covers the transport header.
    let (sport, dport, tcp_flags) = unsafe {
        let l4 = (data + L4_OFF) as *const u8;
        let ports = (data + L4_OFF) as *const [u16; 2];
        let flags = if nexthdr == IPPROTO_TCP {
            *l4.add(13)
        } else {
            0
        };
        ((*ports)[0], (*ports)[1], flags)
    };
    Some(Packet {
        saddr,
        daddr,
        sport,
        dport,
        proto: nexthdr,
        tcp_flags,
    })
}

/// XDP: rewrites the destination in place with an incremental checksum update (a packet from
/// the wire carries a complete checksum): four address words and the port.
#[inline(always)]
pub(crate) fn xdp_dnat(data: usize, end: usize, pkt: &Packet, to: &Backend) -> Option<()> {
    let csum_off = l4_csum_off(pkt);
    if data + csum_off + 2 > end {
        return None;
    }
    // SAFETY: `parse` checked the IPv6 and transport headers, and the check above the
    // checksum field.
    unsafe {
        let ip = (data + ETH_HLEN) as *mut Ipv6Hdr;
        let ports = (data + L4_OFF) as *mut [u16; 2];
        let csum = (data + csum_off) as *mut u16;
        let d = &mut (*ip).daddr;
        d[0] = to.addr[0];
        d[1] = to.addr[1];
        d[2] = to.addr[2];
        d[3] = to.addr[3];
        (*ports)[1] = to.port;
        let mut n = *csum;
        n = csum_replace4(n, pkt.daddr[0], to.addr[0]);
        n = csum_replace4(n, pkt.daddr[1], to.addr[1]);
        n = csum_replace4(n, pkt.daddr[2], to.addr[2]);
        n = csum_replace4(n, pkt.daddr[3], to.addr[3]);
        n = csum_replace2(n, pkt.dport, to.port);
        // Over IPv6 a UDP checksum of 0 means "none", which is invalid: 0xffff is the same
        // sum. (A TCP checksum is never left 0 by the update either way.)
        if pkt.proto == IPPROTO_UDP && n == 0 {
            n = 0xffff;
        }
        *csum = n;
    }
    Some(())
}

/// `BPF_F_IPV6` of `bpf_l4_csum_replace` (kernel 6.16+; not in aya's bindings yet).
const BPF_F_IPV6: u64 = 1 << 7;
const EINVAL: i64 = 22;

/// One's-complement addition of 32-bit words (the kernel's `csum_add` on a `__wsum`).
#[inline(always)]
fn csum_add(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s.wrapping_add(u32::from(carry))
}

/// The checksum difference of replacing address `old` by `new` (the kernel's `csum_diff`).
#[inline(always)]
fn addr_diff(old: &Addr, new: &Addr) -> u32 {
    let mut d = 0;
    d = csum_add(csum_add(d, !old[0]), new[0]);
    d = csum_add(csum_add(d, !old[1]), new[1]);
    d = csum_add(csum_add(d, !old[2]), new[2]);
    csum_add(csum_add(d, !old[3]), new[3])
}

/// TC: rewrites an address and port. The fields are written directly; the transport
/// checksum goes through the kernel's helper, which alone handles `CHECKSUM_PARTIAL`: the
/// address as one difference with the pseudo-header flag, then the port.
///
/// `BPF_F_IPV6` tells the helper that no IPv4 header checksum absorbs the address change,
/// so that it leaves a `CHECKSUM_COMPLETE` packet's `skb->csum` alone (it would otherwise
/// go wrong by the difference, and the receiver would report a hardware checksum failure).
/// A kernel without the flag refuses it (`EINVAL`, before touching the packet): the
/// address then goes word by word, which is right for every packet but a
/// `CHECKSUM_COMPLETE` one.
///
/// For UDP the helper is told the checksum is mandatory (`BPF_F_MARK_ENFORCE`: update it
/// even when it reads 0) and never to leave 0 (`BPF_F_MARK_MANGLED_0`: 0xffff instead).
/// Direct writes come first: the helper moves the packet's pointers.
#[inline(always)]
pub(crate) fn tc_rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    source: bool,
    old_addr: &Addr,
    old_port: u16,
    to: &Backend,
) -> Result<(), i64> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + L4_OFF + 4 > end {
        return Err(0);
    }
    // SAFETY: `parse` checked the IPv6 header at these offsets, the check above the two
    // ports; the verifier makes the packet writable (unclones it) for direct writes.
    unsafe {
        let ip = (data + ETH_HLEN) as *mut Ipv6Hdr;
        let ports = (data + L4_OFF) as *mut [u16; 2];
        let a = if source {
            (*ports)[0] = to.port;
            &mut (*ip).saddr
        } else {
            (*ports)[1] = to.port;
            &mut (*ip).daddr
        };
        a[0] = to.addr[0];
        a[1] = to.addr[1];
        a[2] = to.addr[2];
        a[3] = to.addr[3];
    }
    let csum_off = l4_csum_off(pkt);
    let udp = if pkt.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0 | BPF_F_MARK_ENFORCE)
    } else {
        0
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | udp;
    let diff = u64::from(addr_diff(old_addr, &to.addr));
    match ctx.l4_csum_replace(csum_off, 0, diff, pseudo | BPF_F_IPV6) {
        Ok(()) => {}
        Err(e) if e == -EINVAL => {
            let word = pseudo | 4;
            ctx.l4_csum_replace(
                csum_off,
                u64::from(old_addr[0]),
                u64::from(to.addr[0]),
                word,
            )?;
            ctx.l4_csum_replace(
                csum_off,
                u64::from(old_addr[1]),
                u64::from(to.addr[1]),
                word,
            )?;
            ctx.l4_csum_replace(
                csum_off,
                u64::from(old_addr[2]),
                u64::from(to.addr[2]),
                word,
            )?;
            ctx.l4_csum_replace(
                csum_off,
                u64::from(old_addr[3]),
                u64::from(to.addr[3]),
                word,
            )?;
        }
        Err(e) => return Err(e),
    }
    ctx.l4_csum_replace(csum_off, u64::from(old_port), u64::from(to.port), udp | 2)?;
    Ok(())
}

/// Makes sure the headers are in the linear part of the packet, for direct access.
#[inline(always)]
pub(crate) fn tc_headers(ctx: &TcContext) -> Option<Packet> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN > end {
        return None;
    }
    // SAFETY: the check above covers the Ethernet header. Looked at first so that a packet
    // of another family (which the IPv4 path declined) is never pulled for nothing.
    if unsafe { (*(data as *const EthHdr)).proto } != ETH_P_IPV6_BE {
        return None;
    }
    let want = L4_OFF + TCP_HLEN;
    let len = ctx.len() as usize;
    if data + want > end && len > end - data {
        #[expect(clippy::cast_possible_truncation, reason = "at most 74")]
        let _ = ctx.pull_data(want.min(len) as u32);
    }
    parse(ctx.data(), ctx.data_end())
}
