//! Writing plans to nftables: a correct full sync, and partial syncs on top of it.
//!
//! A full sync rewrites every chain and refills every set and map in one transaction, which
//! is also how an existing table is adopted at start-up without a window where Services stop
//! working. A partial sync renders only the Services that changed, before and after, and
//! writes the difference; elements more than one Service may add are reference-counted.
//! Any failed apply forgets what was written, so the next sync is a full one. Chains and sets
//! that are no longer used are flushed at once and deleted a moment later, in a transaction
//! of their own, so that a deletion can never fail the sync that made them stale.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    Family, NftError,
    backend::NftBackend,
    render::{
        Contribution, Element, FamilyContext, OwnedChain, SetName, SharedChain, contribution,
        static_part,
    },
    transaction::{Command, Transaction},
};
use crate::{
    model::ServiceName,
    plan::{NodePlan, ProxyPlan, ServicePlan},
};

/// Whether a sync rewrote everything or only what changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    Full,
    Partial,
}

impl SyncKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Partial => "partial",
        }
    }
}

/// What a sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    pub kind: SyncKind,
    /// Services written (all of them for a full sync).
    pub services: usize,
    pub elements_added: usize,
    pub elements_deleted: usize,
    /// Size of the `nft -f` input.
    pub bytes: usize,
}

/// What the last successful sync wrote.
#[derive(Debug)]
struct Written {
    node: NodePlan,
    generation: u32,
    services: BTreeMap<ServiceName, Arc<ServicePlan>>,
    /// Reference counts of shared elements.
    shared_elements: HashMap<(Family, SetName, String), u32>,
    shared_chains: HashMap<(Family, SharedChain), u32>,
}

/// Reference-count changes and stale objects of a partial sync, recorded once it applied.
#[derive(Default)]
struct Delta {
    elements: Vec<((Family, SetName, String), i64)>,
    chains: Vec<((Family, SharedChain), i64)>,
    stale: Vec<Stale>,
    revived: Vec<Stale>,
}

/// An object to delete once it has been unused for a moment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stale {
    Chain(Family, String),
    /// `(family, name, is_map)`.
    Set(Family, String, bool),
}

/// Keeps nftables in step with plans.
#[derive(Debug)]
pub struct NftSyncer<B> {
    backend: B,
    mark: u32,
    written: Option<Written>,
    stale: BTreeMap<Stale, Instant>,
    /// How long a stale object stays before it is deleted.
    pub stale_delay: Duration,
    /// The generation the next sync writes with the plan.
    generation: u32,
}

impl<B: NftBackend> NftSyncer<B> {
    /// `mark` is the packet-mark bit that requests masquerade.
    pub fn new(backend: B, mark: u32) -> Self {
        Self {
            backend,
            mark,
            written: None,
            stale: BTreeMap::new(),
            stale_delay: Duration::from_secs(1),
            generation: 0,
        }
    }

    /// The packet-mark bit that requests masquerade.
    pub fn mark(&self) -> u32 {
        self.mark
    }

    /// Changes the masquerade mark; the next sync is a full one.
    pub fn set_mark(&mut self, mark: u32) {
        self.mark = mark;
        self.written = None;
    }

    /// Sets the generation the next sync writes into the table with the plan, so that
    /// `proxy-agent status` can tell which plan the kernel holds.
    pub fn set_generation(&mut self, generation: u32) {
        self.generation = generation;
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Makes the next sync a full one.
    pub fn force_full(&mut self) {
        self.written = None;
    }

    /// Whether the next sync will be a full one.
    pub fn needs_full(&self, plan: &ProxyPlan) -> bool {
        self.written.as_ref().is_none_or(|w| w.node != plan.node)
    }

    /// Writes `plan`: a partial sync when possible, a full one otherwise.
    pub fn sync(&mut self, plan: &ProxyPlan) -> Result<SyncReport, NftError> {
        self.delete_stale();
        if self.needs_full(plan) {
            self.full(plan)
        } else {
            self.partial(plan)
        }
    }

    /// The transaction a full sync of `plan` would apply, ignoring what the kernel holds
    /// (what `proxy-agent render` prints).
    pub fn render_full(&self, plan: &ProxyPlan) -> Transaction {
        self.build_full(plan, &BTreeMap::new()).0
    }

    fn build_full(
        &self,
        plan: &ProxyPlan,
        existing: &BTreeMap<Family, super::TableObjects>,
    ) -> (Transaction, Written, BTreeSet<Stale>) {
        let mut tx = Transaction::new();
        let mut written = Written {
            node: plan.node.clone(),
            generation: self.generation,
            services: plan.services.clone(),
            shared_elements: HashMap::new(),
            shared_chains: HashMap::new(),
        };
        let mut stale = BTreeSet::new();
        for family in Family::BOTH {
            self.full_family(
                family,
                plan,
                existing.get(&family),
                &mut tx,
                &mut written,
                &mut stale,
            );
        }
        (tx, written, stale)
    }

    /// One family's part of a full sync.
    fn full_family(
        &self,
        family: Family,
        plan: &ProxyPlan,
        existing: Option<&super::TableObjects>,
        tx: &mut Transaction,
        written: &mut Written,
        stale: &mut BTreeSet<Stale>,
    ) {
        let ctx = FamilyContext::new(family, &plan.node, self.mark);
        let fixed = static_part(&ctx, plan.node.family(family.ip_family()));
        tx.push(Command::AddTable { family });
        let mut chains: BTreeSet<String> = BTreeSet::new();
        let mut sets: BTreeSet<String> = BTreeSet::new();
        for set in &fixed.sets {
            tx.push(Command::AddSet {
                family,
                name: set.name().into(),
                map: set.is_map(),
                spec: set.spec(family),
            });
            tx.push(Command::FlushSet {
                family,
                name: set.name().into(),
                map: set.is_map(),
            });
            sets.insert(set.name().into());
        }
        let mut writes = ChainWrites::default();
        for (name, base, rules) in &fixed.chains {
            writes.push(name, *base, rules);
            chains.insert(name.clone());
        }
        let mut elements: BTreeMap<SetName, Vec<String>> = BTreeMap::new();
        for e in &fixed.elements {
            elements.entry(e.set).or_default().push(e.text());
        }
        let mut owned_chains: Vec<OwnedChain> = Vec::new();
        for svc in plan.services.values() {
            let c = contribution(svc, &ctx);
            for e in c.elements {
                if e.set.is_shared() {
                    let count = written
                        .shared_elements
                        .entry((family, e.set, e.key.clone()))
                        .or_insert(0);
                    *count += 1;
                    if *count > 1 {
                        continue;
                    }
                }
                elements.entry(e.set).or_default().push(e.text());
            }
            for chain in c.shared_chains {
                *written.shared_chains.entry((family, chain)).or_insert(0) += 1;
            }
            for set in c.sets {
                // Affinity sets keep their elements: declare, never flush.
                tx.push(Command::AddSet {
                    family,
                    name: set.name.clone(),
                    map: false,
                    spec: set.spec,
                });
                sets.insert(set.name);
            }
            owned_chains.extend(c.chains);
        }
        let mut shared: Vec<SharedChain> = written
            .shared_chains
            .keys()
            .filter(|(f, _)| *f == family)
            .map(|(_, c)| *c)
            .collect();
        shared.sort_unstable();
        for chain in shared {
            writes.push(&chain.name(), None, &chain.rules(&ctx));
            chains.insert(chain.name());
        }
        for chain in &owned_chains {
            writes.push(&chain.name, None, &chain.rules);
            chains.insert(chain.name.clone());
        }
        writes.emit(tx, family);
        for (set, items) in elements {
            tx.push(Command::AddElements {
                family,
                set: set.name().into(),
                elements: items,
            });
        }
        tx.push(Command::AddElements {
            family,
            set: SetName::Generation.name().into(),
            elements: vec![self.generation.to_string()],
        });
        if let Some(objects) = existing {
            for chain in objects.chains.iter().filter(|c| !chains.contains(*c)) {
                tx.push(Command::FlushChain {
                    family,
                    name: chain.clone(),
                });
                stale.insert(Stale::Chain(family, chain.clone()));
            }
            for (set, map) in objects.sets.iter().filter(|(s, _)| !sets.contains(s)) {
                stale.insert(Stale::Set(family, set.clone(), *map));
            }
        }
    }

    fn full(&mut self, plan: &ProxyPlan) -> Result<SyncReport, NftError> {
        let mut existing = BTreeMap::new();
        for family in Family::BOTH {
            if let Some(objects) = self.backend.list_table(family)? {
                existing.insert(family, objects);
            }
        }
        let (tx, written, stale) = self.build_full(plan, &existing);
        self.written = None;
        if let Err(first) = self.backend.apply(&tx) {
            // Something in the way that a refill cannot fix (an object changed behind our
            // back, a declaration from an older layout): replace the tables, still in one
            // atomic transaction, at the price of the clients' affinity.
            tracing::warn!(error = %first, "full sync failed; replacing the tables in one transaction");
            let mut replace = Transaction::new();
            for family in Family::BOTH {
                if existing.contains_key(&family) {
                    replace.push(Command::AddTable { family });
                    replace.push(Command::DeleteTable { family });
                }
            }
            let (fresh, _, _) = self.build_full(plan, &BTreeMap::new());
            replace.commands.extend(fresh.commands);
            self.backend.apply(&replace).map_err(|_| first)?;
            self.stale.clear();
            return Ok(self.finish_full(written, &replace, BTreeSet::new()));
        }
        Ok(self.finish_full(written, &tx, stale))
    }

    fn finish_full(
        &mut self,
        written: Written,
        tx: &Transaction,
        stale: BTreeSet<Stale>,
    ) -> SyncReport {
        let now = Instant::now();
        for s in stale {
            self.stale.entry(s).or_insert(now);
        }
        let (added, deleted) = tx.element_counts();
        let report = SyncReport {
            kind: SyncKind::Full,
            services: written.services.len(),
            elements_added: added,
            elements_deleted: deleted,
            bytes: tx.to_nft().len(),
        };
        self.written = Some(written);
        report
    }

    fn partial(&mut self, plan: &ProxyPlan) -> Result<SyncReport, NftError> {
        let written = self
            .written
            .as_ref()
            .expect("partial sync needs a full sync first");
        let mut changed: Vec<&ServiceName> = Vec::new();
        // Equal, but planned anew (after a full replan): recorded with the plan's copy, so
        // that the next sync compares pointers again, not whole Services.
        let mut realign: Vec<ServiceName> = Vec::new();
        for (name, old) in &written.services {
            match plan.services.get(name) {
                Some(new) if Arc::ptr_eq(old, new) => {}
                Some(new) if old == new => realign.push(name.clone()),
                _ => changed.push(name),
            }
        }
        changed.extend(
            plan.services
                .keys()
                .filter(|n| !written.services.contains_key(*n)),
        );

        let mut tx = Transaction::new();
        let mut delta = Delta::default();
        for family in Family::BOTH {
            self.partial_family(family, plan, &changed, &mut tx, &mut delta);
            if written.generation != self.generation {
                let set = SetName::Generation.name();
                tx.push(Command::FlushSet {
                    family,
                    name: set.into(),
                    map: false,
                });
                tx.push(Command::AddElements {
                    family,
                    set: set.into(),
                    elements: vec![self.generation.to_string()],
                });
            }
        }
        let mut changed: Vec<ServiceName> = changed.into_iter().cloned().collect();
        let services = changed.len();
        if !tx.is_empty() {
            tracing::trace!(transaction = %tx, "partial sync");
            if let Err(e) = self.backend.apply(&tx) {
                self.written = None;
                return Err(e);
            }
        }
        changed.append(&mut realign);
        self.commit(plan, &changed, delta);
        let (added, deleted) = tx.element_counts();
        Ok(SyncReport {
            kind: SyncKind::Partial,
            services,
            elements_added: added,
            elements_deleted: deleted,
            bytes: tx.to_nft().len(),
        })
    }

    /// One family's part of a partial sync: the changed Services' elements, chains and sets.
    fn partial_family(
        &self,
        family: Family,
        plan: &ProxyPlan,
        changed: &[&ServiceName],
        tx: &mut Transaction,
        delta: &mut Delta,
    ) {
        let written = self
            .written
            .as_ref()
            .expect("partial sync needs a full sync first");
        let ctx = FamilyContext::new(family, &plan.node, self.mark);
        let mut deletes: BTreeMap<SetName, Vec<String>> = BTreeMap::new();
        let mut adds: BTreeMap<SetName, Vec<String>> = BTreeMap::new();
        let mut chain_changes: BTreeMap<SharedChain, i64> = BTreeMap::new();
        let mut shared_changes: BTreeMap<(SetName, String), i64> = BTreeMap::new();
        let mut writes = ChainWrites::default();
        for name in changed {
            let old = written
                .services
                .get(*name)
                .map(|s| contribution(s, &ctx))
                .unwrap_or_default();
            let new = plan
                .services
                .get(*name)
                .map(|s| contribution(s, &ctx))
                .unwrap_or_default();
            diff_elements(&old, &new, &mut deletes, &mut adds, &mut shared_changes);
            for c in &old.shared_chains {
                *chain_changes.entry(*c).or_insert(0) -= 1;
            }
            for c in &new.shared_chains {
                *chain_changes.entry(*c).or_insert(0) += 1;
            }
            diff_owned(
                family,
                &old,
                &new,
                tx,
                &mut writes,
                &mut delta.stale,
                &mut delta.revived,
            );
        }
        // Shared elements appear with their first user and go with their last.
        for ((set, key), change) in shared_changes {
            if change == 0 {
                continue;
            }
            let before = i64::from(
                written
                    .shared_elements
                    .get(&(family, set, key.clone()))
                    .copied()
                    .unwrap_or(0),
            );
            let after = before + change;
            if before == 0 && after > 0 {
                adds.entry(set).or_default().push(key.clone());
            } else if before > 0 && after == 0 {
                deletes.entry(set).or_default().push(key.clone());
            }
            delta.elements.push(((family, set, key), change));
        }
        for (chain, change) in chain_changes {
            if change == 0 {
                continue;
            }
            let before = i64::from(
                written
                    .shared_chains
                    .get(&(family, chain))
                    .copied()
                    .unwrap_or(0),
            );
            let after = before + change;
            if before == 0 && after > 0 {
                writes.push(&chain.name(), None, &chain.rules(&ctx));
                delta.revived.push(Stale::Chain(family, chain.name()));
            } else if before > 0 && after == 0 {
                tx.push(Command::FlushChain {
                    family,
                    name: chain.name(),
                });
                delta.stale.push(Stale::Chain(family, chain.name()));
            }
            delta.chains.push(((family, chain), change));
        }
        writes.emit(tx, family);
        for (set, keys) in deletes {
            tx.push(Command::DeleteElements {
                family,
                set: set.name().into(),
                elements: keys,
            });
        }
        for (set, items) in adds {
            tx.push(Command::AddElements {
                family,
                set: set.name().into(),
                elements: items,
            });
        }
    }

    /// Records a successful partial sync.
    /// Records what a partial sync wrote: the `changed` Services as `plan` has them (only
    /// those: copying the whole map cost more than the rest of a sync at 30,000 Services;
    /// Services equal to what was written may be among them, to record the plan's copy).
    fn commit(&mut self, plan: &ProxyPlan, changed: &[ServiceName], delta: Delta) {
        let written = self
            .written
            .as_mut()
            .expect("partial sync needs a full sync first");
        for (key, change) in delta.elements {
            let count = written.shared_elements.entry(key.clone()).or_insert(0);
            *count = u32::try_from(i64::from(*count) + change).unwrap_or(0);
            if *count == 0 {
                written.shared_elements.remove(&key);
            }
        }
        for (key, change) in delta.chains {
            let count = written.shared_chains.entry(key).or_insert(0);
            *count = u32::try_from(i64::from(*count) + change).unwrap_or(0);
            if *count == 0 {
                written.shared_chains.remove(&key);
            }
        }
        for name in changed {
            match plan.services.get(name) {
                Some(service) => {
                    written.services.insert(name.clone(), Arc::clone(service));
                }
                None => {
                    written.services.remove(name);
                }
            }
        }
        written.generation = self.generation;
        for s in delta.revived {
            self.stale.remove(&s);
        }
        let now = Instant::now();
        for s in delta.stale {
            self.stale.entry(s).or_insert(now);
        }
    }

    /// Deletes objects stale for longer than `stale_delay`, in a transaction of their own.
    fn delete_stale(&mut self) {
        let now = Instant::now();
        let due: Vec<Stale> = self
            .stale
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.stale_delay)
            .map(|(s, _)| s.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let mut tx = Transaction::new();
        // Chains first: an owned chain's rules are what reference an owned set.
        for s in &due {
            if let Stale::Chain(family, name) = s {
                tx.push(Command::DeleteChain {
                    family: *family,
                    name: name.clone(),
                });
            }
        }
        for s in &due {
            if let Stale::Set(family, name, map) = s {
                tx.push(Command::DeleteSet {
                    family: *family,
                    name: name.clone(),
                    map: *map,
                });
            }
        }
        match self.backend.apply(&tx) {
            Ok(()) => {
                for s in &due {
                    self.stale.remove(s);
                }
            }
            // Still in use (a later sync revived it) or already gone: forget about it; a full
            // sync finds real leftovers again.
            Err(e) => {
                tracing::debug!(error = %e, "deleting stale nftables objects failed; dropping them from the list");
                for s in &due {
                    self.stale.remove(s);
                }
            }
        }
    }

    /// Removes both tables.
    pub fn cleanup(&mut self) -> Result<(), NftError> {
        self.written = None;
        self.stale.clear();
        let mut tx = Transaction::new();
        for family in Family::BOTH {
            // `add` first so that deleting never fails for a missing table.
            tx.push(Command::AddTable { family });
            tx.push(Command::DeleteTable { family });
        }
        self.backend.apply(&tx)
    }
}

/// Chains to (re)write in one transaction. Every chain is declared before any rule is
/// added, because nft resolves a rule's `jump`/`goto` when it adds the rule.
#[derive(Default)]
struct ChainWrites {
    chains: Vec<(String, Option<super::BaseChain>, Vec<String>)>,
}

impl ChainWrites {
    fn push(&mut self, name: &str, base: Option<super::BaseChain>, rules: &[String]) {
        self.chains.push((name.to_owned(), base, rules.to_vec()));
    }

    fn emit(self, tx: &mut Transaction, family: Family) {
        for (name, base, _) in &self.chains {
            tx.push(Command::AddChain {
                family,
                name: name.clone(),
                base: *base,
            });
        }
        for (name, _, rules) in self.chains {
            tx.push(Command::FlushChain {
                family,
                name: name.clone(),
            });
            for rule in rules {
                tx.push(Command::AddRule {
                    family,
                    chain: name.clone(),
                    rule,
                });
            }
        }
    }
}

/// Element changes between two renderings of one Service.
fn diff_elements(
    old: &Contribution,
    new: &Contribution,
    deletes: &mut BTreeMap<SetName, Vec<String>>,
    adds: &mut BTreeMap<SetName, Vec<String>>,
    shared: &mut BTreeMap<(SetName, String), i64>,
) {
    let index = |c: &Contribution| -> HashMap<(SetName, String), Option<String>> {
        c.elements
            .iter()
            .filter(|e| !e.set.is_shared())
            .map(|e| ((e.set, e.key.clone()), e.value.clone()))
            .collect()
    };
    let before = index(old);
    let after = index(new);
    for ((set, key), value) in &before {
        match after.get(&(*set, key.clone())) {
            Some(v) if v == value => {}
            _ => deletes.entry(*set).or_default().push(key.clone()),
        }
    }
    for ((set, key), value) in &after {
        match before.get(&(*set, key.clone())) {
            Some(v) if v == value => {}
            _ => adds.entry(*set).or_default().push(
                Element {
                    set: *set,
                    key: key.clone(),
                    value: value.clone(),
                }
                .text(),
            ),
        }
    }
    for e in old.elements.iter().filter(|e| e.set.is_shared()) {
        *shared.entry((e.set, e.key.clone())).or_insert(0) -= 1;
    }
    for e in new.elements.iter().filter(|e| e.set.is_shared()) {
        *shared.entry((e.set, e.key.clone())).or_insert(0) += 1;
    }
}

/// Chains and affinity sets owned by one Service.
fn diff_owned(
    family: Family,
    old: &Contribution,
    new: &Contribution,
    tx: &mut Transaction,
    writes: &mut ChainWrites,
    stale: &mut Vec<Stale>,
    revived: &mut Vec<Stale>,
) {
    for set in &new.sets {
        if !old.sets.iter().any(|s| s.name == set.name) {
            tx.push(Command::AddSet {
                family,
                name: set.name.clone(),
                map: false,
                spec: set.spec.clone(),
            });
            revived.push(Stale::Set(family, set.name.clone(), false));
        }
    }
    for chain in &new.chains {
        if !old.chains.contains(chain) {
            writes.push(&chain.name, None, &chain.rules);
            revived.push(Stale::Chain(family, chain.name.clone()));
        }
    }
    for chain in &old.chains {
        if !new.chains.iter().any(|c| c.name == chain.name) {
            tx.push(Command::FlushChain {
                family,
                name: chain.name.clone(),
            });
            stale.push(Stale::Chain(family, chain.name.clone()));
        }
    }
    for set in &old.sets {
        if !new.sets.iter().any(|s| s.name == set.name) {
            stale.push(Stale::Set(family, set.name.clone(), false));
        }
    }
}
