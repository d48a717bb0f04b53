//! One sync of the service maps as a value: the desired entries computed from the
//! eligibility decisions, diffed against a mirror of what the maps hold, turned into an
//! ordered list of map writes with a `Display`.
//!
//! The desired entries are the accelerated addresses, a counting entry for every other
//! counted address (the programs count its packets and pass them on), a counter slot per
//! counted service port, and that port's record in `HP_PORTS` (its name and decisions, for
//! `proxy-agent status`).
//!
//! Ordering is what makes a sync safe for readers without transactions:
//! 1. a changed backend set is written under a *new revision* (backends, then its Maglev
//!    table), never in place;
//! 2. then service entries are written, each pointing at its set's new revision: one map
//!    update per address, which the kernel applies atomically, so a packet sees the whole old
//!    set or the whole new one;
//! 3. then removed services are deleted;
//! 4. the revision before last of a changed set is deleted (the last one stays until the next
//!    change, for readers that looked up the service entry just before the flip).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use proxy_common::{
    Backend, Backend6, FlowKey, FlowKey6, Ipv6Words, PORT_NAME_LEN, PortInfo, ServiceKey,
    ServiceKey6, ServiceValue, scope, service_flags,
};

use super::{
    eligibility::{PortEligibility, decision_code},
    forwarding::{self, Forwarding},
    maglev,
};
use crate::model::{IpFamily, Protocol};

/// A backend set: one endpoint list of one service port in one family (`ServicePortId`,
/// `set::*`, plus `set::IPV6` for an IPv6 set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetId {
    pub id: u64,
    pub set: u8,
}

impl SetId {
    /// Whether the set's backends are IPv6 (in `HP_BACKENDS6`).
    pub fn is_v6(self) -> bool {
        self.set & proxy_common::set::IPV6 != 0
    }
}

impl fmt::Display for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = if self.set & !proxy_common::set::IPV6 == proxy_common::set::LOCAL {
            "local"
        } else {
            "cluster"
        };
        let family = if self.is_v6() { "/ipv6" } else { "" };
        write!(f, "{:016x}/{set}{family}", self.id)
    }
}

/// A service entry's key in either family's service map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKey {
    V4(ServiceKey),
    V6(ServiceKey6),
}

impl EntryKey {
    /// The address, port (host order) and protocol the entry captures.
    pub fn address(&self) -> (IpAddr, u16, u8) {
        match self {
            Self::V4(k) => (
                Ipv4Addr::from(k.addr.to_ne_bytes()).into(),
                u16::from_be(k.port),
                k.proto,
            ),
            Self::V6(k) => (v6_addr(&k.addr).into(), u16::from_be(k.port), k.proto),
        }
    }

    pub fn scope(&self) -> u8 {
        match self {
            Self::V4(k) => k.scope,
            Self::V6(k) => k.scope,
        }
    }
}

/// A backend (or a flow's translation) in either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    V4(Backend),
    V6(Backend6),
}

/// An entry key of either family's connection table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlowEntryKey {
    V4(FlowKey),
    V6(FlowKey6),
}

/// The wire form of an IPv6 address (its bytes in order, as four words).
pub fn v6_words(ip: Ipv6Addr) -> Ipv6Words {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The address of a wire-form IPv6 address.
pub fn v6_addr(words: &Ipv6Words) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// One revision of a backend set as written in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    pub revision: u32,
    pub backends: Vec<Endpoint>,
}

/// A backend set's revisions in the maps: the one service entries use, and the one before,
/// kept until the next change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetRevisions {
    pub current: Revision,
    pub previous: Option<Revision>,
}

/// What the service maps hold (everything but flows and affinity): the mirror a sync diffs
/// against, and what a dump of the maps reads back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceMaps {
    /// Both families' service entries.
    pub services: BTreeMap<EntryKey, ServiceValue>,
    pub sets: BTreeMap<SetId, SetRevisions>,
    /// Revisions no service entry uses, left by an interrupted sync: deleted by the next one.
    pub stale: Vec<(SetId, Revision)>,
    /// Counter slot of each counted service port (`ServicePortId` -> slot).
    pub counters: BTreeMap<u64, u32>,
    /// `HP_PORTS`: each counted service port's record.
    pub ports: BTreeMap<u64, PortInfo>,
    /// Slots of demoted services: flows that finish on the fast path may still count into
    /// them, so they are reused only once no flow refers to them (see
    /// [`ServiceMaps::release_counters`]).
    pub retired: BTreeSet<u32>,
    pub generation: u64,
    /// `HP_META`'s forwarding value.
    pub forwarding: u32,
}

impl ServiceMaps {
    /// Makes retired slots no flow refers to any more available again.
    pub fn release_counters(&mut self, referenced: &BTreeSet<u32>) {
        self.retired.retain(|s| referenced.contains(s));
    }
}

/// A service entry the plan wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DesiredService {
    /// The backend set (for a counting entry: the port's id, set 0, never written).
    pub set: SetId,
    pub affinity_timeout: Option<u32>,
    pub protocol: Protocol,
    /// Only counted: passed to nftables (`service_flags::COUNT_ONLY`).
    pub count_only: bool,
    /// New flows bypass the node's stack (`service_flags::REDIRECT`; pod-scope IPv4 entries
    /// only).
    pub redirect: bool,
}

/// A counted service port's record, as `HP_PORTS` keeps it (but its counter slot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPort {
    pub label: String,
    /// [`decision_code`]s of its two paths.
    pub pods: u8,
    pub external: u8,
}

/// The service maps' desired content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<EntryKey, DesiredService>,
    pub sets: BTreeMap<SetId, Vec<Endpoint>>,
    pub ports: BTreeMap<u64, DesiredPort>,
    /// The node's forwarding for unannotated Services, recorded in `HP_META`.
    pub forwarding: u32,
}

/// The `HP_PORTS` value of a port: its label cut to [`PORT_NAME_LEN`] bytes (at a character
/// boundary), NUL-padded.
pub fn port_info(port: &DesiredPort, counter: u32) -> PortInfo {
    let mut name = [0u8; PORT_NAME_LEN];
    let mut end = port.label.len().min(PORT_NAME_LEN);
    while !port.label.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].copy_from_slice(&port.label.as_bytes()[..end]);
    PortInfo {
        name,
        counter,
        pods: port.pods,
        external: port.external,
        _pad: 0,
    }
}

/// The label recorded in a `HP_PORTS` value.
pub fn port_label(info: &PortInfo) -> String {
    let end = info
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(PORT_NAME_LEN);
    String::from_utf8_lossy(&info.name[..end]).into_owned()
}

/// Wire form of an address and port.
pub fn backend_of(ip: IpAddr, port: u16) -> Endpoint {
    match ip {
        IpAddr::V4(ip) => Endpoint::V4(Backend {
            addr: u32::from_ne_bytes(ip.octets()),
            port: port.to_be(),
            _pad: 0,
        }),
        IpAddr::V6(ip) => Endpoint::V6(Backend6 {
            addr: v6_words(ip),
            port: port.to_be(),
            _pad: 0,
        }),
    }
}

/// The address of a wire-form backend.
pub fn backend_addr(b: &Endpoint) -> (IpAddr, u16) {
    match b {
        Endpoint::V4(b) => (
            Ipv4Addr::from(b.addr.to_ne_bytes()).into(),
            u16::from_be(b.port),
        ),
        Endpoint::V6(b) => (v6_addr(&b.addr).into(), u16::from_be(b.port)),
    }
}

/// The service key of an address as a packet addresses it.
pub fn service_key(ip: IpAddr, port: u16, protocol: Protocol, key_scope: u8) -> EntryKey {
    match ip {
        IpAddr::V4(ip) => EntryKey::V4(ServiceKey {
            addr: u32::from_ne_bytes(ip.octets()),
            port: port.to_be(),
            proto: protocol.number(),
            scope: key_scope,
        }),
        IpAddr::V6(ip) => EntryKey::V6(ServiceKey6 {
            addr: v6_words(ip),
            port: port.to_be(),
            proto: protocol.number(),
            scope: key_scope,
        }),
    }
}

/// The value of `set` for a port's endpoint list in `family`.
fn set_value(raw: u8, family: IpFamily) -> u8 {
    if family == IpFamily::V6 {
        raw | proxy_common::set::IPV6
    } else {
        raw
    }
}

/// The desired entries of every accelerated path, then counting entries for the counted
/// addresses no accelerated path claimed. The first port to claim an address keeps it (the
/// plan already resolved conflicts the same way).
pub fn desired(ports: &[PortEligibility], node: &Forwarding) -> Desired {
    let mut out = Desired {
        forwarding: u32::from(if node.redirect {
            proxy_common::forwarding::REDIRECT
        } else {
            proxy_common::forwarding::STACK
        }),
        ..Desired::default()
    };
    for port in ports {
        // Only pod flows of IPv4 are redirected: north-south flows and IPv6 take the stack.
        let redirect =
            port.family == IpFamily::V4 && forwarding::port_redirects(port.forwarding, node);
        for (decision, key_scope) in [(&port.pods, scope::POD), (&port.external, scope::EXTERNAL)] {
            let Ok(acc) = decision else { continue };
            let set = SetId {
                id: port.id.0,
                set: set_value(acc.set.raw(), port.family),
            };
            // The plan keeps each family's endpoints apart; a stray one of the other family
            // could not be translated to.
            let mut backends: Vec<Endpoint> = acc
                .endpoints
                .iter()
                .filter(|e| e.ip.is_ipv6() == (port.family == IpFamily::V6))
                .map(|e| backend_of(e.ip, e.port))
                .collect();
            backends.sort_by_key(backend_addr);
            backends.dedup();
            out.sets.insert(set, backends);
            for (ip, p) in &acc.addresses {
                out.services
                    .entry(service_key(*ip, *p, port.protocol, key_scope))
                    .or_insert(DesiredService {
                        set,
                        affinity_timeout: port.affinity_timeout,
                        protocol: port.protocol,
                        count_only: false,
                        redirect: redirect && key_scope == scope::POD,
                    });
            }
        }
    }
    for port in ports {
        if port.counted.is_empty() {
            continue;
        }
        let set = SetId {
            id: port.id.0,
            set: set_value(proxy_common::set::CLUSTER, port.family),
        };
        for (list, key_scope) in [
            (&port.counted.pods, scope::POD),
            (&port.counted.external, scope::EXTERNAL),
        ] {
            for (ip, p) in list {
                out.services
                    .entry(service_key(*ip, *p, port.protocol, key_scope))
                    .or_insert(DesiredService {
                        set,
                        affinity_timeout: None,
                        protocol: port.protocol,
                        count_only: true,
                        redirect: false,
                    });
            }
        }
        out.ports.entry(port.id.0).or_insert(DesiredPort {
            label: port.label(),
            pods: decision_code(&port.pods),
            external: decision_code(&port.external),
        });
    }
    // Drop sets no entry uses (their addresses were all claimed by another port).
    let used: BTreeSet<SetId> = out
        .services
        .values()
        .filter(|s| !s.count_only)
        .map(|s| s.set)
        .collect();
    out.sets.retain(|set, _| used.contains(set));
    out
}

/// One write to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapWrite {
    /// Writes a revision of a backend set: its backends, then its Maglev table.
    PutSet {
        set: SetId,
        revision: u32,
        backends: Vec<Endpoint>,
        table: Arc<Vec<u16>>,
    },
    PutService {
        key: EntryKey,
        value: ServiceValue,
    },
    DeleteService {
        key: EntryKey,
    },
    /// Deletes a revision of a backend set (its Maglev table, then its backends).
    DeleteSet {
        set: SetId,
        revision: u32,
        backends: u16,
    },
    /// Gives a service port a counter slot (zeroed).
    PutCounter {
        id: u64,
        slot: u32,
    },
    /// Takes a demoted service port's slot back (no map write: flows may still count there).
    RetireCounter {
        id: u64,
        slot: u32,
    },
    /// Forgets what pointed at backends that left a set: affinity entries, and for UDP the
    /// flows (as kube-proxy clears stale UDP conntrack entries, so that the client's next
    /// datagram picks a live backend).
    PurgeBackends {
        set: SetId,
        backends: Vec<Endpoint>,
        flows: bool,
    },
    /// Marks flows nftables started as nftables-owned, so that the fast path never takes
    /// them over (written before the service entries that would capture them); each with
    /// its service's counter slot, so that its packets are still counted.
    MarkNftablesOwned {
        flows: Vec<(FlowEntryKey, u32)>,
    },
    /// Records a counted service port in `HP_PORTS`.
    PutPort {
        id: u64,
        info: PortInfo,
    },
    DeletePort {
        id: u64,
    },
    /// Records the generation applied and the node's [`proxy_common::forwarding`] value.
    SetGeneration {
        generation: u64,
        forwarding: u32,
    },
}

/// A service key as `address:port/protocol [scope]` (`[address]:port` for IPv6).
pub fn describe_key(k: EntryKey) -> String {
    let (ip, port, proto) = k.address();
    let proto = match proto {
        6 => "tcp",
        17 => "udp",
        _ => "?",
    };
    let scope = if k.scope() == scope::POD {
        "pods"
    } else {
        "external"
    };
    format!("{}/{proto} [{scope}]", std::net::SocketAddr::new(ip, port))
}

/// Backends as `address:port,...` (`[address]:port` for IPv6).
pub fn fmt_backends(backends: &[Endpoint]) -> String {
    backends
        .iter()
        .map(|b| {
            let (ip, port) = backend_addr(b);
            std::net::SocketAddr::new(ip, port).to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for MapWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PutSet {
                set,
                revision,
                backends,
                ..
            } => write!(
                f,
                "put set {set} rev {revision}: [{}] + maglev",
                fmt_backends(backends)
            ),
            Self::PutService { key, value } => write!(
                f,
                "put service {} -> set {} rev {} ({} backends{})",
                describe_key(*key),
                SetId {
                    id: value.id,
                    set: value.set
                },
                value.revision,
                value.backend_count,
                if value.flags & service_flags::AFFINITY != 0 {
                    format!(", affinity {}s", value.affinity_timeout_s)
                } else {
                    String::new()
                }
            ),
            Self::DeleteService { key } => write!(f, "delete service {}", describe_key(*key)),
            Self::DeleteSet {
                set,
                revision,
                backends,
            } => write!(f, "delete set {set} rev {revision} ({backends} backends)"),
            Self::PutCounter { id, slot } => write!(f, "put counter {id:016x} at slot {slot}"),
            Self::RetireCounter { id, slot } => {
                write!(f, "retire counter {id:016x} at slot {slot}")
            }
            Self::PurgeBackends {
                set,
                backends,
                flows,
            } => write!(
                f,
                "purge affinity{} of set {set} to [{}]",
                if *flows { " and flows" } else { "" },
                fmt_backends(backends)
            ),
            Self::MarkNftablesOwned { flows } => {
                write!(f, "mark {} flow(s) nftables-owned", flows.len())
            }
            Self::PutPort { id, info } => write!(
                f,
                "put port {id:016x} {}: slot {}, pods {}, external {}",
                port_label(info),
                info.counter,
                info.pods,
                info.external
            ),
            Self::DeletePort { id } => write!(f, "delete port {id:016x}"),
            Self::SetGeneration {
                generation,
                forwarding,
            } => write!(
                f,
                "set generation {generation}, forwarding {}",
                if u8::try_from(*forwarding) == Ok(proxy_common::forwarding::REDIRECT) {
                    "redirect"
                } else {
                    "stack"
                }
            ),
        }
    }
}

/// The writes of one sync, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapWrites {
    pub generation: u64,
    pub writes: Vec<MapWrite>,
}

impl MapWrites {
    /// Whether the sync changes anything but the generation.
    pub fn is_noop(&self) -> bool {
        self.writes
            .iter()
            .all(|w| matches!(w, MapWrite::SetGeneration { .. }))
    }
}

impl fmt::Display for MapWrites {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bpf sync generation {} ({} writes)",
            self.generation,
            self.writes.len()
        )?;
        for w in &self.writes {
            writeln!(f, "  {w}")?;
        }
        Ok(())
    }
}

fn maglev_table(backends: &[Endpoint]) -> Arc<Vec<u16>> {
    // The names hash as before for IPv4 (`a.b.c.d:port`), so that existing tables are
    // unchanged; IPv6 backends are named `[addr]:port`.
    let names: Vec<Vec<u8>> = backends
        .iter()
        .map(|b| {
            let (ip, port) = backend_addr(b);
            std::net::SocketAddr::new(ip, port).to_string().into_bytes()
        })
        .collect();
    Arc::new(maglev::table(&names))
}

#[expect(
    clippy::too_many_lines,
    reason = "one pass per map kind, in write order; splitting it hides the order"
)]
/// Diffs `desired` against the `mirror` of the maps. Returns the writes and the mirror as it
/// will be once they are applied.
pub fn plan_writes(
    mirror: &ServiceMaps,
    desired: &Desired,
    generation: u64,
) -> (MapWrites, ServiceMaps) {
    let mut next = mirror.clone();
    let mut sets_out = Vec::new();
    let mut services_out = Vec::new();
    let mut deletes_out = Vec::new();
    let mut cleanup_out = Vec::new();
    let mut purges = Vec::new();

    let udp_sets: BTreeSet<SetId> = desired
        .services
        .values()
        .filter(|s| s.protocol == Protocol::Udp && !s.count_only)
        .map(|s| s.set)
        .collect();

    for (set, backends) in &desired.sets {
        // A new revision must not reuse any number still in the maps.
        let highest_stale = next
            .stale
            .iter()
            .filter(|(s, _)| s == set)
            .map(|(_, r)| r.revision)
            .max()
            .unwrap_or(0);
        match next.sets.get_mut(set) {
            Some(revs) if revs.current.backends == *backends => {}
            Some(revs) => {
                let revision = revs
                    .current
                    .revision
                    .max(revs.previous.as_ref().map_or(0, |p| p.revision))
                    .max(highest_stale)
                    .wrapping_add(1)
                    .max(1);
                sets_out.push(MapWrite::PutSet {
                    set: *set,
                    revision,
                    backends: backends.clone(),
                    table: maglev_table(backends),
                });
                let removed: Vec<Endpoint> = revs
                    .current
                    .backends
                    .iter()
                    .filter(|b| !backends.contains(b))
                    .copied()
                    .collect();
                if !removed.is_empty() {
                    purges.push(MapWrite::PurgeBackends {
                        set: *set,
                        backends: removed,
                        flows: udp_sets.contains(set),
                    });
                }
                let old = std::mem::replace(
                    &mut revs.current,
                    Revision {
                        revision,
                        backends: backends.clone(),
                    },
                );
                if let Some(before) = revs.previous.replace(old) {
                    cleanup_out.push(MapWrite::DeleteSet {
                        set: *set,
                        revision: before.revision,
                        backends: count(&before.backends),
                    });
                }
            }
            None => {
                let revision = highest_stale.wrapping_add(1).max(1);
                sets_out.push(MapWrite::PutSet {
                    set: *set,
                    revision,
                    backends: backends.clone(),
                    table: maglev_table(backends),
                });
                next.sets.insert(
                    *set,
                    SetRevisions {
                        current: Revision {
                            revision,
                            backends: backends.clone(),
                        },
                        previous: None,
                    },
                );
            }
        }
    }

    let ids: BTreeSet<u64> = desired.services.values().map(|s| s.set.id).collect();
    let mut counters = Vec::new();
    let stale_ids: Vec<u64> = next
        .counters
        .keys()
        .filter(|id| !ids.contains(id))
        .copied()
        .collect();
    for id in stale_ids {
        let slot = next.counters.remove(&id).expect("listed above");
        next.retired.insert(slot);
        cleanup_out.push(MapWrite::RetireCounter { id, slot });
    }
    let mut taken: BTreeSet<u32> = next.counters.values().copied().collect();
    taken.extend(next.retired.iter().copied());
    let mut free = (1..proxy_common::capacity::SERVICE_STATS).filter(|s| !taken.contains(s));
    for id in &ids {
        if !next.counters.contains_key(id) {
            // Out of slots: the service is served but not counted (slot 0).
            let slot = free.next().unwrap_or(0);
            if slot != 0 {
                counters.push(MapWrite::PutCounter { id: *id, slot });
            }
            next.counters.insert(*id, slot);
        }
    }
    for (key, want) in &desired.services {
        let counter = next.counters.get(&want.set.id).copied().unwrap_or(0);
        if want.count_only {
            let value = ServiceValue {
                id: want.set.id,
                flags: service_flags::COUNT_ONLY,
                counter,
                ..ServiceValue::default()
            };
            if next.services.get(key) != Some(&value) {
                services_out.push(MapWrite::PutService { key: *key, value });
                next.services.insert(*key, value);
            }
            continue;
        }
        let revs = &next.sets[&want.set];
        let value = ServiceValue {
            id: want.set.id,
            revision: revs.current.revision,
            affinity_timeout_s: want.affinity_timeout.unwrap_or(0),
            backend_count: count(&revs.current.backends),
            set: want.set.set,
            flags: if want.affinity_timeout.is_some() {
                service_flags::AFFINITY
            } else {
                0
            } | if want.redirect {
                service_flags::REDIRECT
            } else {
                0
            },
            counter,
        };
        if next.services.get(key) != Some(&value) {
            services_out.push(MapWrite::PutService { key: *key, value });
            next.services.insert(*key, value);
        }
    }
    let stale: Vec<EntryKey> = next
        .services
        .keys()
        .filter(|k| !desired.services.contains_key(k))
        .copied()
        .collect();
    for key in stale {
        next.services.remove(&key);
        deletes_out.push(MapWrite::DeleteService { key });
    }
    let stale_sets: Vec<SetId> = next
        .sets
        .keys()
        .filter(|s| !desired.sets.contains_key(s))
        .copied()
        .collect();
    for set in stale_sets {
        let revs = next.sets.remove(&set).expect("listed above");
        for rev in std::iter::once(revs.current).chain(revs.previous) {
            cleanup_out.push(MapWrite::DeleteSet {
                set,
                revision: rev.revision,
                backends: count(&rev.backends),
            });
        }
    }

    let mut ports_out = Vec::new();
    for (id, want) in &desired.ports {
        let info = port_info(want, next.counters.get(id).copied().unwrap_or(0));
        if next.ports.get(id) != Some(&info) {
            ports_out.push(MapWrite::PutPort { id: *id, info });
            next.ports.insert(*id, info);
        }
    }
    let stale_ports: Vec<u64> = next
        .ports
        .keys()
        .filter(|id| !desired.ports.contains_key(id))
        .copied()
        .collect();
    for id in stale_ports {
        next.ports.remove(&id);
        ports_out.push(MapWrite::DeletePort { id });
    }

    for (set, rev) in std::mem::take(&mut next.stale) {
        cleanup_out.push(MapWrite::DeleteSet {
            set,
            revision: rev.revision,
            backends: count(&rev.backends),
        });
    }

    next.generation = generation;
    next.forwarding = desired.forwarding;

    let mut writes = Vec::new();
    writes.extend(counters);
    writes.extend(sets_out);
    writes.extend(services_out);
    writes.extend(deletes_out);
    writes.extend(purges);
    writes.extend(ports_out);
    writes.extend(cleanup_out);
    writes.push(MapWrite::SetGeneration {
        generation,
        forwarding: desired.forwarding,
    });
    (MapWrites { generation, writes }, next)
}

fn count(backends: &[Endpoint]) -> u16 {
    u16::try_from(backends.len()).expect("at most MAX_BACKENDS")
}
