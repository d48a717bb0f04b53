//! Crafting and checking Ethernet frames for `BPF_PROG_TEST_RUN`.

use std::net::{IpAddr, SocketAddr};

pub const ETH_HLEN: usize = 14;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// TCP flags used by the tests.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// One's-complement sum of `data` added to `initial`, not yet folded.
fn sum16(data: &[u8], initial: u32) -> u32 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let folded = sum as u16;
    !folded
}

/// Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut ph = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ph.extend_from_slice(&s.octets());
            ph.extend_from_slice(&d.octets());
            ph.extend_from_slice(&[0, proto]);
            ph.extend_from_slice(&u16::try_from(len).expect("short packet").to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ph.extend_from_slice(&s.octets());
            ph.extend_from_slice(&d.octets());
            ph.extend_from_slice(&u32::try_from(len).expect("short packet").to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed address families"),
    }
    sum16(&ph, 0)
}

/// An Ethernet frame carrying IPv4 or IPv6 with a TCP or UDP header and payload, with valid
/// checksums.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Self {
        Self {
            src,
            dst,
            proto: IPPROTO_UDP,
            tcp_flags: 0,
            payload: payload.to_vec(),
        }
    }

    pub fn tcp(src: SocketAddr, dst: SocketAddr, flags: u8) -> Self {
        Self {
            src,
            dst,
            proto: IPPROTO_TCP,
            tcp_flags: flags,
            payload: Vec::new(),
        }
    }

    /// Serialises the frame.
    pub fn build(&self) -> Vec<u8> {
        let l4_len = if self.proto == IPPROTO_TCP { 20 } else { 8 } + self.payload.len();
        let mut l4 = vec![0u8; l4_len];
        l4[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        l4[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        if self.proto == IPPROTO_TCP {
            l4[4..8].copy_from_slice(&1u32.to_be_bytes());
            l4[12] = 5 << 4;
            l4[13] = self.tcp_flags;
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
            l4[20..].copy_from_slice(&self.payload);
        } else {
            l4[4..6].copy_from_slice(&u16::try_from(l4_len).expect("short").to_be_bytes());
            l4[8..].copy_from_slice(&self.payload);
        }
        let csum_off = if self.proto == IPPROTO_TCP { 16 } else { 6 };
        let mut c = fold(sum16(
            &l4,
            pseudo_header_sum(self.src.ip(), self.dst.ip(), self.proto, l4_len),
        ));
        if self.proto == IPPROTO_UDP && c == 0 {
            c = 0xffff;
        }
        l4[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());

        let mut frame = Vec::with_capacity(ETH_HLEN + 40 + l4_len);
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&u16::try_from(20 + l4_len).expect("short").to_be_bytes());
                ip[6] = 0x40; // don't fragment
                ip[8] = 64;
                ip[9] = self.proto;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let c = checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                frame.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                frame.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&u16::try_from(l4_len).expect("short").to_be_bytes());
                ip[6] = self.proto;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                frame.extend_from_slice(&ip);
            }
            _ => panic!("mixed address families"),
        }
        frame.extend_from_slice(&l4);
        frame
    }
}

/// What a frame says, read back after a program rewrote it, with its checksums checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    /// Whether the IPv4 header checksum is valid (always true for IPv6).
    pub ip_checksum_ok: bool,
    /// Whether the TCP/UDP checksum is valid over the pseudo-header.
    pub l4_checksum_ok: bool,
}

/// Parses an Ethernet/IP/TCP-or-UDP frame and verifies every checksum in it.
///
/// # Panics
/// When the frame is not one [`Frame::build`] could have produced.
pub fn parse(frame: &[u8]) -> Parsed {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (src_ip, dst_ip, proto, l4, ip_ok): (IpAddr, IpAddr, u8, &[u8], bool) = match ethertype {
        0x0800 => {
            let ip = &frame[ETH_HLEN..ETH_HLEN + 20];
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let s: [u8; 4] = ip[12..16].try_into().expect("4 bytes");
            let d: [u8; 4] = ip[16..20].try_into().expect("4 bytes");
            (
                s.into(),
                d.into(),
                ip[9],
                &frame[ETH_HLEN + 20..ETH_HLEN + total],
                checksum(ip) == 0,
            )
        }
        0x86dd => {
            let ip = &frame[ETH_HLEN..ETH_HLEN + 40];
            let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let s: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
            let d: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
            (
                s.into(),
                d.into(),
                ip[6],
                &frame[ETH_HLEN + 40..ETH_HLEN + 40 + len],
                true,
            )
        }
        other => panic!("not an IP frame: ethertype {other:#06x}"),
    };
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    // A UDP checksum of 0 means "not computed": allowed over IPv4, invalid over IPv6 (even
    // when the sum works out, 0xffff is the only way to write a computed 0).
    let stored_zero_udp = proto == IPPROTO_UDP && l4[6] == 0 && l4[7] == 0;
    let l4_ok = if stored_zero_udp {
        ethertype == 0x0800
    } else {
        fold(sum16(
            l4,
            pseudo_header_sum(src_ip, dst_ip, proto, l4.len()),
        )) == 0
    };
    Parsed {
        src: SocketAddr::new(src_ip, sport),
        dst: SocketAddr::new(dst_ip, dport),
        proto,
        ip_checksum_ok: ip_ok,
        l4_checksum_ok: l4_ok,
    }
}

/// Recomputes the IPv4 header checksum of a frame (after a test edited the header).
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    frame[ETH_HLEN + 10] = 0;
    frame[ETH_HLEN + 11] = 0;
    let c = checksum(&frame[ETH_HLEN..ETH_HLEN + ihl]);
    frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
}

/// The frame as the first fragment of a larger datagram (more-fragments flag set).
pub fn first_fragment(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[ETH_HLEN + 6] |= 0x20;
    f[ETH_HLEN + 6] &= !0x40;
    fix_ipv4_checksum(&mut f);
    f
}

/// The frame with four bytes of IPv4 options (NOPs) after the header.
pub fn with_ip_options(frame: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame.len() + 4);
    f.extend_from_slice(&frame[..ETH_HLEN + 20]);
    f.extend_from_slice(&[1, 1, 1, 1]);
    f.extend_from_slice(&frame[ETH_HLEN + 20..]);
    f[ETH_HLEN] = 0x46;
    let total = u16::from_be_bytes([f[ETH_HLEN + 2], f[ETH_HLEN + 3]]) + 4;
    f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    f
}

/// An IPv4 frame carrying `payload` as protocol `proto` (ICMP, SCTP, ...), no ports parsed.
pub fn ipv4_other(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(
        &u16::try_from(20 + payload.len())
            .expect("short")
            .to_be_bytes(),
    );
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

/// An ICMP echo request.
pub fn icmp_echo(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0, 1, 0, 1, b'p', b'i', b'n', b'g'];
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4_other(src, dst, 1, &icmp)
}

/// Next-header values of IPv6 extension headers the tests insert.
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DEST_OPTIONS: u8 = 60;

/// The IPv6 frame with an 8-byte extension header of type `next_header` between the fixed
/// header and the transport header: options (one padding option) for hop-by-hop and destination
/// options, a first fragment (more-fragments set) for the fragment header.
///
/// # Panics
/// When the frame is not IPv6.
pub fn ipv6_with_extension(frame: &[u8], next_header: u8) -> Vec<u8> {
    assert_eq!(&frame[12..14], &[0x86, 0xdd], "IPv6 only");
    let ip = ETH_HLEN;
    let inner = frame[ip + 6];
    let ext: [u8; 8] = if next_header == IPV6_FRAGMENT {
        // Offset 0, more fragments; identification 0x01020304.
        [inner, 0, 0x00, 0x01, 1, 2, 3, 4]
    } else {
        [inner, 0, 1, 4, 0, 0, 0, 0]
    };
    let mut f = Vec::with_capacity(frame.len() + 8);
    f.extend_from_slice(&frame[..ip + 40]);
    f.extend_from_slice(&ext);
    f.extend_from_slice(&frame[ip + 40..]);
    f[ip + 6] = next_header;
    let len = u16::from_be_bytes([f[ip + 4], f[ip + 5]]) + 8;
    f[ip + 4..ip + 6].copy_from_slice(&len.to_be_bytes());
    f
}

/// An IPv6 frame carrying `payload` as next header `next_header` (an ICMP echo, ...).
pub fn ipv6_other(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    next_header: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
    let mut ip = [0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&u16::try_from(payload.len()).expect("short").to_be_bytes());
    ip[6] = next_header;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

/// A two-byte UDP payload with which a datagram from `src` to `dst` sums to a checksum of
/// 0, which must go on the wire as 0xffff (over IPv6, 0 would mean "no checksum", invalid).
/// A program that rewrites a datagram into this one must produce 0xffff.
pub fn udp_payload_summing_to_zero(src: SocketAddr, dst: SocketAddr) -> [u8; 2] {
    let mut l4 = vec![0u8; 10];
    l4[0..2].copy_from_slice(&src.port().to_be_bytes());
    l4[2..4].copy_from_slice(&dst.port().to_be_bytes());
    l4[4..6].copy_from_slice(&10u16.to_be_bytes());
    let mut sum = sum16(&l4, pseudo_header_sum(src.ip(), dst.ip(), IPPROTO_UDP, 10));
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The payload word brings the one's-complement sum to 0xffff: its complement is 0.
    let word = u16::try_from(0xffff - sum).expect("folded above");
    word.to_be_bytes()
}

/// The UDP checksum field of a frame as sent.
pub fn udp_checksum_field(frame: &[u8]) -> u16 {
    let l4 = if u16::from_be_bytes([frame[12], frame[13]]) == 0x86dd {
        ETH_HLEN + 40
    } else {
        ETH_HLEN + usize::from(frame[ETH_HLEN] & 0x0f) * 4
    };
    u16::from_be_bytes([frame[l4 + 6], frame[l4 + 7]])
}

/// An SCTP packet header (ports first, like TCP and UDP) without chunks.
pub fn sctp(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only");
    };
    let mut l4 = vec![0u8; 12];
    l4[0..2].copy_from_slice(&src.port().to_be_bytes());
    l4[2..4].copy_from_slice(&dst.port().to_be_bytes());
    ipv4_other(s, d, 132, &l4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_have_valid_checksums() {
        for (src, dst) in [
            ("10.0.0.1:1234", "10.96.0.10:53"),
            ("[fd00::1]:1234", "[fd00:96::10]:53"),
        ] {
            let src: SocketAddr = src.parse().unwrap();
            let dst: SocketAddr = dst.parse().unwrap();
            for frame in [
                Frame::udp(src, dst, b"hello"),
                Frame::tcp(src, dst, TCP_SYN),
            ] {
                let p = parse(&frame.build());
                assert_eq!((p.src, p.dst, p.proto), (src, dst, frame.proto));
                assert!(p.ip_checksum_ok && p.l4_checksum_ok, "{p:?}");
            }
        }
    }

    #[test]
    fn a_zero_summing_payload_gets_0xffff_and_an_ipv6_udp_zero_is_invalid() {
        let src: SocketAddr = "[fd00::1]:1234".parse().unwrap();
        let dst: SocketAddr = "[fd00:96::10]:53".parse().unwrap();
        let payload = udp_payload_summing_to_zero(src, dst);
        let mut bytes = Frame::udp(src, dst, &payload).build();
        assert_eq!(udp_checksum_field(&bytes), 0xffff);
        assert!(parse(&bytes).l4_checksum_ok);
        let at = ETH_HLEN + 40 + 6;
        bytes[at..at + 2].copy_from_slice(&[0, 0]);
        assert!(!parse(&bytes).l4_checksum_ok, "0 is no IPv6 UDP checksum");
    }

    #[test]
    fn an_extension_header_keeps_the_transport_header_behind_it() {
        let src: SocketAddr = "[fd00::1]:1234".parse().unwrap();
        let dst: SocketAddr = "[fd00:96::10]:80".parse().unwrap();
        let frame = Frame::tcp(src, dst, TCP_SYN).build();
        for ext in [IPV6_HOP_BY_HOP, IPV6_FRAGMENT, IPV6_DEST_OPTIONS] {
            let f = ipv6_with_extension(&frame, ext);
            assert_eq!(f.len(), frame.len() + 8);
            assert_eq!((f[ETH_HLEN + 6], f[ETH_HLEN + 40]), (ext, IPPROTO_TCP));
            assert_eq!(&f[ETH_HLEN + 48..], &frame[ETH_HLEN + 40..]);
        }
    }

    #[test]
    fn a_flipped_byte_breaks_the_checksum() {
        let src: SocketAddr = "10.0.0.1:1234".parse().unwrap();
        let dst: SocketAddr = "10.96.0.10:53".parse().unwrap();
        let mut bytes = Frame::udp(src, dst, b"hello").build();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        assert!(!parse(&bytes).l4_checksum_ok);
    }
}
