//! Strict IP and CIDR parsing, with kube-proxy's tolerance for legacy values.
//!
//! The API server has accepted IPv4 addresses with leading zeros (`010.001.002.003`) for a
//! long time and objects carrying them still exist; kube-proxy reads them "sloppily" as
//! decimal, so we do too. IPv4-mapped IPv6 addresses are IPv4 addresses, as in Go's `To4()`.
//! Everything else (whitespace, zones, octal/hex forms, out-of-range octets) is rejected.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// The address family of an IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub const BOTH: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    pub fn of_net(net: IpNet) -> Self {
        Self::of(net.addr())
    }

    /// The name the API uses (`IPv4`, `IPv6`).
    pub fn api_name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// Parses an IP address; `None` when it is not one.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let ip = match s.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => IpAddr::V4(parse_ipv4_leading_zeros(s)?),
    };
    Some(ip.to_canonical())
}

/// Dotted-quad IPv4 where octets may carry leading zeros, read as decimal (Go's
/// `ParseIPSloppy`).
fn parse_ipv4_leading_zeros(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// Parses a CIDR, normalising host bits away (`10.0.0.1/8` is `10.0.0.0/8`, as Go's
/// `ParseCIDR` returns it) and accepting leading zeros in IPv4 like [`parse_ip`].
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let (addr, len) = s.split_once('/')?;
    let ip = parse_ip(addr)?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    // A mapped IPv6 prefix (::ffff:10.0.0.0/104) becomes the IPv4 prefix it covers.
    let len = match (addr.parse::<IpAddr>(), ip) {
        (Ok(IpAddr::V6(_)), IpAddr::V4(_)) => len.checked_sub(96)?,
        _ => len,
    };
    IpNet::new(ip, len).ok().map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_parse_strictly_with_kube_proxys_legacy_forms() {
        let cases: &[(&str, Option<&str>)] = &[
            ("10.96.0.1", Some("10.96.0.1")),
            ("010.096.000.001", Some("10.96.0.1")),
            ("1.2.3.04", Some("1.2.3.4")),
            ("fd00::1", Some("fd00::1")),
            ("FD00:0::0001", Some("fd00::1")),
            ("::ffff:1.2.3.4", Some("1.2.3.4")),
            ("1.2.3.256", None),
            ("1.2.3", None),
            ("1.2.3.4.5", None),
            (" 1.2.3.4", None),
            ("1.2.3.4 ", None),
            ("0x1.2.3.4", None),
            ("1.2.3.0004", None),
            ("fe80::1%eth0", None),
            ("", None),
            ("None", None),
        ];
        for (input, want) in cases {
            let got = parse_ip(input).map(|ip| ip.to_string());
            assert_eq!(got.as_deref(), *want, "parse_ip({input:?})");
        }
    }

    #[test]
    fn cidrs_normalise_host_bits_and_mapped_prefixes() {
        let cases: &[(&str, Option<&str>)] = &[
            ("10.0.0.0/8", Some("10.0.0.0/8")),
            ("10.1.2.3/8", Some("10.0.0.0/8")),
            ("010.0.0.0/8", Some("10.0.0.0/8")),
            ("0.0.0.0/0", Some("0.0.0.0/0")),
            ("fd00::/64", Some("fd00::/64")),
            ("::ffff:10.0.0.0/104", Some("10.0.0.0/8")),
            ("10.0.0.0/33", None),
            ("10.0.0.0", None),
            ("10.0.0.0/", None),
            ("10.0.0.0/+8", None),
            ("fd00::/129", None),
        ];
        for (input, want) in cases {
            let got = parse_cidr(input).map(|n| n.to_string());
            assert_eq!(got.as_deref(), *want, "parse_cidr({input:?})");
        }
    }
}
