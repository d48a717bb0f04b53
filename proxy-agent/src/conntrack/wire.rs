//! ctnetlink on the wire: building the two requests we send (dump, delete) and parsing what the
//! kernel answers. Pure, so that it is tested on bytes written by hand and bytes a real kernel
//! sent.
//!
//! Layout (`linux/netlink.h`, `linux/netfilter/nfnetlink.h`, `nfnetlink_conntrack.h`): every message
//! is a 16-byte `nlmsghdr` in host byte order, then for conntrack messages a 4-byte `nfgenmsg`
//! (address family, version, resource id), then attributes: `nla_len: u16, nla_type: u16`,
//! payload, padding to 4 bytes. Addresses, ports, ids and zones inside attributes are in
//! network byte order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Flow, Tuple};
use crate::model::IpFamily;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
/// Set on messages of a dump whose table changed in a way that may have hidden entries.
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x100 | 0x200;

const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(3 << 14);

const NFNETLINK_V0: u8 = 0;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;

const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;

const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;

const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// `AF_INET` and `AF_INET6` as the `nfgenmsg` family byte.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

pub fn family_byte(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => AF_INET,
        IpFamily::V6 => AF_INET6,
    }
}

/// A conntrack entry as a dump reports it: the flow, and what a delete needs to name exactly
/// this entry (and not a newer one that reuses its tuple).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub flow: Flow,
    /// `CTA_ID`; a delete carrying it fails with `ENOENT` if the entry was replaced meanwhile.
    pub id: Option<u32>,
    /// `CTA_ZONE`, when not the default zone 0: a delete without it would not find the entry.
    pub zone: Option<u16>,
}

/// One message of the kernel's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A conntrack entry, from a dump.
    Entry {
        seq: u32,
        entry: Entry,
        interrupted: bool,
    },
    /// An error, or with `errno` 0 an acknowledgement.
    Error { seq: u32, errno: i32 },
    /// The end of a dump, which may carry an error too.
    Done {
        seq: u32,
        errno: i32,
        interrupted: bool,
    },
    /// The kernel dropped messages for us (`NLMSG_OVERRUN`).
    Overrun { seq: u32 },
    /// A type we do not use (e.g. `NLMSG_NOOP`).
    Ignored { seq: u32 },
}

impl Message {
    pub fn seq(&self) -> u32 {
        match self {
            Self::Entry { seq, .. }
            | Self::Error { seq, .. }
            | Self::Done { seq, .. }
            | Self::Overrun { seq }
            | Self::Ignored { seq } => *seq,
        }
    }
}

/// Where a message stopped making sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed {
    pub what: &'static str,
    pub offset: usize,
}

fn malformed<T>(what: &'static str, offset: usize) -> Result<T, Malformed> {
    Err(Malformed { what, offset })
}

/// Writes one netlink message; lengths are patched in by [`Builder::finish`] and nested
/// attributes.
struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    fn new(message_type: u16, flags: u16, seq: u32, family: u8) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched by finish
        buf.extend_from_slice(&message_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: 0, the kernel fills it in
        buf.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]);
        Self { buf }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = u16::try_from(NLA_HDRLEN + payload.len()).expect("attribute under 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn nested(&mut self, kind: u16, body: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        body(self);
        let len = u16::try_from(self.buf.len() - start).expect("attribute under 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn tuple(&mut self, kind: u16, tuple: &Tuple) {
        self.nested(kind, |b| {
            b.nested(CTA_TUPLE_IP, |b| match (tuple.src, tuple.dst) {
                (IpAddr::V4(src), IpAddr::V4(dst)) => {
                    b.attr(CTA_IP_V4_SRC, &src.octets());
                    b.attr(CTA_IP_V4_DST, &dst.octets());
                }
                (src, dst) => {
                    b.attr(CTA_IP_V6_SRC, &v6(src).octets());
                    b.attr(CTA_IP_V6_DST, &v6(dst).octets());
                }
            });
            b.nested(CTA_TUPLE_PROTO, |b| {
                b.attr(CTA_PROTO_NUM, &[tuple.protocol]);
                b.attr(CTA_PROTO_SRC_PORT, &tuple.src_port.to_be_bytes());
                b.attr(CTA_PROTO_DST_PORT, &tuple.dst_port.to_be_bytes());
            });
        });
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).expect("message under 4 GiB");
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`: every entry of one family (the kernel filters on
/// `nfgenmsg.nfgen_family`).
pub fn dump_request(seq: u32, family: IpFamily) -> Vec<u8> {
    Builder::new(
        NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family_byte(family),
    )
    .finish()
}

/// `IPCTNL_MSG_CT_DELETE` of one entry by its original tuple (and id and zone when known),
/// asking for an acknowledgement.
pub fn delete_request(seq: u32, entry: &Entry) -> Vec<u8> {
    let mut b = Builder::new(
        NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family_byte(entry.flow.family()),
    );
    b.tuple(CTA_TUPLE_ORIG, &entry.flow.original);
    if let Some(zone) = entry.zone {
        b.attr(CTA_ZONE, &zone.to_be_bytes());
    }
    if let Some(id) = entry.id {
        b.attr(CTA_ID, &id.to_be_bytes());
    }
    b.finish()
}

/// Encodes an entry the way a dump reports it (what the kernel sends, not what we do): for
/// the parser's tests and for fakes that speak netlink.
#[cfg(test)]
pub fn entry_message(seq: u32, flags: u16, entry: &Entry) -> Vec<u8> {
    let mut b = Builder::new(
        NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW,
        flags,
        seq,
        family_byte(entry.flow.family()),
    );
    b.tuple(CTA_TUPLE_ORIG, &entry.flow.original);
    b.tuple(CTA_TUPLE_REPLY, &entry.flow.reply);
    if let Some(zone) = entry.zone {
        b.attr(CTA_ZONE, &zone.to_be_bytes());
    }
    if let Some(id) = entry.id {
        b.attr(CTA_ID, &id.to_be_bytes());
    }
    b.finish()
}

/// Parses one datagram, which holds one or more messages.
pub fn parse(buf: &[u8]) -> Result<Vec<Message>, Malformed> {
    let mut messages = Vec::new();
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        if rest.len() < NLMSG_HDRLEN {
            return malformed("truncated message header", offset);
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return malformed("message length out of bounds", offset);
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let flags = u16::from_ne_bytes([rest[6], rest[7]]);
        let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
        let payload = &rest[NLMSG_HDRLEN..len];
        let interrupted = flags & NLM_F_DUMP_INTR != 0;
        let payload_offset = offset + NLMSG_HDRLEN;
        messages.push(match kind {
            NLMSG_ERROR => Message::Error {
                seq,
                errno: errno(payload, payload_offset)?.ok_or(Malformed {
                    what: "error message without an error code",
                    offset: payload_offset,
                })?,
            },
            NLMSG_DONE => Message::Done {
                seq,
                errno: errno(payload, payload_offset)?.unwrap_or(0),
                interrupted,
            },
            NLMSG_OVERRUN => Message::Overrun { seq },
            NLMSG_NOOP => Message::Ignored { seq },
            k if k == NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW => Message::Entry {
                seq,
                entry: parse_entry(payload, payload_offset)?,
                interrupted,
            },
            _ => Message::Ignored { seq },
        });
        offset += align(len).min(rest.len());
    }
    Ok(messages)
}

fn align(len: usize) -> usize {
    len.next_multiple_of(4)
}

/// The negative errno at the start of an `NLMSG_ERROR` or `NLMSG_DONE` payload, as a positive
/// errno (0 for an acknowledgement); `None` when the payload is empty.
fn errno(payload: &[u8], offset: usize) -> Result<Option<i32>, Malformed> {
    match payload.get(..4) {
        Some(bytes) => {
            let code = i32::from_ne_bytes(bytes.try_into().expect("4 bytes"));
            Ok(Some(code.checked_neg().ok_or(Malformed {
                what: "error code out of range",
                offset,
            })?))
        }
        None if payload.is_empty() => Ok(None),
        None => malformed("truncated error code", offset),
    }
}

/// One attribute: its type (flags masked off), payload, and where the payload starts in the
/// datagram (for error messages).
struct Attr<'a> {
    kind: u16,
    payload: &'a [u8],
    offset: usize,
}

fn attributes(buf: &[u8], base: usize) -> Result<Vec<Attr<'_>>, Malformed> {
    let mut attrs = Vec::new();
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        if rest.len() < NLA_HDRLEN {
            return malformed("truncated attribute header", base + offset);
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        if len < NLA_HDRLEN || len > rest.len() {
            return malformed("attribute length out of bounds", base + offset);
        }
        attrs.push(Attr {
            kind: u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK,
            payload: &rest[NLA_HDRLEN..len],
            offset: base + offset + NLA_HDRLEN,
        });
        offset += align(len).min(rest.len());
    }
    Ok(attrs)
}

fn find<'a, 'b>(attrs: &'b [Attr<'a>], kind: u16) -> Option<&'b Attr<'a>> {
    attrs.iter().find(|a| a.kind == kind)
}

impl Attr<'_> {
    fn array<const N: usize>(&self, what: &'static str) -> Result<[u8; N], Malformed> {
        self.payload.try_into().map_err(|_| Malformed {
            what,
            offset: self.offset,
        })
    }

    fn nested(&self) -> Result<Vec<Attr<'_>>, Malformed> {
        attributes(self.payload, self.offset)
    }
}

fn parse_entry(payload: &[u8], offset: usize) -> Result<Entry, Malformed> {
    if payload.len() < NFGENMSG_LEN {
        return malformed("truncated nfgenmsg", offset);
    }
    let attrs = attributes(&payload[NFGENMSG_LEN..], offset + NFGENMSG_LEN)?;
    let tuple = |kind, what| match find(&attrs, kind) {
        Some(attr) => parse_tuple(attr),
        None => malformed(what, offset),
    };
    let original = tuple(CTA_TUPLE_ORIG, "entry without an original tuple")?;
    let reply = tuple(CTA_TUPLE_REPLY, "entry without a reply tuple")?;
    let id = find(&attrs, CTA_ID)
        .map(|a| {
            a.array::<4>("CTA_ID is not 4 bytes")
                .map(u32::from_be_bytes)
        })
        .transpose()?;
    let zone = find(&attrs, CTA_ZONE)
        .map(|a| {
            a.array::<2>("CTA_ZONE is not 2 bytes")
                .map(u16::from_be_bytes)
        })
        .transpose()?
        .filter(|z| *z != 0);
    Ok(Entry {
        flow: Flow { original, reply },
        id,
        zone,
    })
}

fn parse_tuple(attr: &Attr<'_>) -> Result<Tuple, Malformed> {
    let attrs = attr.nested()?;
    let Some(ip) = find(&attrs, CTA_TUPLE_IP) else {
        return malformed("tuple without addresses", attr.offset);
    };
    let Some(proto) = find(&attrs, CTA_TUPLE_PROTO) else {
        return malformed("tuple without a protocol", attr.offset);
    };

    let ips = ip.nested()?;
    let v4 = |kind, what| {
        find(&ips, kind)
            .map(|a| a.array::<4>(what).map(|o| IpAddr::V4(Ipv4Addr::from(o))))
            .transpose()
    };
    let v6 = |kind, what| {
        find(&ips, kind)
            .map(|a| a.array::<16>(what).map(|o| IpAddr::V6(Ipv6Addr::from(o))))
            .transpose()
    };
    let ((Some(src), Some(dst), None, None) | (None, None, Some(src), Some(dst))) = (
        v4(CTA_IP_V4_SRC, "IPv4 source is not 4 bytes")?,
        v4(CTA_IP_V4_DST, "IPv4 destination is not 4 bytes")?,
        v6(CTA_IP_V6_SRC, "IPv6 source is not 16 bytes")?,
        v6(CTA_IP_V6_DST, "IPv6 destination is not 16 bytes")?,
    ) else {
        return malformed("tuple without one source and one destination", ip.offset);
    };

    let l4 = proto.nested()?;
    let Some(number) = find(&l4, CTA_PROTO_NUM) else {
        return malformed("tuple without a protocol number", proto.offset);
    };
    let [protocol] = number.array::<1>("protocol number is not 1 byte")?;
    let port = |kind, what| -> Result<u16, Malformed> {
        Ok(find(&l4, kind)
            .map(|a| a.array::<2>(what))
            .transpose()?
            .map_or(0, u16::from_be_bytes))
    };
    Ok(Tuple {
        src,
        dst,
        src_port: port(CTA_PROTO_SRC_PORT, "source port is not 2 bytes")?,
        dst_port: port(CTA_PROTO_DST_PORT, "destination port is not 2 bytes")?,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tuple(src: &str, dst: &str, src_port: u16, dst_port: u16) -> Tuple {
        Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port,
            dst_port,
            protocol: 17,
        }
    }

    /// A UDP flow from a pod to a cluster IP, sent to a backend by DNAT.
    fn dnat_entry() -> Entry {
        Entry {
            flow: Flow {
                original: tuple("10.244.1.9", "10.96.0.10", 40000, 53),
                reply: tuple("10.244.2.5", "10.244.1.9", 5353, 40000),
            },
            id: Some(0xdead_beef),
            zone: None,
        }
    }

    /// Header fields in host order, as the kernel writes them.
    fn header(len: u32, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        [
            &len.to_ne_bytes()[..],
            &kind.to_ne_bytes(),
            &flags.to_ne_bytes(),
            &seq.to_ne_bytes(),
            &0u32.to_ne_bytes(),
        ]
        .concat()
    }

    fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = [
            &u16::try_from(4 + payload.len()).unwrap().to_ne_bytes()[..],
            &kind.to_ne_bytes(),
            payload,
        ]
        .concat();
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    #[test]
    fn a_dump_request_asks_ctnetlink_for_every_entry_of_one_family() {
        let want = [header(20, 0x0101, 0x0301, 7), vec![10, 0, 0, 0]].concat();
        assert_eq!(dump_request(7, IpFamily::V6), want);
    }

    #[test]
    fn a_delete_names_the_original_tuple_zone_and_id() {
        let entry = Entry {
            zone: Some(3),
            ..dnat_entry()
        };
        let ip = [
            nla(CTA_IP_V4_SRC, &[10, 244, 1, 9]),
            nla(CTA_IP_V4_DST, &[10, 96, 0, 10]),
        ]
        .concat();
        let proto = [
            nla(CTA_PROTO_NUM, &[17]),
            nla(CTA_PROTO_SRC_PORT, &40000u16.to_be_bytes()),
            nla(CTA_PROTO_DST_PORT, &[0, 53]),
        ]
        .concat();
        let orig = [
            nla(CTA_TUPLE_IP | NLA_F_NESTED, &ip),
            nla(CTA_TUPLE_PROTO | NLA_F_NESTED, &proto),
        ]
        .concat();
        let attrs = [
            nla(CTA_TUPLE_ORIG | NLA_F_NESTED, &orig),
            nla(CTA_ZONE, &[0, 3]),
            nla(CTA_ID, &[0xde, 0xad, 0xbe, 0xef]),
        ]
        .concat();
        let len = u32::try_from(16 + 4 + attrs.len()).unwrap();
        let want = [header(len, 0x0102, 0x0005, 9), vec![2, 0, 0, 0], attrs].concat();
        assert_eq!(delete_request(9, &entry), want);
    }

    /// An entry message written out byte by byte, with the attributes a real kernel adds that
    /// we skip (status, timeout, mark, use) and without padding after the last attribute.
    #[test]
    fn an_entry_written_by_hand_parses_with_unknown_attributes_skipped() {
        let tuple_attr = |kind, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16| {
            let ip = [nla(CTA_IP_V4_SRC, &src), nla(CTA_IP_V4_DST, &dst)].concat();
            let proto = [
                nla(CTA_PROTO_NUM, &[17]),
                nla(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
                nla(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
            ]
            .concat();
            nla(
                kind | NLA_F_NESTED,
                &[
                    nla(CTA_TUPLE_IP | NLA_F_NESTED, &ip),
                    nla(CTA_TUPLE_PROTO | NLA_F_NESTED, &proto),
                ]
                .concat(),
            )
        };
        let attrs = [
            tuple_attr(CTA_TUPLE_ORIG, [10, 244, 1, 9], [10, 96, 0, 10], 40000, 53),
            tuple_attr(
                CTA_TUPLE_REPLY,
                [10, 244, 2, 5],
                [10, 244, 1, 9],
                5353,
                40000,
            ),
            nla(3, &0x188u32.to_be_bytes()), // CTA_STATUS
            nla(7, &30u32.to_be_bytes()),    // CTA_TIMEOUT
            nla(8, &0u32.to_be_bytes()),     // CTA_MARK
            nla(11, &1u32.to_be_bytes()),    // CTA_USE
            nla(CTA_ID, &0xdead_beefu32.to_be_bytes()),
            vec![5, 0, 99, 0, 7], // unknown attribute, 1-byte payload, unpadded
        ]
        .concat();
        let len = u32::try_from(16 + 4 + attrs.len()).unwrap();
        let msg = [header(len, 0x0100, 0x0002, 1), vec![2, 0, 0, 0], attrs].concat();
        assert_eq!(
            parse(&msg).unwrap(),
            vec![Message::Entry {
                seq: 1,
                entry: dnat_entry(),
                interrupted: false
            }]
        );
    }

    /// Two datagrams a 6.18 kernel sent for a dump: one UDP entry (10.244.1.9:40000 to
    /// 10.96.0.10:53, sent to 10.244.2.5:5353 by DNAT; with status, mark, id, use and timeout), then
    /// `NLMSG_DONE`. Headers are little-endian, as on the machine that captured them.
    #[cfg(target_endian = "little")]
    #[test]
    fn a_dump_captured_from_a_real_kernel_parses() {
        let entry = "a40000000001220001000000d7310000020000003400018014000180080001000af40109\
                     080002000a60000a1c0002800500010011000000060002009c4000000600030000350000\
                     3400028014000180080001000af40205080002000af401091c0002800500010011000000\
                     0600020014e90000060003009c40000008000300000001a8080008000000000008000c00\
                     b6b5221908000b0000000001080007000000001d";
        let done = "140000000300020001000000d731000000000000";
        let bytes = |hex: &str| -> Vec<u8> {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect()
        };
        assert_eq!(
            parse(&bytes(entry)).unwrap(),
            vec![Message::Entry {
                seq: 1,
                entry: Entry {
                    flow: Flow {
                        original: tuple("10.244.1.9", "10.96.0.10", 40000, 53),
                        reply: tuple("10.244.2.5", "10.244.1.9", 5353, 40000),
                    },
                    id: Some(0xb6b5_2219),
                    zone: None,
                },
                interrupted: false,
            }]
        );
        assert_eq!(
            parse(&bytes(done)).unwrap(),
            vec![Message::Done {
                seq: 1,
                errno: 0,
                interrupted: false
            }]
        );
    }

    #[test]
    fn several_messages_in_one_datagram_end_with_done_errors_and_acks() {
        let v6 = Entry {
            flow: Flow {
                original: tuple("fd00:244:1::9", "fd00:96::10", 40000, 53),
                reply: tuple("fd00:244:2::5", "fd00:244:1::9", 5353, 40000),
            },
            id: None,
            zone: Some(7),
        };
        let done = [header(20, NLMSG_DONE, 0x2, 1), 0i32.to_ne_bytes().to_vec()].concat();
        let enoent = [
            header(36, NLMSG_ERROR, 0, 4),
            (-libc::ENOENT).to_ne_bytes().to_vec(),
            header(16, 0x0102, 0x5, 4),
        ]
        .concat();
        let ack = [header(20, NLMSG_ERROR, 0x100, 5), vec![0; 4]].concat();
        let datagram = [
            entry_message(1, 0x2, &dnat_entry()),
            entry_message(1, 0x2 | NLM_F_DUMP_INTR, &v6),
            done,
            enoent,
            ack,
            header(16, NLMSG_NOOP, 0, 6),
        ]
        .concat();
        assert_eq!(
            parse(&datagram).unwrap(),
            vec![
                Message::Entry {
                    seq: 1,
                    entry: dnat_entry(),
                    interrupted: false
                },
                Message::Entry {
                    seq: 1,
                    entry: v6,
                    interrupted: true
                },
                Message::Done {
                    seq: 1,
                    errno: 0,
                    interrupted: false
                },
                Message::Error {
                    seq: 4,
                    errno: libc::ENOENT
                },
                Message::Error { seq: 5, errno: 0 },
                Message::Ignored { seq: 6 },
            ]
        );
    }

    #[test]
    fn broken_messages_are_reported_with_where_they_broke() {
        let good = entry_message(1, 0x2, &dnat_entry());
        let mut too_long = good.clone();
        too_long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        let mut bad_attr = good.clone();
        // The first attribute's length, just after nlmsghdr and nfgenmsg.
        bad_attr[20..22].copy_from_slice(&2u16.to_ne_bytes());
        let without_reply = {
            let mut b = Builder::new(0x0100, 0x2, 1, AF_INET);
            b.tuple(CTA_TUPLE_ORIG, &dnat_entry().flow.original);
            b.finish()
        };
        let short_address = {
            let mut b = Builder::new(0x0100, 0x2, 1, AF_INET);
            b.nested(CTA_TUPLE_ORIG, |b| {
                b.nested(CTA_TUPLE_IP, |b| {
                    b.attr(CTA_IP_V4_SRC, &[10, 0, 0]);
                    b.attr(CTA_IP_V4_DST, &[10, 0, 0, 1]);
                });
                b.nested(CTA_TUPLE_PROTO, |b| b.attr(CTA_PROTO_NUM, &[17]));
            });
            b.finish()
        };
        let cases: [(&[u8], &str, usize); 6] = [
            (&good[..10], "truncated message header", 0),
            (&too_long, "message length out of bounds", 0),
            (&bad_attr, "attribute length out of bounds", 20),
            (&without_reply, "entry without a reply tuple", 16),
            (&short_address, "IPv4 source is not 4 bytes", 32),
            (
                &header(17, NLMSG_ERROR, 0, 1)
                    .into_iter()
                    .chain([0])
                    .collect::<Vec<_>>(),
                "truncated error code",
                16,
            ),
        ];
        for (bytes, what, offset) in cases {
            assert_eq!(parse(bytes), Err(Malformed { what, offset }), "{what}");
        }
    }

    fn arb_ip(v6: bool) -> BoxedStrategy<IpAddr> {
        if v6 {
            any::<[u8; 16]>()
                .prop_map(|o| IpAddr::V6(Ipv6Addr::from(o)))
                .boxed()
        } else {
            any::<[u8; 4]>()
                .prop_map(|o| IpAddr::V4(Ipv4Addr::from(o)))
                .boxed()
        }
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        any::<bool>().prop_flat_map(|v6| {
            let tuple = (
                arb_ip(v6),
                arb_ip(v6),
                any::<u16>(),
                any::<u16>(),
                any::<u8>(),
            )
                .prop_map(|(src, dst, src_port, dst_port, protocol)| Tuple {
                    src,
                    dst,
                    src_port,
                    dst_port,
                    protocol,
                });
            (
                tuple.clone(),
                tuple,
                any::<Option<u32>>(),
                any::<Option<u16>>(),
            )
                .prop_map(|(original, mut reply, id, zone)| {
                    reply.protocol = original.protocol;
                    Entry {
                        flow: Flow { original, reply },
                        id,
                        zone: zone.filter(|z| *z != 0),
                    }
                })
        })
    }

    proptest! {
        #[test]
        fn every_entry_survives_encoding_and_parsing(entries in proptest::collection::vec(arb_entry(), 1..8)) {
            let datagram: Vec<u8> = entries.iter().flat_map(|e| entry_message(3, 0x2, e)).collect();
            let parsed = parse(&datagram).unwrap();
            let back: Vec<Entry> = parsed
                .into_iter()
                .map(|m| match m {
                    Message::Entry { entry, .. } => entry,
                    other => panic!("unexpected {other:?}"),
                })
                .collect();
            prop_assert_eq!(back, entries);
        }

        #[test]
        fn the_parser_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn the_parser_never_panics_on_a_damaged_entry(
            entry in arb_entry(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = entry_message(1, 0x2, &entry);
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let _ = parse(&bytes);
        }
    }
}
