//! The seam between the fast path's logic and the kernel's maps: a small trait of map
//! operations, implemented by the real maps (`kernel::KernelMaps`) and by an in-memory fake.

use std::collections::{BTreeMap, BTreeSet};

use proxy_common::{
    AffinityKey, AffinityKey6, AffinityValue, AffinityValue6, Backend, Backend6, BackendKey,
    Counter, FlowKey, FlowKey6, FlowValue, FlowValue6, MAGLEV_SIZE, MaglevKey, MaglevValue, Meta,
    PortInfo, ServiceCounter, ServiceKey, ServiceKey6, ServiceValue, StatIndex, dir, owner,
    service_flags,
};
use thiserror::Error;

use super::writes::{
    Endpoint, EntryKey, FlowEntryKey, MapWrite, MapWrites, Revision, ServiceMaps, SetId,
    SetRevisions,
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

/// Operations on the fast path's maps. Each call is one kernel map operation (or a dump).
pub trait MapStore {
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), StoreError>;
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), StoreError>;
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, StoreError>;
    fn put_backend(&mut self, key: BackendKey, value: Backend) -> Result<(), StoreError>;
    fn delete_backend(&mut self, key: BackendKey) -> Result<(), StoreError>;
    fn backends(&self) -> Result<Vec<(BackendKey, Backend)>, StoreError>;
    fn put_maglev(&mut self, key: MaglevKey, value: &MaglevValue) -> Result<(), StoreError>;
    fn delete_maglev(&mut self, key: MaglevKey) -> Result<(), StoreError>;
    fn maglev_keys(&self) -> Result<Vec<MaglevKey>, StoreError>;
    /// Zeroes a per-service counter slot.
    fn put_counter(&mut self, slot: u32) -> Result<(), StoreError>;
    /// A per-service counter slot summed over CPUs.
    fn counter(&self, slot: u32) -> Result<ServiceCounter, StoreError>;
    fn put_port(&mut self, id: u64, info: &PortInfo) -> Result<(), StoreError>;
    fn delete_port(&mut self, id: u64) -> Result<(), StoreError>;
    fn ports(&self) -> Result<Vec<(u64, PortInfo)>, StoreError>;
    /// The programs' counters summed over CPUs, indexed by [`StatIndex`].
    fn stats(&self) -> Result<Vec<Counter>, StoreError>;
    /// Inserts a flow; with `only_new`, an existing entry is kept (and `Ok(false)` returned).
    fn put_flow(
        &mut self,
        key: FlowKey,
        value: FlowValue,
        only_new: bool,
    ) -> Result<bool, StoreError>;
    fn delete_flow(&mut self, key: FlowKey) -> Result<(), StoreError>;
    fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, StoreError>;
    fn affinity(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, StoreError>;
    fn delete_affinity(&mut self, key: AffinityKey) -> Result<(), StoreError>;
    fn meta(&self) -> Result<Meta, StoreError>;
    fn set_meta(&mut self, meta: Meta) -> Result<(), StoreError>;

    // The IPv6 maps, as their IPv4 counterparts above.
    fn put_service6(&mut self, key: ServiceKey6, value: ServiceValue) -> Result<(), StoreError>;
    fn delete_service6(&mut self, key: ServiceKey6) -> Result<(), StoreError>;
    fn services6(&self) -> Result<Vec<(ServiceKey6, ServiceValue)>, StoreError>;
    fn put_backend6(&mut self, key: BackendKey, value: Backend6) -> Result<(), StoreError>;
    fn delete_backend6(&mut self, key: BackendKey) -> Result<(), StoreError>;
    fn backends6(&self) -> Result<Vec<(BackendKey, Backend6)>, StoreError>;
    fn put_flow6(
        &mut self,
        key: FlowKey6,
        value: FlowValue6,
        only_new: bool,
    ) -> Result<bool, StoreError>;
    fn delete_flow6(&mut self, key: FlowKey6) -> Result<(), StoreError>;
    fn flows6(&self) -> Result<Vec<(FlowKey6, FlowValue6)>, StoreError>;
    fn affinity6(&self) -> Result<Vec<(AffinityKey6, AffinityValue6)>, StoreError>;
    fn delete_affinity6(&mut self, key: AffinityKey6) -> Result<(), StoreError>;
}

/// Writes a service entry to its family's map.
pub fn put_entry(
    store: &mut dyn MapStore,
    key: EntryKey,
    value: ServiceValue,
) -> Result<(), StoreError> {
    match key {
        EntryKey::V4(k) => store.put_service(k, value),
        EntryKey::V6(k) => store.put_service6(k, value),
    }
}

/// Both families' service entries.
pub fn entries(store: &dyn MapStore) -> Result<Vec<(EntryKey, ServiceValue)>, StoreError> {
    let mut out: Vec<(EntryKey, ServiceValue)> = store
        .services()?
        .into_iter()
        .map(|(k, v)| (EntryKey::V4(k), v))
        .collect();
    out.extend(
        store
            .services6()?
            .into_iter()
            .map(|(k, v)| (EntryKey::V6(k), v)),
    );
    Ok(out)
}

/// Inserts a flow entry into its family's connection table (see [`MapStore::put_flow`]).
pub fn put_flow_entry(
    store: &mut dyn MapStore,
    key: FlowEntryKey,
    value: FlowValue,
    only_new: bool,
) -> Result<bool, StoreError> {
    match key {
        FlowEntryKey::V4(k) => store.put_flow(k, value, only_new),
        FlowEntryKey::V6(k) => store.put_flow6(k, flow_value6(&value), only_new),
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
pub fn flow_entries(store: &dyn MapStore) -> Result<Vec<FlowEntry>, StoreError> {
    let mut out: Vec<FlowEntry> = store
        .flows()?
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
    out.extend(store.flows6()?.into_iter().map(|(k, v)| FlowEntry {
        key: FlowEntryKey::V6(k),
        id: v.id,
        owner: v.owner,
        last_seen_ns: v.last_seen_ns,
        tcp_flags: v.tcp_flags,
        forwarding: v.forwarding,
        counter: v.counter,
        nat: Endpoint::V6(v.nat),
    }));
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
        FlowEntryKey::V4(k) => store.delete_flow(k),
        FlowEntryKey::V6(k) => store.delete_flow6(k),
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
                        Endpoint::V4(b) => store.put_backend(key, *b)?,
                        Endpoint::V6(b) => store.put_backend6(key, *b)?,
                    }
                }
                let mut value = Box::new(MaglevValue::default());
                value.slots.copy_from_slice(&table[..MAGLEV_SIZE]);
                store.put_maglev(maglev_key(*set, *revision), &value)?;
            }
            MapWrite::PutService { key, value } => put_entry(store, *key, *value)?,
            MapWrite::DeleteService { key } => match key {
                EntryKey::V4(k) => store.delete_service(*k)?,
                EntryKey::V6(k) => store.delete_service6(*k)?,
            },
            MapWrite::DeleteSet {
                set,
                revision,
                backends,
            } => {
                store.delete_maglev(maglev_key(*set, *revision))?;
                for index in 0..*backends {
                    let key = backend_key(*set, *revision, index);
                    if set.is_v6() {
                        store.delete_backend6(key)?;
                    } else {
                        store.delete_backend(key)?;
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
            MapWrite::PutPort { id, info } => store.put_port(*id, info)?,
            MapWrite::DeletePort { id } => store.delete_port(*id)?,
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
        for (key, value) in store.affinity6()? {
            if key.id == set.id
                && key.set == set.set
                && backends.contains(&Endpoint::V6(value.backend))
            {
                store.delete_affinity6(key)?;
            }
        }
    } else {
        for (key, value) in store.affinity()? {
            if key.id == set.id
                && key.set == set.set
                && backends.contains(&Endpoint::V4(value.backend))
            {
                store.delete_affinity(key)?;
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
pub fn read_service_maps(store: &dyn MapStore) -> Result<ServiceMaps, StoreError> {
    let services: BTreeMap<EntryKey, ServiceValue> = entries(store)?.into_iter().collect();
    let mut revisions: BTreeMap<(SetId, u32), BTreeMap<u16, Endpoint>> = BTreeMap::new();
    let backends = store
        .backends()?
        .into_iter()
        .map(|(k, v)| (k, Endpoint::V4(v)))
        .chain(
            store
                .backends6()?
                .into_iter()
                .map(|(k, v)| (k, Endpoint::V6(v))),
        );
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
    for k in store.maglev_keys()? {
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
        ports: store.ports()?.into_iter().collect(),
        generation: store.meta()?.generation,
        forwarding: store.meta()?.forwarding,
    })
}

/// The in-memory fake: every map as a sorted map, dumpable for golden comparisons. It keeps
/// the kernel's semantics that matter (capacity limits, `BPF_NOEXIST`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeMaps {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<BackendKey, Backend>,
    pub maglev: BTreeMap<MaglevKey, Vec<u16>>,
    pub counters: BTreeMap<u32, ServiceCounter>,
    pub ports: BTreeMap<u64, PortInfo>,
    pub stats: Vec<Counter>,
    pub flows: BTreeMap<FlowKey, FlowValue>,
    pub affinity: BTreeMap<AffinityKey, AffinityValue>,
    pub services6: BTreeMap<ServiceKey6, ServiceValue>,
    pub backends6: BTreeMap<BackendKey, Backend6>,
    pub flows6: BTreeMap<FlowKey6, FlowValue6>,
    pub affinity6: BTreeMap<AffinityKey6, AffinityValue6>,
    pub meta: Meta,
    /// `max_entries` of the flow table.
    pub flow_capacity: usize,
    /// Fail the operation after this many more successful ones (fault injection).
    pub fail_after: Option<usize>,
}

impl FakeMaps {
    pub fn new() -> Self {
        Self {
            stats: vec![Counter::default(); StatIndex::COUNT as usize],
            flow_capacity: proxy_common::capacity::CONNECTIONS as usize,
            meta: Meta {
                layout_version: proxy_common::LAYOUT_VERSION,
                ..Meta::default()
            },
            ..Self::default()
        }
    }

    fn step(&mut self, map: &'static str, operation: &'static str) -> Result<(), StoreError> {
        match &mut self.fail_after {
            Some(0) => Err(StoreError {
                map,
                operation,
                source: None,
            }),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
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
        for (k, v) in &self.services {
            let _ = writeln!(out, "service {k:?} -> {v:?}");
        }
        for (k, v) in &self.backends {
            let _ = writeln!(out, "backend {k:?} -> {v:?}");
        }
        for (k, v) in &self.services6 {
            let _ = writeln!(out, "service6 {k:?} -> {v:?}");
        }
        for (k, v) in &self.backends6 {
            let _ = writeln!(out, "backend6 {k:?} -> {v:?}");
        }
        for k in self.maglev.keys() {
            let _ = writeln!(out, "maglev {k:?}");
        }
        for (id, info) in &self.ports {
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
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), StoreError> {
        self.step("services", "put")?;
        self.services.insert(key, value);
        Ok(())
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), StoreError> {
        self.step("services", "delete")?;
        self.services.remove(&key);
        Ok(())
    }
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, StoreError> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn put_backend(&mut self, key: BackendKey, value: Backend) -> Result<(), StoreError> {
        self.step("backends", "put")?;
        self.backends.insert(key, value);
        Ok(())
    }
    fn delete_backend(&mut self, key: BackendKey) -> Result<(), StoreError> {
        self.step("backends", "delete")?;
        self.backends.remove(&key);
        Ok(())
    }
    fn backends(&self) -> Result<Vec<(BackendKey, Backend)>, StoreError> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn put_maglev(&mut self, key: MaglevKey, value: &MaglevValue) -> Result<(), StoreError> {
        self.step("maglev", "put")?;
        self.maglev.insert(key, value.slots.to_vec());
        Ok(())
    }
    fn delete_maglev(&mut self, key: MaglevKey) -> Result<(), StoreError> {
        self.step("maglev", "delete")?;
        self.maglev.remove(&key);
        Ok(())
    }
    fn maglev_keys(&self) -> Result<Vec<MaglevKey>, StoreError> {
        Ok(self.maglev.keys().copied().collect())
    }
    fn put_counter(&mut self, slot: u32) -> Result<(), StoreError> {
        self.step("counters", "put")?;
        self.counters.insert(slot, ServiceCounter::default());
        Ok(())
    }
    fn counter(&self, slot: u32) -> Result<ServiceCounter, StoreError> {
        Ok(self.counters.get(&slot).copied().unwrap_or_default())
    }
    fn put_port(&mut self, id: u64, info: &PortInfo) -> Result<(), StoreError> {
        self.step("ports", "put")?;
        self.ports.insert(id, *info);
        Ok(())
    }
    fn delete_port(&mut self, id: u64) -> Result<(), StoreError> {
        self.step("ports", "delete")?;
        self.ports.remove(&id);
        Ok(())
    }
    fn ports(&self) -> Result<Vec<(u64, PortInfo)>, StoreError> {
        Ok(self.ports.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn stats(&self) -> Result<Vec<Counter>, StoreError> {
        Ok(self.stats.clone())
    }
    fn put_flow(
        &mut self,
        key: FlowKey,
        value: FlowValue,
        only_new: bool,
    ) -> Result<bool, StoreError> {
        self.step("flows", "put")?;
        if only_new && self.flows.contains_key(&key) {
            return Ok(false);
        }
        if !self.flows.contains_key(&key) && self.flows.len() >= self.flow_capacity {
            return Err(StoreError {
                map: "flows",
                operation: "put (full)",
                source: None,
            });
        }
        self.flows.insert(key, value);
        Ok(true)
    }
    fn delete_flow(&mut self, key: FlowKey) -> Result<(), StoreError> {
        self.step("flows", "delete")?;
        self.flows.remove(&key);
        Ok(())
    }
    fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, StoreError> {
        Ok(self.flows.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn affinity(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, StoreError> {
        Ok(self.affinity.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn delete_affinity(&mut self, key: AffinityKey) -> Result<(), StoreError> {
        self.step("affinity", "delete")?;
        self.affinity.remove(&key);
        Ok(())
    }
    fn meta(&self) -> Result<Meta, StoreError> {
        Ok(self.meta)
    }
    fn set_meta(&mut self, meta: Meta) -> Result<(), StoreError> {
        self.step("meta", "put")?;
        self.meta = meta;
        Ok(())
    }
    fn put_service6(&mut self, key: ServiceKey6, value: ServiceValue) -> Result<(), StoreError> {
        self.step("services6", "put")?;
        self.services6.insert(key, value);
        Ok(())
    }
    fn delete_service6(&mut self, key: ServiceKey6) -> Result<(), StoreError> {
        self.step("services6", "delete")?;
        self.services6.remove(&key);
        Ok(())
    }
    fn services6(&self) -> Result<Vec<(ServiceKey6, ServiceValue)>, StoreError> {
        Ok(self.services6.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn put_backend6(&mut self, key: BackendKey, value: Backend6) -> Result<(), StoreError> {
        self.step("backends6", "put")?;
        self.backends6.insert(key, value);
        Ok(())
    }
    fn delete_backend6(&mut self, key: BackendKey) -> Result<(), StoreError> {
        self.step("backends6", "delete")?;
        self.backends6.remove(&key);
        Ok(())
    }
    fn backends6(&self) -> Result<Vec<(BackendKey, Backend6)>, StoreError> {
        Ok(self.backends6.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn put_flow6(
        &mut self,
        key: FlowKey6,
        value: FlowValue6,
        only_new: bool,
    ) -> Result<bool, StoreError> {
        self.step("flows6", "put")?;
        if only_new && self.flows6.contains_key(&key) {
            return Ok(false);
        }
        if !self.flows6.contains_key(&key) && self.flows6.len() >= self.flow_capacity {
            return Err(StoreError {
                map: "flows6",
                operation: "put (full)",
                source: None,
            });
        }
        self.flows6.insert(key, value);
        Ok(true)
    }
    fn delete_flow6(&mut self, key: FlowKey6) -> Result<(), StoreError> {
        self.step("flows6", "delete")?;
        self.flows6.remove(&key);
        Ok(())
    }
    fn flows6(&self) -> Result<Vec<(FlowKey6, FlowValue6)>, StoreError> {
        Ok(self.flows6.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn affinity6(&self) -> Result<Vec<(AffinityKey6, AffinityValue6)>, StoreError> {
        Ok(self.affinity6.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn delete_affinity6(&mut self, key: AffinityKey6) -> Result<(), StoreError> {
        self.step("affinity6", "delete")?;
        self.affinity6.remove(&key);
        Ok(())
    }
}
