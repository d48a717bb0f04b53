//! The seam between the fast path's logic and the kernel's maps: a store of typed tables
//! ([`Table`], one generic interface written once over aya's maps and once as an in-memory
//! fake), implemented by the real maps (`kernel::KernelMaps`) and by [`FakeMaps`].
//!
//! Each family's maps are reached through [`MapStore::v4`] / [`MapStore::v6`] as one
//! [`FamilyTables`] whose types come from the [`Family`]: code that works on either family
//! is written once, generic over it. A new map is one more table, not one more method per
//! operation and family.

use std::collections::{BTreeMap, BTreeSet};

use proxy_common::{
    AffinityKey, AffinityKey6, AffinityValue, AffinityValue6, Backend, Backend6, BackendKey,
    Counter, FlowKey, FlowKey6, FlowValue, FlowValue6, LocalEndpoint, MAGLEV_SIZE, MaglevKey,
    MaglevValue, Meta, PortInfo, ServiceCounter, ServiceKey, ServiceKey6, ServiceValue, StatIndex,
    dir, owner, service_flags,
};
use thiserror::Error;

use super::{
    table::{Budget, FakeTable, Table},
    writes::{
        Endpoint, EntryKey, FlowEntryKey, MapWrite, MapWrites, Revision, ServiceMaps, SetId,
        SetRevisions,
    },
};

/// A failed map operation.
#[derive(Debug, Error)]
#[error("map {map}: {operation}")]
pub struct StoreError {
    pub map: &'static str,
    pub operation: &'static str,
    #[source]
    pub source: Option<aya::maps::MapError>,
}

impl StoreError {
    pub fn new(map: &'static str, operation: &'static str, source: aya::maps::MapError) -> Self {
        Self {
            map,
            operation,
            source: Some(source),
        }
    }
}

/// An address family's map types.
pub trait Family: 'static {
    type ServiceKey: Copy + Ord + std::fmt::Debug;
    type Backend: Copy + PartialEq + std::fmt::Debug;
    type FlowKey: Copy + Ord + std::fmt::Debug;
    type FlowValue: Copy + PartialEq + std::fmt::Debug;
    type AffinityKey: Copy + Ord + std::fmt::Debug;
    type AffinityValue: Copy + PartialEq + std::fmt::Debug;
}

/// IPv4: `HP_SERVICES`, `HP_BACKENDS`, `HP_FLOWS`, `HP_AFFINITY`.
#[derive(Debug)]
pub enum V4 {}

/// IPv6: `HP_SERVICES6`, `HP_BACKENDS6`, `HP_FLOWS6`, `HP_AFFINITY6`.
#[derive(Debug)]
pub enum V6 {}

impl Family for V4 {
    type ServiceKey = ServiceKey;
    type Backend = Backend;
    type FlowKey = FlowKey;
    type FlowValue = FlowValue;
    type AffinityKey = AffinityKey;
    type AffinityValue = AffinityValue;
}

impl Family for V6 {
    type ServiceKey = ServiceKey6;
    type Backend = Backend6;
    type FlowKey = FlowKey6;
    type FlowValue = FlowValue6;
    type AffinityKey = AffinityKey6;
    type AffinityValue = AffinityValue6;
}

/// One family's tables.
pub struct FamilyTables<'a, F: Family> {
    pub services: &'a mut dyn Table<F::ServiceKey, ServiceValue>,
    pub backends: &'a mut dyn Table<BackendKey, F::Backend>,
    pub flows: &'a mut dyn Table<F::FlowKey, F::FlowValue>,
    pub affinity: &'a mut dyn Table<F::AffinityKey, F::AffinityValue>,
}

/// The fast path's maps: each family's tables, the shared tables, and the arrays (which
/// are not hash maps: counters summed over CPUs, one metadata record).
pub trait MapStore {
    fn v4(&mut self) -> FamilyTables<'_, V4>;
    fn v6(&mut self) -> FamilyTables<'_, V6>;
    fn maglev(&mut self) -> &mut dyn Table<MaglevKey, MaglevValue>;
    fn ports(&mut self) -> &mut dyn Table<u64, PortInfo>;
    fn local_endpoints(&mut self) -> &mut dyn Table<u32, LocalEndpoint>;
    fn interfaces(&mut self) -> &mut dyn Table<u32, u32>;
    /// Zeroes a per-service counter slot.
    fn put_counter(&mut self, slot: u32) -> Result<(), StoreError>;
    /// A per-service counter slot summed over CPUs.
    fn counter(&self, slot: u32) -> Result<ServiceCounter, StoreError>;
    /// The programs' counters summed over CPUs, indexed by [`StatIndex`].
    fn stats(&self) -> Result<Vec<Counter>, StoreError>;
    fn meta(&self) -> Result<Meta, StoreError>;
    fn set_meta(&mut self, meta: Meta) -> Result<(), StoreError>;
}

/// Writes a service entry to its family's map.
pub fn put_entry(
    store: &mut dyn MapStore,
    key: EntryKey,
    value: ServiceValue,
) -> Result<(), StoreError> {
    match key {
        EntryKey::V4(k) => store.v4().services.put(k, value),
        EntryKey::V6(k) => store.v6().services.put(k, value),
    }
}

/// Both families' service entries.
pub fn entries(store: &mut dyn MapStore) -> Result<Vec<(EntryKey, ServiceValue)>, StoreError> {
    let mut out: Vec<(EntryKey, ServiceValue)> = store
        .v4()
        .services
        .entries()?
        .into_iter()
        .map(|(k, v)| (EntryKey::V4(k), v))
        .collect();
    out.extend(
        store
            .v6()
            .services
            .entries()?
            .into_iter()
            .map(|(k, v)| (EntryKey::V6(k), v)),
    );
    Ok(out)
}

/// Inserts a flow entry into its family's connection table; with `only_new`, an existing
/// entry is kept (and `Ok(false)` returned).
pub fn put_flow_entry(
    store: &mut dyn MapStore,
    key: FlowEntryKey,
    value: FlowValue,
    only_new: bool,
) -> Result<bool, StoreError> {
    fn put<K, V>(t: &mut dyn Table<K, V>, k: K, v: V, only_new: bool) -> Result<bool, StoreError> {
        if only_new {
            t.put_new(k, v)
        } else {
            t.put(k, v).map(|()| true)
        }
    }
    match key {
        FlowEntryKey::V4(k) => put(store.v4().flows, k, value, only_new),
        FlowEntryKey::V6(k) => put(store.v6().flows, k, flow_value6(&value), only_new),
    }
}

/// An IPv6 flow value with the fields of an IPv4 one that carries no translation (an
/// nftables-owned entry).
fn flow_value6(v: &FlowValue) -> FlowValue6 {
    FlowValue6 {
        id: v.id,
        last_seen_ns: v.last_seen_ns,
        owner: v.owner,
        tcp_flags: v.tcp_flags,
        counter: v.counter,
        ..FlowValue6::default()
    }
}

/// Every flow entry of both families: key, owner, last packet, TCP flags, counter slot, and
/// the translation.
pub fn flow_entries(store: &mut dyn MapStore) -> Result<Vec<FlowEntry>, StoreError> {
    let mut out: Vec<FlowEntry> = store
        .v4()
        .flows
        .entries()?
        .into_iter()
        .map(|(k, v)| FlowEntry {
            key: FlowEntryKey::V4(k),
            id: v.id,
            owner: v.owner,
            last_seen_ns: v.last_seen_ns,
            tcp_flags: v.tcp_flags,
            forwarding: v.forwarding,
            counter: v.counter,
            nat: Endpoint::V4(v.nat),
        })
        .collect();
    out.extend(
        store
            .v6()
            .flows
            .entries()?
            .into_iter()
            .map(|(k, v)| FlowEntry {
                key: FlowEntryKey::V6(k),
                id: v.id,
                owner: v.owner,
                last_seen_ns: v.last_seen_ns,
                tcp_flags: v.tcp_flags,
                forwarding: v.forwarding,
                counter: v.counter,
                nat: Endpoint::V6(v.nat),
            }),
    );
    Ok(out)
}

/// A connection-table entry of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    pub key: FlowEntryKey,
    pub id: u64,
    pub owner: u8,
    pub last_seen_ns: u64,
    pub tcp_flags: u8,
    /// A [`proxy_common::forwarding`] value.
    pub forwarding: u8,
    pub counter: u32,
    pub nat: Endpoint,
}

impl FlowEntry {
    pub fn proto(&self) -> u8 {
        match self.key {
            FlowEntryKey::V4(k) => k.proto,
            FlowEntryKey::V6(k) => k.proto,
        }
    }
    pub fn dir(&self) -> u8 {
        match self.key {
            FlowEntryKey::V4(k) => k.dir,
            FlowEntryKey::V6(k) => k.dir,
        }
    }
    /// Source and destination of the entry's tuple.
    pub fn ends(&self) -> (Endpoint, Endpoint) {
        match self.key {
            FlowEntryKey::V4(k) => (
                Endpoint::V4(Backend {
                    addr: k.src,
                    port: k.sport,
                    _pad: 0,
                }),
                Endpoint::V4(Backend {
                    addr: k.dst,
                    port: k.dport,
                    _pad: 0,
                }),
            ),
            FlowEntryKey::V6(k) => (
                Endpoint::V6(Backend6 {
                    addr: k.src,
                    port: k.sport,
                    _pad: 0,
                }),
                Endpoint::V6(Backend6 {
                    addr: k.dst,
                    port: k.dport,
                    _pad: 0,
                }),
            ),
        }
    }
}

/// Deletes a flow entry from its family's connection table.
pub fn delete_flow_entry(store: &mut dyn MapStore, key: FlowEntryKey) -> Result<(), StoreError> {
    match key {
        FlowEntryKey::V4(k) => store.v4().flows.delete(&k),
        FlowEntryKey::V6(k) => store.v6().flows.delete(&k),
    }
}

fn backend_key(set: SetId, revision: u32, index: u16) -> BackendKey {
    BackendKey {
        id: set.id,
        revision,
        set: set.set,
        _pad: 0,
        index,
    }
}

fn maglev_key(set: SetId, revision: u32) -> MaglevKey {
    MaglevKey {
        id: set.id,
        revision,
        set: set.set,
        _pad: [0; 3],
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Applies the writes in order, stopping at the first failure. Returns how many flow entries
/// were newly marked nftables-owned.
pub fn apply(store: &mut dyn MapStore, writes: &MapWrites) -> Result<usize, StoreError> {
    let mut marked = 0;
    for write in &writes.writes {
        match write {
            MapWrite::PutSet {
                set,
                revision,
                backends,
                table,
            } => {
                for (i, b) in backends.iter().enumerate() {
                    let index = u16::try_from(i).expect("at most MAX_BACKENDS");
                    let key = backend_key(*set, *revision, index);
                    match b {
                        Endpoint::V4(b) => store.v4().backends.put(key, *b)?,
                        Endpoint::V6(b) => store.v6().backends.put(key, *b)?,
                    }
                }
                let mut value = Box::new(MaglevValue::default());
                value.slots.copy_from_slice(&table[..MAGLEV_SIZE]);
                store.maglev().put(maglev_key(*set, *revision), *value)?;
            }
            MapWrite::PutService { key, value } => put_entry(store, *key, *value)?,
            MapWrite::DeleteService { key } => match key {
                EntryKey::V4(k) => store.v4().services.delete(k)?,
                EntryKey::V6(k) => store.v6().services.delete(k)?,
            },
            MapWrite::DeleteSet {
                set,
                revision,
                backends,
            } => {
                store.maglev().delete(&maglev_key(*set, *revision))?;
                for index in 0..*backends {
                    let key = backend_key(*set, *revision, index);
                    if set.is_v6() {
                        store.v6().backends.delete(&key)?;
                    } else {
                        store.v4().backends.delete(&key)?;
                    }
                }
            }
            MapWrite::PutCounter { slot, .. } => store.put_counter(*slot)?,
            MapWrite::RetireCounter { .. } => {}
            MapWrite::PurgeBackends {
                set,
                backends,
                flows,
            } => purge(store, *set, backends, *flows)?,
            MapWrite::MarkNftablesOwned { flows } => {
                let now = monotonic_ns();
                for (key, counter) in flows {
                    if put_flow_entry(store, *key, nftables_owned(now, *counter), true)? {
                        marked += 1;
                    }
                }
            }
            MapWrite::PutPort { id, info } => store.ports().put(*id, *info)?,
            MapWrite::DeletePort { id } => store.ports().delete(id)?,
            MapWrite::SetGeneration {
                generation,
                forwarding,
            } => {
                let mut meta = store.meta()?;
                meta.generation = *generation;
                meta.forwarding = *forwarding;
                store.set_meta(meta)?;
            }
        }
    }
    Ok(marked)
}

/// The connection-table entry that keeps a flow nftables started away from the fast path.
pub fn nftables_owned(now_ns: u64, counter: u32) -> FlowValue {
    FlowValue {
        last_seen_ns: now_ns,
        owner: owner::NFTABLES,
        counter,
        ..FlowValue::default()
    }
}

fn purge(
    store: &mut dyn MapStore,
    set: SetId,
    backends: &[Endpoint],
    flows: bool,
) -> Result<(), StoreError> {
    if set.is_v6() {
        let affinity = store.v6().affinity;
        for (key, value) in affinity.entries()? {
            if key.id == set.id
                && key.set == set.set
                && backends.contains(&Endpoint::V6(value.backend))
            {
                affinity.delete(&key)?;
            }
        }
    } else {
        let affinity = store.v4().affinity;
        for (key, value) in affinity.entries()? {
            if key.id == set.id
                && key.set == set.set
                && backends.contains(&Endpoint::V4(value.backend))
            {
                affinity.delete(&key)?;
            }
        }
    }
    if flows {
        // A flow's backend is its forward entry's translation, or its reply entry's source.
        let gone = |b: &Endpoint| backends.contains(b);
        for flow in flow_entries(store)? {
            if flow.id != set.id
                || flow.owner != owner::FAST
                || matches!(flow.key, FlowEntryKey::V6(_)) != set.is_v6()
            {
                continue;
            }
            let backend = if flow.dir() == dir::FORWARD {
                flow.nat
            } else {
                flow.ends().0
            };
            if gone(&backend) {
                delete_flow_entry(store, flow.key)?;
            }
        }
    }
    Ok(())
}

/// Reads the service maps back into a mirror: service entries, and each set's revisions (the
/// one service entries point at is current; another is the previous one).
pub fn read_service_maps(store: &mut dyn MapStore) -> Result<ServiceMaps, StoreError> {
    let services: BTreeMap<EntryKey, ServiceValue> = entries(store)?.into_iter().collect();
    let mut revisions: BTreeMap<(SetId, u32), BTreeMap<u16, Endpoint>> = BTreeMap::new();
    let backends4 = store.v4().backends.entries()?;
    let backends6 = store.v6().backends.entries()?;
    let backends = backends4
        .into_iter()
        .map(|(k, v)| (k, Endpoint::V4(v)))
        .chain(backends6.into_iter().map(|(k, v)| (k, Endpoint::V6(v))));
    for (k, v) in backends {
        revisions
            .entry((
                SetId {
                    id: k.id,
                    set: k.set,
                },
                k.revision,
            ))
            .or_default()
            .insert(k.index, v);
    }
    for k in store.maglev().keys()? {
        revisions
            .entry((
                SetId {
                    id: k.id,
                    set: k.set,
                },
                k.revision,
            ))
            .or_default();
    }
    let in_use: BTreeSet<u32> = services.values().map(|v| v.counter).collect();
    let counters: BTreeMap<u64, u32> = services.values().map(|v| (v.id, v.counter)).collect();
    let referenced: BTreeMap<SetId, u32> = services
        .values()
        .filter(|v| v.flags & service_flags::COUNT_ONLY == 0)
        .map(|v| {
            (
                SetId {
                    id: v.id,
                    set: v.set,
                },
                v.revision,
            )
        })
        .collect();
    let mut grouped: BTreeMap<SetId, Vec<Revision>> = BTreeMap::new();
    for ((set, revision), backends) in revisions {
        grouped.entry(set).or_default().push(Revision {
            revision,
            backends: backends.into_values().collect(),
        });
    }
    let mut sets = BTreeMap::new();
    let mut stale = Vec::new();
    for (set, revs) in grouped {
        // The current revision is the one service entries use. Any other was either kept for
        // readers of the last flip or left by an interrupted sync (possibly incomplete: a
        // sync writes a revision before any entry uses it): never trust it, delete it at the
        // next sync.
        let current = referenced.get(&set).copied();
        let mut current_rev = None;
        for r in revs {
            if Some(r.revision) == current {
                current_rev = Some(r);
            } else {
                stale.push((set, r));
            }
        }
        if let Some(current) = current_rev {
            sets.insert(
                set,
                SetRevisions {
                    current,
                    previous: None,
                },
            );
        }
    }
    Ok(ServiceMaps {
        services,
        sets,
        stale,
        counters,
        retired: flow_entries(store)?
            .iter()
            .map(|f| f.counter)
            .filter(|slot| *slot != 0 && !in_use.contains(slot))
            .collect(),
        ports: store.ports().entries()?.into_iter().collect(),
        generation: store.meta()?.generation,
        forwarding: store.meta()?.forwarding,
    })
}

/// The in-memory fake: every map a [`FakeTable`] (sorted, dumpable for golden
/// comparisons), keeping the kernel's semantics that matter (capacity limits, `BPF_NOEXIST`);
/// one [`Budget`] across all of them injects failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeMaps {
    pub services: FakeTable<ServiceKey, ServiceValue>,
    pub backends: FakeTable<BackendKey, Backend>,
    pub maglev: FakeTable<MaglevKey, MaglevValue>,
    pub counters: BTreeMap<u32, ServiceCounter>,
    pub ports: FakeTable<u64, PortInfo>,
    pub stats: Vec<Counter>,
    pub flows: FakeTable<FlowKey, FlowValue>,
    pub affinity: FakeTable<AffinityKey, AffinityValue>,
    pub services6: FakeTable<ServiceKey6, ServiceValue>,
    pub backends6: FakeTable<BackendKey, Backend6>,
    pub flows6: FakeTable<FlowKey6, FlowValue6>,
    pub affinity6: FakeTable<AffinityKey6, AffinityValue6>,
    pub local_endpoints: FakeTable<u32, LocalEndpoint>,
    pub interfaces: FakeTable<u32, u32>,
    pub meta: Meta,
    budget: Budget,
}

impl Default for FakeMaps {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeMaps {
    pub fn new() -> Self {
        use proxy_common::capacity as c;
        fn table<K, V>(name: &'static str, capacity: u32, budget: &Budget) -> FakeTable<K, V> {
            FakeTable::new(
                name,
                usize::try_from(capacity).expect("fits"),
                budget.clone(),
            )
        }
        let budget = Budget::default();
        let b = &budget;
        Self {
            services: table("services", c::SERVICES, b),
            backends: table("backends", c::BACKENDS, b),
            maglev: table("maglev", c::MAGLEV, b),
            counters: BTreeMap::new(),
            ports: table("ports", c::PORTS, b),
            stats: vec![Counter::default(); StatIndex::COUNT as usize],
            flows: table("flows", c::CONNECTIONS, b),
            affinity: table("affinity", c::AFFINITY, b),
            services6: table("services6", c::SERVICES, b),
            backends6: table("backends6", c::BACKENDS, b),
            flows6: table("flows6", c::CONNECTIONS, b),
            affinity6: table("affinity6", c::AFFINITY, b),
            local_endpoints: table("local endpoints", c::LOCAL_ENDPOINTS, b),
            interfaces: table("interfaces", c::INTERFACES, b),
            meta: Meta {
                layout_version: proxy_common::LAYOUT_VERSION,
                ..Meta::default()
            },
            budget,
        }
    }

    /// Fails every operation after `n` more successful ones, on every table (`None`: none
    /// fails).
    pub fn fail_after(&mut self, n: Option<usize>) {
        self.budget.fail_after(n);
    }

    /// Sets the capacity of both families' connection tables.
    pub fn set_flow_capacity(&mut self, entries: usize) {
        self.flows.capacity = entries;
        self.flows6.capacity = entries;
    }

    /// Applies the writes all-or-nothing: on a failure the maps are left as they were.
    pub fn apply_atomic(&mut self, writes: &MapWrites) -> Result<usize, StoreError> {
        let mut copy = self.clone();
        let marked = apply(&mut copy, writes)?;
        *self = copy;
        Ok(marked)
    }

    /// A readable dump of the service maps, for golden comparisons.
    pub fn dump(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (k, v) in self.services.iter() {
            let _ = writeln!(out, "service {k:?} -> {v:?}");
        }
        for (k, v) in self.backends.iter() {
            let _ = writeln!(out, "backend {k:?} -> {v:?}");
        }
        for (k, v) in self.services6.iter() {
            let _ = writeln!(out, "service6 {k:?} -> {v:?}");
        }
        for (k, v) in self.backends6.iter() {
            let _ = writeln!(out, "backend6 {k:?} -> {v:?}");
        }
        for k in self.maglev.entries.keys() {
            let _ = writeln!(out, "maglev {k:?}");
        }
        for (id, info) in self.ports.iter() {
            let _ = writeln!(
                out,
                "port {id:016x} {:?} slot {} pods {} external {}",
                super::writes::port_label(info),
                info.counter,
                info.pods,
                info.external
            );
        }
        let _ = writeln!(
            out,
            "counter slots {:?}",
            self.counters.keys().collect::<BTreeSet<_>>()
        );
        let _ = writeln!(out, "generation {}", self.meta.generation);
        out
    }
}

impl MapStore for FakeMaps {
    fn v4(&mut self) -> FamilyTables<'_, V4> {
        FamilyTables {
            services: &mut self.services,
            backends: &mut self.backends,
            flows: &mut self.flows,
            affinity: &mut self.affinity,
        }
    }
    fn v6(&mut self) -> FamilyTables<'_, V6> {
        FamilyTables {
            services: &mut self.services6,
            backends: &mut self.backends6,
            flows: &mut self.flows6,
            affinity: &mut self.affinity6,
        }
    }
    fn maglev(&mut self) -> &mut dyn Table<MaglevKey, MaglevValue> {
        &mut self.maglev
    }
    fn ports(&mut self) -> &mut dyn Table<u64, PortInfo> {
        &mut self.ports
    }
    fn local_endpoints(&mut self) -> &mut dyn Table<u32, LocalEndpoint> {
        &mut self.local_endpoints
    }
    fn interfaces(&mut self) -> &mut dyn Table<u32, u32> {
        &mut self.interfaces
    }
    fn put_counter(&mut self, slot: u32) -> Result<(), StoreError> {
        self.budget.step("counters", "put")?;
        self.counters.insert(slot, ServiceCounter::default());
        Ok(())
    }
    fn counter(&self, slot: u32) -> Result<ServiceCounter, StoreError> {
        Ok(self.counters.get(&slot).copied().unwrap_or_default())
    }
    fn stats(&self) -> Result<Vec<Counter>, StoreError> {
        Ok(self.stats.clone())
    }
    fn meta(&self) -> Result<Meta, StoreError> {
        Ok(self.meta)
    }
    fn set_meta(&mut self, meta: Meta) -> Result<(), StoreError> {
        self.budget.step("meta", "put")?;
        self.meta = meta;
        Ok(())
    }
}
