//! Syncing the maps from a plan, collecting ended flows, and reading status: the fast path's
//! logic, written against the [`MapStore`] and [`ConntrackSource`] seams so that it runs the
//! same on the kernel's maps and on the fakes.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, io,
    net::IpAddr,
    time::Duration,
};

use proxy_common::{
    Counter, FlowKey, FlowKey6, ServiceCounter, StatIndex, dir, owner, service_flags, tcp,
};

use super::{
    config::{AccelerationMode, FlowTimeouts},
    eligibility::{self, AutoChoice, PortEligibility},
    forwarding::Forwarding,
    netlink::{ConntrackTuple, ConntrackTuple6},
    object::BpfError,
    policy::Candidate,
    store::{self, MapStore},
    writes::{self, FlowEntryKey, MapWrite, MapWrites, ServiceMaps},
};
use crate::plan::{ProxyPlan, ServicePortId};

/// Where the tuples of flows nftables started come from.
pub trait ConntrackSource {
    /// The original tuples of the kernel's IPv4 conntrack entries.
    fn tuples(&mut self) -> io::Result<Vec<ConntrackTuple>>;
    /// The original tuples of the kernel's IPv6 conntrack entries.
    fn tuples6(&mut self) -> io::Result<Vec<ConntrackTuple6>>;
}

/// The kernel's conntrack table, over ctnetlink (the agent's `conntrack` module).
#[derive(Debug, Default)]
pub struct KernelConntrack;

impl ConntrackSource for KernelConntrack {
    fn tuples(&mut self) -> io::Result<Vec<ConntrackTuple>> {
        kernel_tuples(crate::model::IpFamily::V4, |f, proto| {
            let (IpAddr::V4(src), IpAddr::V4(dst)) = (f.original.src, f.original.dst) else {
                return None;
            };
            Some(ConntrackTuple {
                src: u32::from_ne_bytes(src.octets()),
                dst: u32::from_ne_bytes(dst.octets()),
                sport: f.original.src_port.to_be(),
                dport: f.original.dst_port.to_be(),
                proto,
            })
        })
    }

    fn tuples6(&mut self) -> io::Result<Vec<ConntrackTuple6>> {
        kernel_tuples(crate::model::IpFamily::V6, |f, proto| {
            let (IpAddr::V6(src), IpAddr::V6(dst)) = (f.original.src, f.original.dst) else {
                return None;
            };
            Some(ConntrackTuple6 {
                src: writes::v6_words(src),
                dst: writes::v6_words(dst),
                sport: f.original.src_port.to_be(),
                dport: f.original.dst_port.to_be(),
                proto,
            })
        })
    }
}

/// The kernel's TCP and UDP conntrack entries of `family`, each original tuple turned into
/// `T` by `tuple` (given the protocol; `None` skips the entry).
fn kernel_tuples<T>(
    family: crate::model::IpFamily,
    tuple: impl Fn(&crate::conntrack::Flow, u8) -> Option<T>,
) -> io::Result<Vec<T>> {
    use crate::conntrack::Conntrack as _;
    let mut ct = crate::conntrack::NetlinkConntrack::new();
    let mut out = Vec::new();
    for protocol in [6u8, 17] {
        let flows = ct.flows(family, protocol).map_err(io::Error::other)?;
        out.extend(flows.iter().filter_map(|f| tuple(f, protocol)));
    }
    Ok(out)
}

/// A fake conntrack table; each call returns the next snapshot (the last one repeats).
#[derive(Debug, Default)]
pub struct FakeConntrack {
    pub snapshots: Vec<Vec<ConntrackTuple>>,
    /// The IPv6 table's snapshots, read as `snapshots`.
    pub snapshots6: Vec<Vec<ConntrackTuple6>>,
}

fn next_snapshot<T: Clone>(snapshots: &mut Vec<Vec<T>>) -> Vec<T> {
    if snapshots.len() > 1 {
        snapshots.remove(0)
    } else {
        snapshots.first().cloned().unwrap_or_default()
    }
}

impl ConntrackSource for FakeConntrack {
    fn tuples(&mut self) -> io::Result<Vec<ConntrackTuple>> {
        Ok(next_snapshot(&mut self.snapshots))
    }
    fn tuples6(&mut self) -> io::Result<Vec<ConntrackTuple6>> {
        Ok(next_snapshot(&mut self.snapshots6))
    }
}

/// What one sync did.
#[derive(Clone, Debug)]
pub struct ApplyReport {
    pub generation: u64,
    pub writes: MapWrites,
    /// Every service port's decision.
    pub ports: Vec<PortEligibility>,
    /// Counting entries (service addresses the programs count and pass to nftables).
    pub counted_only: usize,
    /// Flows nftables had started to newly promoted addresses, marked before the promotion.
    pub nftables_owned_marked: usize,
    /// Flows found by the re-check after the promotion (started in the window between the
    /// first conntrack dump and the service entry: see [`Syncer::sync`]).
    pub late_marked: usize,
    /// Why conntrack could not be read, if it could not (promotion went ahead).
    pub conntrack_error: Option<String>,
}

impl ApplyReport {
    pub fn accelerated_ports(&self) -> usize {
        self.ports.iter().filter(|p| p.any_accelerated()).count()
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fast path generation {}: {} of {} service port(s) accelerated, {} map write(s), \
             {} nftables flow(s) protected ({} late)",
            self.generation,
            self.accelerated_ports(),
            self.ports.len(),
            self.writes.writes.len(),
            self.nftables_owned_marked,
            self.late_marked
        )?;
        if let Some(e) = &self.conntrack_error {
            writeln!(f, "  conntrack unavailable: {e}")?;
        }
        for p in &self.ports {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// The sync state kept between syncs: a mirror of the service maps.
#[derive(Debug)]
pub struct Syncer {
    pub mode: AccelerationMode,
    /// In `auto` mode, what the policy promoted (see [`super::policy`]).
    pub auto: AutoChoice,
    /// How new pod flows of unannotated Services are forwarded (`stack` until told).
    pub forwarding: Forwarding,
    /// In `auto` mode, the ports of the last plan the policy may promote.
    candidates: Vec<Candidate>,
    mirror: ServiceMaps,
    /// Read the maps back before the next sync (at start, and after a failed sync left them
    /// in an unknown state).
    need_resync: bool,
    last_ports: Vec<PortEligibility>,
}

/// A service address as the conntrack matching compares it: address, port (host order),
/// protocol.
type ServiceAddr = (IpAddr, u16, u8);

/// The forward connection-table keys of the kernel's conntrack entries, of the families
/// that have newly promoted addresses (a family without any is not read: a failure to read
/// its table must not hold back the other's marking).
fn conntrack_keys(
    conntrack: &mut dyn ConntrackSource,
    promoted: &BTreeMap<ServiceAddr, u32>,
) -> io::Result<Vec<FlowEntryKey>> {
    let v6 = promoted.keys().any(|(ip, _, _)| ip.is_ipv6());
    let v4 = promoted.keys().any(|(ip, _, _)| ip.is_ipv4());
    let v4_tuples = if v4 { conntrack.tuples()? } else { Vec::new() };
    let v6_tuples = if v6 { conntrack.tuples6()? } else { Vec::new() };
    let mut out: Vec<FlowEntryKey> = v4_tuples
        .iter()
        .map(|t| {
            FlowEntryKey::V4(FlowKey {
                src: t.src,
                dst: t.dst,
                sport: t.sport,
                dport: t.dport,
                proto: t.proto,
                dir: dir::FORWARD,
                _pad: 0,
            })
        })
        .collect();
    out.extend(v6_tuples.iter().map(|t| {
        FlowEntryKey::V6(FlowKey6 {
            src: t.src,
            dst: t.dst,
            sport: t.sport,
            dport: t.dport,
            proto: t.proto,
            dir: dir::FORWARD,
            _pad: 0,
        })
    }));
    Ok(out)
}

/// The service address a forward key is sent to.
fn destination(k: &FlowEntryKey) -> ServiceAddr {
    match k {
        FlowEntryKey::V4(k) => (
            std::net::Ipv4Addr::from(k.dst.to_ne_bytes()).into(),
            u16::from_be(k.dport),
            k.proto,
        ),
        FlowEntryKey::V6(k) => (
            writes::v6_addr(&k.dst).into(),
            u16::from_be(k.dport),
            k.proto,
        ),
    }
}

impl Syncer {
    pub fn new(mode: AccelerationMode) -> Self {
        Self {
            mode,
            auto: AutoChoice::default(),
            forwarding: Forwarding::stack(),
            candidates: Vec::new(),
            mirror: ServiceMaps::default(),
            need_resync: true,
            last_ports: Vec::new(),
        }
    }

    /// The decisions of the last sync.
    pub fn ports(&self) -> &[PortEligibility] {
        &self.last_ports
    }

    /// Counter slot of each counted service port.
    pub fn counter_slots(&self) -> &BTreeMap<u64, u32> {
        &self.mirror.counters
    }

    /// In `auto` mode, the ports of the last plan the policy may promote.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// The service ports the maps accelerate (as far as the last sync knows).
    pub fn accelerated(&self) -> BTreeSet<ServicePortId> {
        self.mirror
            .services
            .values()
            .filter(|v| v.flags & service_flags::COUNT_ONLY == 0)
            .map(|v| ServicePortId(v.id))
            .collect()
    }

    /// What the last sync wrote (or read back), for verification.
    pub fn mirror(&self) -> &ServiceMaps {
        &self.mirror
    }

    /// After a garbage collection: retired counter slots no flow uses are free again.
    pub fn release_counters(&mut self, gc: &GcReport) {
        self.mirror.release_counters(&gc.counters_in_use);
    }

    /// Programs the service maps for `plan`.
    ///
    /// Promotion never moves a flow nftables started: before any newly promoted address gets
    /// its service entry, the kernel's conntrack is read and every flow to that address is
    /// marked nftables-owned in the connection table (the programs then pass its packets
    /// unchanged). After the entries are written, conntrack is read again and flows that
    /// appeared meanwhile are marked too (without overwriting an entry the fast path made).
    /// Residual race: a flow whose first packet reached nftables after the first read and
    /// whose next packet reached the fast path before the second read is split (TCP never is:
    /// only a SYN starts a fast-path TCP flow; for UDP the window is the time of one map
    /// update, microseconds).
    pub fn sync(
        &mut self,
        store: &mut dyn MapStore,
        conntrack: &mut dyn ConntrackSource,
        plan: &ProxyPlan,
        generation: u64,
    ) -> Result<ApplyReport, BpfError> {
        if self.need_resync {
            self.mirror = store::read_service_maps(store)?;
            self.need_resync = false;
        }
        let ports = eligibility::decide_auto(plan, self.mode, &self.auto);
        if self.mode == AccelerationMode::Auto {
            self.candidates = candidates(plan);
        } else {
            self.candidates.clear();
        }
        let desired = writes::desired(&ports, &self.forwarding);
        let (mut map_writes, next) = writes::plan_writes(&self.mirror, &desired, generation);

        // Addresses newly accelerated: absent before, or only counted.
        let accelerated = |v: &proxy_common::ServiceValue| v.flags & service_flags::COUNT_ONLY == 0;
        let newly: BTreeMap<ServiceAddr, u32> = desired
            .services
            .iter()
            .filter(|(k, d)| !d.count_only && !self.mirror.services.get(k).is_some_and(accelerated))
            .map(|(k, d)| {
                (
                    k.address(),
                    next.counters.get(&d.set.id).copied().unwrap_or(0),
                )
            })
            .collect();
        let promoted = !newly.is_empty();
        let matches = |k: &FlowEntryKey| newly.contains_key(&destination(k));
        let slot_of = |k: &FlowEntryKey| newly.get(&destination(k)).copied().unwrap_or(0);
        let mut conntrack_error = None;
        let mut first_seen: BTreeSet<FlowEntryKey> = BTreeSet::new();
        if promoted {
            match conntrack_keys(conntrack, &newly) {
                Ok(keys) => {
                    first_seen = keys.into_iter().filter(|k| matches(k)).collect();
                    if !first_seen.is_empty() {
                        map_writes.writes.insert(
                            0,
                            MapWrite::MarkNftablesOwned {
                                flows: first_seen.iter().map(|k| (*k, slot_of(k))).collect(),
                            },
                        );
                    }
                }
                Err(e) => conntrack_error = Some(e.to_string()),
            }
        }

        let marked = match store::apply(store, &map_writes) {
            Ok(marked) => marked,
            Err(e) => {
                self.need_resync = true;
                return Err(e.into());
            }
        };
        self.mirror = next;

        let mut late = 0;
        if promoted && conntrack_error.is_none() {
            match conntrack_keys(conntrack, &newly) {
                Ok(keys) => {
                    let now = store::monotonic_ns();
                    for k in keys
                        .iter()
                        .filter(|k| matches(k) && !first_seen.contains(*k))
                    {
                        let value = store::nftables_owned(now, slot_of(k));
                        if store::put_flow_entry(store, *k, value, true)? {
                            late += 1;
                        }
                    }
                }
                Err(e) => conntrack_error = Some(e.to_string()),
            }
        }
        self.last_ports.clone_from(&ports);
        let counted_only = self
            .mirror
            .services
            .values()
            .filter(|v| !accelerated(v))
            .count();
        Ok(ApplyReport {
            generation,
            writes: map_writes,
            ports,
            counted_only,
            nftables_owned_marked: marked,
            late_marked: late,
            conntrack_error,
        })
    }
}

/// The ports of `plan` the `auto` policy may promote: eligible on a path with mode `all`,
/// not annotated `"off"`.
pub fn candidates(plan: &ProxyPlan) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for p in eligibility::decide(plan, AccelerationMode::All) {
        if !p.any_accelerated() {
            continue;
        }
        // A dual-stack port is one candidate (promoted in both families at once) whose sets
        // are its families' together: each takes a Maglev table of its own.
        if let Some(c) = out.iter_mut().find(|c| c.id == p.id) {
            c.sets += p.sets();
            c.backend_entries += p.backend_entries();
            continue;
        }
        out.push(Candidate {
            id: p.id,
            forced: p.annotation == crate::model::AccelerationAnnotation::On,
            sets: p.sets(),
            backend_entries: p.backend_entries(),
        });
    }
    out
}

/// What a garbage collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub entries: usize,
    pub removed: usize,
    /// Counter slots the remaining flows count into.
    pub counters_in_use: BTreeSet<u32>,
}

/// The two entries of one fast-path flow share client address and port, backend address and
/// port, and protocol; an nftables-owned entry stands alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FlowId {
    Fast {
        client: (IpAddr, u16),
        backend: (IpAddr, u16),
        proto: u8,
    },
    Alone(FlowEntryKey),
}

fn flow_id(flow: &store::FlowEntry) -> FlowId {
    if flow.owner != owner::FAST {
        return FlowId::Alone(flow.key);
    }
    let (src, dst) = flow.ends();
    let (client, backend) = if flow.dir() == dir::FORWARD {
        (src, flow.nat)
    } else {
        (dst, src)
    };
    FlowId::Fast {
        client: writes::backend_addr(&client),
        backend: writes::backend_addr(&backend),
        proto: flow.proto(),
    }
}

fn timeout(proto: u8, flags: u8, t: &FlowTimeouts) -> Duration {
    if proto != 6 {
        t.udp
    } else if flags & (tcp::FIN | tcp::RST) != 0 {
        t.tcp_closing
    } else if flags & tcp::ACK != 0 {
        t.tcp_established
    } else {
        t.tcp_opening
    }
}

/// Removes flows idle longer than their timeout (both entries of a fast-path flow together).
pub fn collect_garbage(
    store: &mut dyn MapStore,
    timeouts: &FlowTimeouts,
    now_ns: u64,
) -> Result<GcReport, BpfError> {
    let flows = store::flow_entries(store)?;
    let mut groups: BTreeMap<FlowId, (u64, u8, u8, Vec<FlowEntryKey>)> = BTreeMap::new();
    for f in &flows {
        let g = groups
            .entry(flow_id(f))
            .or_insert((0, 0, f.proto(), Vec::new()));
        g.0 = g.0.max(f.last_seen_ns);
        g.1 |= f.tcp_flags;
        g.3.push(f.key);
    }
    let mut removed = 0;
    let mut expired = BTreeSet::new();
    for (last, flags, proto, keys) in groups.into_values() {
        let idle = Duration::from_nanos(now_ns.saturating_sub(last));
        if idle > timeout(proto, flags, timeouts) {
            for k in keys {
                store::delete_flow_entry(store, k)?;
                expired.insert(k);
                removed += 1;
            }
        }
    }
    Ok(GcReport {
        entries: flows.len(),
        removed,
        counters_in_use: flows
            .iter()
            .filter(|f| !expired.contains(&f.key))
            .map(|f| f.counter)
            .filter(|slot| *slot != 0)
            .collect(),
    })
}

/// Counters of the programs and of each counted service port.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub stats: Vec<(StatIndex, Counter)>,
    pub services: BTreeMap<ServicePortId, ServiceCounter>,
}

impl Counters {
    /// Reads the programs' counters and those of the service ports in `slots`.
    pub fn read(store: &dyn MapStore, slots: &BTreeMap<u64, u32>) -> Result<Self, BpfError> {
        let stats = store.stats()?;
        let mut services = BTreeMap::new();
        for (id, slot) in slots {
            if *slot != 0 {
                services.insert(ServicePortId(*id), store.counter(*slot)?);
            }
        }
        Ok(Self {
            stats: StatIndex::ALL
                .iter()
                .zip(stats)
                .map(|(i, c)| (*i, c))
                .collect(),
            services,
        })
    }

    pub fn stat(&self, index: StatIndex) -> Counter {
        self.stats
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    pub fn service(&self, id: ServicePortId) -> ServiceCounter {
        self.services.get(&id).copied().unwrap_or_default()
    }
}
