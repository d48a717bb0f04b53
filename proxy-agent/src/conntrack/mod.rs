//! The kernel's connection tracking table: listing and deleting flows over ctnetlink, and the
//! rules deciding which UDP and SCTP flows a sync has left pointing at a dead backend.
//!
//! Why a proxy deletes flows at all: a DNAT decision is made once per flow and stored in its
//! conntrack entry. TCP flows end (RST, FIN) when a backend goes away; a UDP or SCTP client
//! that keeps sending from the same source port never does, and its entry (refreshed by every
//! packet) keeps sending it to the dead backend for ever. kube-proxy deletes such entries after
//! each sync, and so do we ([`stale`]).
//!
//! The kernel sits behind [`Conntrack`]: [`NetlinkConntrack`] speaks ctnetlink over a
//! `NETLINK_NETFILTER` socket in the calling thread's network namespace, [`FakeConntrack`]
//! keeps flows in memory with the same matching and deletion semantics.

mod fake;
mod netlink;
pub mod stale;
mod wire;

use std::{fmt, io, net::IpAddr, time::Duration};

pub use fake::FakeConntrack;
pub use netlink::NetlinkConntrack;
pub use stale::{CLEANED_PROTOCOLS, CleanupReport, clean_stale_flows, stale_flows};

use crate::model::IpFamily;

/// One direction of a flow, as conntrack records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Zero for protocols without ports.
    pub src_port: u16,
    pub dst_port: u16,
    /// IANA protocol number (17 UDP, 132 SCTP, ...).
    pub protocol: u8,
}

impl Tuple {
    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.src)
    }
}

impl fmt::Display for Tuple {
    /// `src=10.0.0.1 dst=10.96.0.10 sport=40000 dport=53`, as `conntrack -L` prints a tuple.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "src={} dst={} sport={} dport={}",
            self.src, self.dst, self.src_port, self.dst_port
        )
    }
}

/// A conntrack entry: the tuple the first packet had, and the tuple replies are expected with
/// (after DNAT, a flow's reply comes from the backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    pub original: Tuple,
    pub reply: Tuple,
}

impl Flow {
    pub fn protocol(&self) -> u8 {
        self.original.protocol
    }

    pub fn family(&self) -> IpFamily {
        self.original.family()
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            ProtocolName(self.protocol()),
            self.original,
            self.reply
        )
    }
}

/// Selects flows: every field that is set must match (conntrack's `--orig-dst`,
/// `--orig-port-dst`, `--reply-src`, `--reply-port-src`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowFilter {
    pub protocol: u8,
    pub original_dst: Option<IpAddr>,
    pub original_dst_port: Option<u16>,
    pub reply_src: Option<IpAddr>,
    pub reply_src_port: Option<u16>,
}

impl FlowFilter {
    /// Every flow of a protocol.
    pub fn protocol(protocol: u8) -> Self {
        Self {
            protocol,
            original_dst: None,
            original_dst_port: None,
            reply_src: None,
            reply_src_port: None,
        }
    }

    /// Exactly the flows sent to `dst:dst_port` and answered from `reply_src:reply_src_port`.
    pub fn service_backend(
        protocol: u8,
        (dst, dst_port): (IpAddr, u16),
        (reply_src, reply_src_port): (IpAddr, u16),
    ) -> Self {
        Self {
            protocol,
            original_dst: Some(dst),
            original_dst_port: Some(dst_port),
            reply_src: Some(reply_src),
            reply_src_port: Some(reply_src_port),
        }
    }

    pub fn matches(&self, flow: &Flow) -> bool {
        let (o, r) = (&flow.original, &flow.reply);
        o.protocol == self.protocol
            && self.original_dst.is_none_or(|ip| ip == o.dst)
            && self.original_dst_port.is_none_or(|p| p == o.dst_port)
            && self.reply_src.is_none_or(|ip| ip == r.src)
            && self.reply_src_port.is_none_or(|p| p == r.src_port)
    }

    /// The families whose flows this filter can match: that of its addresses, or both when it
    /// names none. (A filter naming addresses of two families matches nothing.)
    pub fn families(&self) -> Vec<IpFamily> {
        match self.original_dst.or(self.reply_src) {
            Some(ip) => vec![IpFamily::of(ip)],
            None => IpFamily::BOTH.to_vec(),
        }
    }
}

impl fmt::Display for FlowFilter {
    /// In `conntrack -D` flag syntax, e.g. `-p udp --orig-dst 10.96.0.10 --orig-port-dst 53`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-p {}", ProtocolName(self.protocol))?;
        if let Some(ip) = self.original_dst {
            write!(f, " --orig-dst {ip}")?;
        }
        if let Some(port) = self.original_dst_port {
            write!(f, " --orig-port-dst {port}")?;
        }
        if let Some(ip) = self.reply_src {
            write!(f, " --reply-src {ip}")?;
        }
        if let Some(port) = self.reply_src_port {
            write!(f, " --reply-port-src {port}")?;
        }
        Ok(())
    }
}

/// An IP protocol number, printed by name when it has a common one.
struct ProtocolName(u8);

impl fmt::Display for ProtocolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("icmp"),
            6 => f.write_str("tcp"),
            17 => f.write_str("udp"),
            58 => f.write_str("icmpv6"),
            132 => f.write_str("sctp"),
            n => write!(f, "{n}"),
        }
    }
}

/// The kernel's connection tracking table, in one network namespace.
pub trait Conntrack {
    /// Every flow of this family and IP protocol.
    fn flows(&mut self, family: IpFamily, protocol: u8) -> Result<Vec<Flow>, ConntrackError>;

    /// Deletes every flow that matches at least one filter and returns how many it deleted.
    /// A flow that ends on its own meanwhile is neither an error nor counted.
    fn delete(&mut self, filters: &[FlowFilter]) -> Result<usize, ConntrackError>;
}

/// What was being asked of the kernel when something failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Dump { family: IpFamily, protocol: u8 },
    Delete { flow: Flow },
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dump { family, protocol } => write!(
                f,
                "listing {} {} flows",
                family.api_name(),
                ProtocolName(*protocol)
            ),
            Self::Delete { flow } => write!(f, "deleting flow {flow}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("opening a NETLINK_NETFILTER socket")]
    Open {
        #[source]
        source: io::Error,
    },
    #[error("{operation} on the conntrack netlink socket while {request}")]
    Io {
        operation: &'static str,
        request: Request,
        #[source]
        source: io::Error,
    },
    #[error("no answer from the kernel within {timeout:?} while {request}")]
    Timeout { request: Request, timeout: Duration },
    #[error("the kernel refused {request}")]
    Refused {
        request: Request,
        #[source]
        source: io::Error,
    },
    #[error("malformed ctnetlink message while {request}: {what} at byte {offset}")]
    Malformed {
        request: Request,
        what: &'static str,
        offset: usize,
    },
    #[error("{request}: the dump was interrupted {attempts} times in a row")]
    DumpInterrupted { request: Request, attempts: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(orig: (&str, &str, u16, u16), reply: (&str, &str, u16, u16)) -> Flow {
        let tuple = |(src, dst, sp, dp): (&str, &str, u16, u16)| Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: sp,
            dst_port: dp,
            protocol: 17,
        };
        Flow {
            original: tuple(orig),
            reply: tuple(reply),
        }
    }

    #[test]
    fn every_set_field_of_a_filter_must_match() {
        let f = flow(
            ("10.244.1.9", "10.96.0.10", 40000, 53),
            ("10.244.2.5", "10.244.1.9", 5353, 40000),
        );
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let base = FlowFilter::protocol(17);
        let cases = [
            (base, true),
            (FlowFilter::protocol(132), false),
            (
                FlowFilter {
                    original_dst: ip("10.96.0.10"),
                    ..base
                },
                true,
            ),
            (
                FlowFilter {
                    original_dst: ip("10.96.0.11"),
                    ..base
                },
                false,
            ),
            (
                FlowFilter {
                    original_dst_port: Some(53),
                    reply_src: ip("10.244.2.5"),
                    ..base
                },
                true,
            ),
            (
                FlowFilter {
                    original_dst_port: Some(53),
                    reply_src: ip("10.244.2.6"),
                    ..base
                },
                false,
            ),
            (
                FlowFilter::service_backend(
                    17,
                    ("10.96.0.10".parse().unwrap(), 53),
                    ("10.244.2.5".parse().unwrap(), 5353),
                ),
                true,
            ),
            (
                FlowFilter::service_backend(
                    17,
                    ("10.96.0.10".parse().unwrap(), 53),
                    ("10.244.2.5".parse().unwrap(), 53),
                ),
                false,
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(filter.matches(&f), want, "{filter}");
        }
    }

    #[test]
    fn filters_and_flows_print_like_the_conntrack_tool() {
        let f = flow(
            ("10.244.1.9", "10.96.0.10", 40000, 53),
            ("10.244.2.5", "10.244.1.9", 5353, 40000),
        );
        assert_eq!(
            f.to_string(),
            "udp src=10.244.1.9 dst=10.96.0.10 sport=40000 dport=53 \
             src=10.244.2.5 dst=10.244.1.9 sport=5353 dport=40000"
        );
        let filter = FlowFilter::service_backend(
            17,
            ("10.96.0.10".parse().unwrap(), 53),
            ("10.244.2.5".parse().unwrap(), 5353),
        );
        assert_eq!(
            filter.to_string(),
            "-p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --reply-src 10.244.2.5 --reply-port-src 5353"
        );
        assert_eq!(filter.families(), vec![IpFamily::V4]);
        assert_eq!(FlowFilter::protocol(17).families(), IpFamily::BOTH.to_vec());
    }
}
