//! Stable identifiers of Service ports.

use std::fmt;

use crate::model::{Protocol, ServiceName};

/// A stable 64-bit id of one Service port, derived from namespace, name, port name and
/// protocol only. The same port gets the same id on every node, across restarts and versions,
/// so it can name nftables objects and key BPF maps. 64 bits keep the chance of two of 30,000
/// ports colliding around one in forty million.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortId(pub u64);

impl ServicePortId {
    /// FNV-1a over `namespace/name/port-name/PROTOCOL`: simple, fixed forever, and good
    /// enough spread for short keys.
    pub fn new(service: &ServiceName, port_name: &str, protocol: Protocol) -> Self {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = OFFSET;
        for part in [
            service.namespace.as_bytes(),
            b"/",
            service.name.as_bytes(),
            b"/",
            port_name.as_bytes(),
            b"/",
            protocol.api_name().as_bytes(),
        ] {
            for byte in part {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(PRIME);
            }
        }
        Self(hash)
    }
}

impl fmt::Display for ServicePortId {
    /// Sixteen lower-case hex digits, usable in nftables object names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinguish_every_part() {
        let svc = ServiceName::new("default", "web");
        let id = ServicePortId::new(&svc, "http", Protocol::Tcp);
        // Pinned: changing the derivation would rename every object a running agent owns.
        assert_eq!(id.to_string(), "fe6d2bba7e88a1b4");
        assert_ne!(id, ServicePortId::new(&svc, "http", Protocol::Udp));
        assert_ne!(id, ServicePortId::new(&svc, "https", Protocol::Tcp));
        assert_ne!(
            id,
            ServicePortId::new(&ServiceName::new("other", "web"), "http", Protocol::Tcp)
        );
        // The separator keeps "a/bc" and "ab/c" apart.
        assert_ne!(
            ServicePortId::new(&ServiceName::new("a", "bc"), "", Protocol::Tcp),
            ServicePortId::new(&ServiceName::new("ab", "c"), "", Protocol::Tcp)
        );
    }
}
