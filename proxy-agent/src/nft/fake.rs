//! An in-memory nftables with the kernel's transaction semantics, for tests.
//!
//! A transaction is applied to a copy and committed only if every command succeeds. Like the
//! kernel it refuses an element whose key exists with other data, deleting what does not
//! exist, deleting a chain that is not empty or is still referenced, and any reference to a
//! chain or set that does not exist once the transaction is done.

use std::collections::BTreeMap;

use super::{
    Family, NftError, TABLE,
    backend::{NftBackend, TableObjects},
    transaction::{Command, Transaction},
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FakeSet {
    map: bool,
    spec: String,
    /// key -> data (maps) or `None` (sets).
    elements: BTreeMap<String, Option<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FakeTable {
    chains: BTreeMap<String, Vec<String>>,
    sets: BTreeMap<String, FakeSet>,
}

/// The fake backend. `fail_next` makes the next apply fail, for fault-injection tests.
#[derive(Clone, Debug, Default)]
pub struct FakeNft {
    tables: BTreeMap<Family, FakeTable>,
    /// Every transaction applied successfully, in order.
    pub applied: Vec<Transaction>,
    pub fail_next: Option<String>,
}

fn err(errno: &'static str, what: impl Into<String>) -> NftError {
    NftError::Kernel {
        errno,
        what: what.into(),
    }
}

fn split_element(text: &str) -> (String, Option<String>) {
    match text.split_once(" : ") {
        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
        None => (text.to_owned(), None),
    }
}

/// Chains a rule or verdict jumps to.
fn chain_refs(text: &str) -> impl Iterator<Item = &str> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut refs = Vec::new();
    for pair in words.windows(2) {
        if pair[0] == "goto" || pair[0] == "jump" {
            refs.push(pair[1].trim_end_matches(','));
        }
    }
    refs.into_iter()
}

/// Sets a rule refers to (`@name`).
fn set_refs(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix('@'))
        .map(|w| w.trim_end_matches(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_')))
}

impl FakeNft {
    pub fn new() -> Self {
        Self::default()
    }

    fn table(
        tables: &mut BTreeMap<Family, FakeTable>,
        family: Family,
    ) -> Result<&mut FakeTable, NftError> {
        tables
            .get_mut(&family)
            .ok_or_else(|| err("ENOENT", format!("table {family} {TABLE}")))
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one arm per command, each with the kernel's checks"
    )]
    fn run(tables: &mut BTreeMap<Family, FakeTable>, command: &Command) -> Result<(), NftError> {
        match command {
            Command::AddTable { family } => {
                tables.entry(*family).or_default();
            }
            Command::DeleteTable { family } => {
                tables
                    .remove(family)
                    .ok_or_else(|| err("ENOENT", format!("table {family} {TABLE}")))?;
            }
            Command::AddChain { family, name, .. } => {
                Self::table(tables, *family)?
                    .chains
                    .entry(name.clone())
                    .or_default();
            }
            Command::FlushChain { family, name } => {
                Self::table(tables, *family)?
                    .chains
                    .get_mut(name)
                    .ok_or_else(|| err("ENOENT", format!("chain {name}")))?
                    .clear();
            }
            Command::DeleteChain { family, name } => {
                let table = Self::table(tables, *family)?;
                let rules = table
                    .chains
                    .get(name)
                    .ok_or_else(|| err("ENOENT", format!("chain {name}")))?;
                if !rules.is_empty() {
                    return Err(err("EBUSY", format!("chain {name} is not empty")));
                }
                let referenced = table
                    .chains
                    .values()
                    .flatten()
                    .any(|r| chain_refs(r).any(|c| c == name))
                    || table
                        .sets
                        .values()
                        .flat_map(|s| s.elements.values().flatten())
                        .any(|v| chain_refs(v).any(|c| c == name));
                if referenced {
                    return Err(err("EBUSY", format!("chain {name} is still referenced")));
                }
                table.chains.remove(name);
            }
            Command::AddRule {
                family,
                chain,
                rule,
            } => {
                let table = Self::table(tables, *family)?;
                // nft resolves jumps and set references when it adds the rule.
                if let Some(missing) = chain_refs(rule).find(|c| !table.chains.contains_key(*c)) {
                    return Err(err(
                        "ENOENT",
                        format!("rule in {chain} jumps to missing chain {missing}"),
                    ));
                }
                if let Some(missing) = set_refs(rule).find(|s| !table.sets.contains_key(*s)) {
                    return Err(err(
                        "ENOENT",
                        format!("rule in {chain} uses missing set {missing}"),
                    ));
                }
                table
                    .chains
                    .get_mut(chain)
                    .ok_or_else(|| err("ENOENT", format!("chain {chain}")))?
                    .push(rule.clone());
            }
            Command::AddSet {
                family,
                name,
                map,
                spec,
            } => {
                let table = Self::table(tables, *family)?;
                match table.sets.get(name) {
                    Some(existing) if existing.map != *map || existing.spec != *spec => {
                        return Err(err(
                            "EEXIST",
                            format!("set {name} exists with another type"),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        table.sets.insert(
                            name.clone(),
                            FakeSet {
                                map: *map,
                                spec: spec.clone(),
                                elements: BTreeMap::new(),
                            },
                        );
                    }
                }
            }
            Command::FlushSet { family, name, .. } => {
                Self::table(tables, *family)?
                    .sets
                    .get_mut(name)
                    .ok_or_else(|| err("ENOENT", format!("set {name}")))?
                    .elements
                    .clear();
            }
            Command::DeleteSet { family, name, .. } => {
                let table = Self::table(tables, *family)?;
                if table
                    .chains
                    .values()
                    .flatten()
                    .any(|r| set_refs(r).any(|s| s == name))
                {
                    return Err(err("EBUSY", format!("set {name} is still referenced")));
                }
                table
                    .sets
                    .remove(name)
                    .ok_or_else(|| err("ENOENT", format!("set {name}")))?;
            }
            Command::AddElements {
                family,
                set,
                elements,
            } => {
                let table = Self::table(tables, *family)?;
                let chains: std::collections::BTreeSet<String> =
                    table.chains.keys().cloned().collect();
                let s = table
                    .sets
                    .get_mut(set)
                    .ok_or_else(|| err("ENOENT", format!("set {set}")))?;
                for e in elements {
                    let (key, value) = split_element(e);
                    if let Some(missing) = value
                        .as_deref()
                        .and_then(|v| chain_refs(v).find(|c| !chains.contains(*c)))
                    {
                        return Err(err(
                            "ENOENT",
                            format!("element {key} of {set} points to missing chain {missing}"),
                        ));
                    }
                    if value.is_some() != s.map {
                        return Err(err("EINVAL", format!("element {e} does not fit {set}")));
                    }
                    match s.elements.get(&key) {
                        Some(existing) if *existing != value => {
                            return Err(err(
                                "EBUSY",
                                format!("element {key} of {set} exists with other data"),
                            ));
                        }
                        _ => {
                            s.elements.insert(key, value);
                        }
                    }
                }
            }
            Command::DeleteElements {
                family,
                set,
                elements,
            } => {
                let s = Self::table(tables, *family)?
                    .sets
                    .get_mut(set)
                    .ok_or_else(|| err("ENOENT", format!("set {set}")))?;
                for key in elements {
                    s.elements
                        .remove(key)
                        .ok_or_else(|| err("ENOENT", format!("element {key} of {set}")))?;
                }
            }
        }
        Ok(())
    }

    /// Every reference must resolve once the transaction is done.
    fn check_references(tables: &BTreeMap<Family, FakeTable>) -> Result<(), NftError> {
        for (family, table) in tables {
            for (chain, rules) in &table.chains {
                for rule in rules {
                    if let Some(missing) = chain_refs(rule).find(|c| !table.chains.contains_key(*c))
                    {
                        return Err(err(
                            "ENOENT",
                            format!("{family} chain {chain} jumps to missing chain {missing}"),
                        ));
                    }
                    if let Some(missing) = set_refs(rule).find(|s| !table.sets.contains_key(*s)) {
                        return Err(err(
                            "ENOENT",
                            format!("{family} chain {chain} uses missing set {missing}"),
                        ));
                    }
                }
            }
            for (name, set) in &table.sets {
                for value in set.elements.values().flatten() {
                    if let Some(missing) =
                        chain_refs(value).find(|c| !table.chains.contains_key(*c))
                    {
                        return Err(err(
                            "ENOENT",
                            format!(
                                "{family} map {name} element points to missing chain {missing}"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The whole state as text, sorted, for comparisons.
    pub fn dump(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (family, table) in &self.tables {
            let _ = writeln!(out, "table {family} {TABLE}");
            for (name, rules) in &table.chains {
                let _ = writeln!(out, "  chain {name}");
                for r in rules {
                    let _ = writeln!(out, "    {r}");
                }
            }
            for (name, set) in &table.sets {
                let _ = writeln!(
                    out,
                    "  {} {name} {{ {} }}",
                    if set.map { "map" } else { "set" },
                    set.spec
                );
                for (k, v) in &set.elements {
                    match v {
                        Some(v) => {
                            let _ = writeln!(out, "    {k} : {v}");
                        }
                        None => {
                            let _ = writeln!(out, "    {k}");
                        }
                    }
                }
            }
        }
        out
    }

    /// Elements of a set or map, for assertions.
    pub fn elements(&self, family: Family, set: &str) -> BTreeMap<String, Option<String>> {
        self.tables
            .get(&family)
            .and_then(|t| t.sets.get(set))
            .map(|s| s.elements.clone())
            .unwrap_or_default()
    }

    /// Rules of a chain, for assertions.
    pub fn rules(&self, family: Family, chain: &str) -> Option<Vec<String>> {
        self.tables
            .get(&family)
            .and_then(|t| t.chains.get(chain))
            .cloned()
    }

    /// Simulates an object created behind the agent's back.
    pub fn tamper(&mut self, command: &Command) -> Result<(), NftError> {
        Self::run(&mut self.tables, command)
    }
}

impl NftBackend for FakeNft {
    fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        if let Some(what) = self.fail_next.take() {
            return Err(err("EINJECTED", what));
        }
        let mut scratch = self.tables.clone();
        for command in &tx.commands {
            Self::run(&mut scratch, command)?;
        }
        Self::check_references(&scratch)?;
        self.tables = scratch;
        self.applied.push(tx.clone());
        Ok(())
    }

    fn check(&mut self, tx: &Transaction) -> Result<(), NftError> {
        let mut scratch = self.tables.clone();
        for command in &tx.commands {
            Self::run(&mut scratch, command)?;
        }
        Self::check_references(&scratch)
    }

    fn table_state(
        &mut self,
        family: Family,
    ) -> Result<Option<super::verify::TableState>, NftError> {
        Ok(self.tables.get(&family).map(|t| super::verify::TableState {
            chains: t.chains.iter().map(|(n, r)| (n.clone(), r.len())).collect(),
            sets: t
                .sets
                .iter()
                .map(|(n, s)| {
                    (
                        n.clone(),
                        super::verify::SetState {
                            map: s.map,
                            dynamic: s.spec.contains("dynamic"),
                            elements: s
                                .elements
                                .iter()
                                .map(|(k, v)| match v {
                                    Some(v) => format!("{k} : {v}"),
                                    None => k.clone(),
                                })
                                .collect(),
                        },
                    )
                })
                .collect(),
        }))
    }

    fn read_generation(&mut self) -> Result<Option<u32>, NftError> {
        let set = super::render::SetName::Generation.name();
        Ok(self
            .tables
            .get(&Family::Ip)
            .and_then(|t| t.sets.get(set))
            .and_then(|s| s.elements.keys().next())
            .and_then(|e| super::backend::parse_number(e)))
    }

    fn list_table(&mut self, family: Family) -> Result<Option<TableObjects>, NftError> {
        Ok(self.tables.get(&family).map(|t| TableObjects {
            chains: t.chains.keys().cloned().collect(),
            sets: t.sets.iter().map(|(n, s)| (n.clone(), s.map)).collect(),
        }))
    }
}
