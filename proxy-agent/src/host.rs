//! Facts about this host that the plan needs and cannot read from Kubernetes.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// Every address configured on an interface of this host (in the current network
/// namespace), loopback included.
#[expect(
    clippy::cast_ptr_alignment,
    reason = "getifaddrs allocates each address as the full sockaddr_in/sockaddr_in6 its \
              family names, suitably aligned"
)]
pub fn local_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: AF_INET addresses are sockaddr_in.
                let sin = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6 addresses are sockaddr_in6.
                let sin6 = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_among_the_local_addresses() {
        let addrs = super::local_addresses().unwrap();
        assert!(addrs.iter().any(std::net::IpAddr::is_loopback), "{addrs:?}");
    }
}

/// Capabilities the running agent keeps: nftables, netlink (routes, links, conntrack) and
/// attaching programs need `CAP_NET_ADMIN`; loading programs and updating maps need `CAP_BPF`
/// and `CAP_PERFMON` (kernels >= 5.8).
pub const KEPT_CAPABILITIES: [u32; 3] = [CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF];
const CAP_NET_ADMIN: u32 = 12;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
/// Highest capability number the kernel may know (`/proc/sys/kernel/cap_last_cap`).
const CAP_LAST: u32 = 63;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability but [`KEPT_CAPABILITIES`] from this process (effective, permitted
/// and inheritable) and from its bounding set, so that neither the agent nor the `nft` it
/// runs can do more than proxying needs. Run after start-up (bpffs mounted, listeners bound).
pub fn drop_capabilities() -> io::Result<()> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(CAP_LAST)
        .min(CAP_LAST);
    // Bounding set first: dropping from it needs CAP_SETPCAP, which goes with the rest.
    for cap in (0..=last).filter(|c| !KEPT_CAPABILITIES.contains(c)) {
        // SAFETY: prctl with PR_CAPBSET_DROP takes a capability number and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            // EINVAL: a capability this kernel does not know; EPERM: already without SETPCAP.
            if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::EPERM)) {
                return Err(err);
            }
        }
    }
    let mut data = [CapData::default(); 2];
    for cap in KEPT_CAPABILITIES {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
    }
    let mut header = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    // SAFETY: capset reads one header and two data structs of the v3 layout given above.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
