//! The few netlink conversations the fast path needs, spoken directly over `AF_NETLINK`
//! sockets: the IPv4 routes and links (to find pod-facing interfaces), and link and route
//! events (to notice new and vanished pod interfaces).

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const NLA_TYPE_MASK: u16 = 0x3fff;
const RT_TABLE_MAIN: u32 = 254;

/// A netlink socket.
#[derive(Debug)]
struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    fn open(protocol: i32, groups: u32) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_nl is valid; fields set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = u16::try_from(libc::AF_NETLINK).expect("small");
        addr.nl_groups = groups;
        // SAFETY: `addr` is a valid sockaddr_nl of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                u32::try_from(size_of::<libc::sockaddr_nl>()).expect("small"),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 1 })
    }

    fn send(&mut self, msg_type: u16, flags: u16, payload: &[u8]) -> io::Result<()> {
        self.seq += 1;
        let len = NLMSG_HDRLEN + payload.len();
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&u32::try_from(len).expect("small").to_ne_bytes());
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&self.seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(payload);
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let rc = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(rc).expect("non-negative"))
    }

    /// Sends a dump request and calls `each(type, payload)` for every answer.
    fn dump(
        &mut self,
        msg_type: u16,
        payload: &[u8],
        mut each: impl FnMut(u16, &[u8]),
    ) -> io::Result<()> {
        self.send(msg_type, NLM_F_REQUEST | NLM_F_DUMP, payload)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.recv(&mut buf)?;
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
                if len < NLMSG_HDRLEN || off + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad netlink message",
                    ));
                }
                let body = &buf[off + NLMSG_HDRLEN..off + len];
                match ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(body[..4].try_into().expect("4"));
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                    }
                    _ => each(ty, body),
                }
                off += (len + 3) & !3;
            }
        }
    }
}

/// Iterates netlink attributes: `(type without flags, payload)`.
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let ty = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[((len + 3) & !3).min(data.len())..];
        Some((ty, payload))
    })
}

/// An IPv4 route with an output interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub oif: u32,
}

/// The IPv4 routes of the main table that name an output interface.
pub fn ipv4_routes() -> io::Result<Vec<Route>> {
    let mut sock = Socket::open(libc::NETLINK_ROUTE, 0)?;
    let mut rtmsg = [0u8; 12];
    rtmsg[0] = u8::try_from(libc::AF_INET).expect("small");
    let mut out = Vec::new();
    sock.dump(RTM_GETROUTE, &rtmsg, |ty, body| {
        if ty != RTM_NEWROUTE || body.len() < 12 {
            return;
        }
        let prefix_len = body[1];
        let mut table = u32::from(body[4]);
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut oif = None;
        for (aty, payload) in attrs(&body[12..]) {
            match aty {
                RTA_DST if payload.len() == 4 => {
                    dst = Ipv4Addr::new(payload[0], payload[1], payload[2], payload[3]);
                }
                RTA_OIF if payload.len() == 4 => {
                    oif = Some(u32::from_ne_bytes(payload.try_into().expect("4")));
                }
                RTA_TABLE if payload.len() == 4 => {
                    table = u32::from_ne_bytes(payload.try_into().expect("4"));
                }
                _ => {}
            }
        }
        if let (RT_TABLE_MAIN, Some(oif)) = (table, oif) {
            out.push(Route {
                dst,
                prefix_len,
                oif,
            });
        }
    })?;
    Ok(out)
}

/// A netlink socket subscribed to link and IPv4 route changes.
#[derive(Debug)]
pub struct ChangeEvents {
    sock: Socket,
}

impl ChangeEvents {
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            sock: Socket::open(libc::NETLINK_ROUTE, RTMGRP_LINK | RTMGRP_IPV4_ROUTE)?,
        })
    }

    /// Waits up to `timeout` for a change; returns whether one arrived (after draining every
    /// queued message, so that a burst counts once).
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut seen = false;
        let mut wait_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let mut pfd = libc::pollfd {
                fd: self.sock.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&raw mut pfd, 1, wait_ms) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if rc == 0 {
                return Ok(seen);
            }
            match self.sock.recv(&mut buf) {
                Ok(_) => seen = true,
                // The kernel dropped events for us: something changed.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => seen = true,
                Err(e) => return Err(e),
            }
            wait_ms = 0;
        }
    }
}

/// The original-direction tuple of a kernel conntrack entry (addresses and ports in network
/// order, as the maps store them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConntrackTuple {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// The original-direction tuple of a kernel IPv6 conntrack entry (in the maps' wire form).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConntrackTuple6 {
    pub src: proxy_common::Ipv6Words,
    pub dst: proxy_common::Ipv6Words,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// One interface of the calling thread's network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    /// Its MAC address, if it has one.
    pub mac: Option<[u8; 6]>,
    /// The bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
}

/// Every interface of the calling thread's network namespace, by name. (Read over netlink:
/// `/sys/class/net` shows the namespace `/sys` was mounted in instead.)
pub fn links() -> io::Result<Vec<Link>> {
    const RTM_NEWLINK: u16 = 16;
    const RTM_GETLINK: u16 = 18;
    const IFLA_ADDRESS: u16 = 1;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_MASTER: u16 = 10;
    let mut sock = Socket::open(libc::NETLINK_ROUTE, 0)?;
    let ifinfomsg = [0u8; 16];
    let mut out = Vec::new();
    sock.dump(RTM_GETLINK, &ifinfomsg, |ty, body| {
        if ty != RTM_NEWLINK || body.len() < 16 {
            return;
        }
        let mut link = Link {
            name: String::new(),
            index: u32::from_ne_bytes(body[4..8].try_into().expect("4")),
            mac: None,
            master: None,
        };
        for (aty, payload) in attrs(&body[16..]) {
            match aty {
                IFLA_IFNAME => {
                    let name = payload.split(|b| *b == 0).next().unwrap_or_default();
                    link.name = String::from_utf8_lossy(name).into_owned();
                }
                IFLA_ADDRESS => link.mac = <[u8; 6]>::try_from(payload).ok(),
                IFLA_MASTER if payload.len() == 4 => {
                    link.master = Some(u32::from_ne_bytes(payload.try_into().expect("4")));
                }
                _ => {}
            }
        }
        out.push(link);
    })?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Interfaces of the calling thread's network namespace: `(name, index)`, by name.
pub fn interfaces() -> io::Result<Vec<(String, u32)>> {
    Ok(links()?.into_iter().map(|l| (l.name, l.index)).collect())
}

/// The index of an interface, if it exists (in the calling thread's namespace).
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// A resolved IPv4 neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub if_index: u32,
    pub addr: Ipv4Addr,
    pub mac: [u8; 6],
}

/// The IPv4 neighbours with a link-layer address (not incomplete or failed).
pub fn ipv4_neighbours() -> io::Result<Vec<Neighbour>> {
    const RTM_NEWNEIGH: u16 = 28;
    const RTM_GETNEIGH: u16 = 30;
    const NDA_DST: u16 = 1;
    const NDA_LLADDR: u16 = 2;
    const NUD_INCOMPLETE: u16 = 0x01;
    const NUD_FAILED: u16 = 0x20;
    let mut sock = Socket::open(libc::NETLINK_ROUTE, 0)?;
    let mut ndmsg = [0u8; 12];
    ndmsg[0] = u8::try_from(libc::AF_INET).expect("small");
    let mut out = Vec::new();
    sock.dump(RTM_GETNEIGH, &ndmsg, |ty, body| {
        if ty != RTM_NEWNEIGH || body.len() < 12 {
            return;
        }
        let if_index = u32::from_ne_bytes(body[4..8].try_into().expect("4"));
        let state = u16::from_ne_bytes(body[8..10].try_into().expect("2"));
        if state & (NUD_INCOMPLETE | NUD_FAILED) != 0 {
            return;
        }
        let mut addr = None;
        let mut mac = None;
        for (aty, payload) in attrs(&body[12..]) {
            match aty {
                NDA_DST if payload.len() == 4 => {
                    addr = Some(Ipv4Addr::new(
                        payload[0], payload[1], payload[2], payload[3],
                    ));
                }
                NDA_LLADDR => mac = <[u8; 6]>::try_from(payload).ok(),
                _ => {}
            }
        }
        if let (Some(addr), Some(mac)) = (addr, mac) {
            out.push(Neighbour {
                if_index,
                addr,
                mac,
            });
        }
    })?;
    Ok(out)
}

/// A bridge forwarding-database entry: a MAC address learned (or set) on a bridge port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub port: u32,
    pub bridge: u32,
    pub mac: [u8; 6],
}

/// The bridges' forwarding databases (`bridge fdb show`).
pub fn bridge_fdb() -> io::Result<Vec<FdbEntry>> {
    const RTM_NEWNEIGH: u16 = 28;
    const RTM_GETNEIGH: u16 = 30;
    const NDA_LLADDR: u16 = 2;
    const NDA_MASTER: u16 = 9;
    let mut sock = Socket::open(libc::NETLINK_ROUTE, 0)?;
    let mut ndmsg = [0u8; 12];
    ndmsg[0] = u8::try_from(libc::AF_BRIDGE).expect("small");
    let mut out = Vec::new();
    sock.dump(RTM_GETNEIGH, &ndmsg, |ty, body| {
        if ty != RTM_NEWNEIGH || body.len() < 12 {
            return;
        }
        let port = u32::from_ne_bytes(body[4..8].try_into().expect("4"));
        let mut mac = None;
        let mut bridge = None;
        for (aty, payload) in attrs(&body[12..]) {
            match aty {
                NDA_LLADDR => mac = <[u8; 6]>::try_from(payload).ok(),
                NDA_MASTER if payload.len() == 4 => {
                    bridge = Some(u32::from_ne_bytes(payload.try_into().expect("4")));
                }
                _ => {}
            }
        }
        if let (Some(mac), Some(bridge)) = (mac, bridge) {
            out.push(FdbEntry { port, bridge, mac });
        }
    })?;
    Ok(out)
}

/// Indexes of the interfaces with a `clsact` (or `ingress`) qdisc: the only ones that can
/// hold classic tc filters (TCX programs need none).
pub fn clsact_interfaces() -> io::Result<Vec<u32>> {
    const RTM_NEWQDISC: u16 = 36;
    const RTM_GETQDISC: u16 = 38;
    const TCA_KIND: u16 = 1;
    let mut sock = Socket::open(libc::NETLINK_ROUTE, 0)?;
    // struct tcmsg: family, pads, ifindex, handle, parent, info.
    let tcmsg = [0u8; 20];
    let mut out = Vec::new();
    sock.dump(RTM_GETQDISC, &tcmsg, |ty, body| {
        if ty != RTM_NEWQDISC || body.len() < 20 {
            return;
        }
        let index = u32::from_ne_bytes(body[4..8].try_into().expect("4"));
        for (aty, payload) in attrs(&body[20..]) {
            let kind = payload.split(|b| *b == 0).next().unwrap_or_default();
            if aty == TCA_KIND && (kind == b"clsact" || kind == b"ingress") {
                out.push(index);
            }
        }
    })?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}
