//! Reading our tables back and comparing them with what a plan asks for.
//!
//! Used by `proxy-agent verify`: every chain, set and map must exist, with the rule count
//! and the elements a full sync of the plan would write. Rules are compared by count, not
//! text: nft prints rules back in its own normalised form. The clients recorded in affinity
//! sets and the generation number are state, not configuration, and are not compared.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use super::{
    Family, NftError, backend::NftBackend, fake::FakeNft, render::SetName, syncer::NftSyncer,
};
use crate::plan::ProxyPlan;

/// A set or map as read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetState {
    pub map: bool,
    /// Filled by the packet path (affinity sets): elements are not compared.
    pub dynamic: bool,
    pub elements: BTreeSet<String>,
}

/// One of our tables as read back: chains with their rule counts, sets with their elements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableState {
    pub chains: BTreeMap<String, usize>,
    pub sets: BTreeMap<String, SetState>,
}

/// One difference between the kernel and the plan.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Difference {
    MissingTable {
        family: Family,
    },
    MissingChain {
        family: Family,
        chain: String,
    },
    UnexpectedChain {
        family: Family,
        chain: String,
    },
    RuleCount {
        family: Family,
        chain: String,
        want: usize,
        got: usize,
    },
    MissingSet {
        family: Family,
        set: String,
    },
    UnexpectedSet {
        family: Family,
        set: String,
    },
    MissingElement {
        family: Family,
        set: String,
        element: String,
    },
    UnexpectedElement {
        family: Family,
        set: String,
        element: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingTable { family } => {
                write!(f, "nftables: table {family} {} is missing", super::TABLE)
            }
            Self::MissingChain { family, chain } => {
                write!(f, "nftables {family}: chain {chain} is missing")
            }
            Self::UnexpectedChain { family, chain } => {
                write!(f, "nftables {family}: chain {chain} should not be there")
            }
            Self::RuleCount {
                family,
                chain,
                want,
                got,
            } => {
                write!(
                    f,
                    "nftables {family}: chain {chain} has {got} rules, the plan asks for {want}"
                )
            }
            Self::MissingSet { family, set } => {
                write!(f, "nftables {family}: set {set} is missing")
            }
            Self::UnexpectedSet { family, set } => {
                write!(f, "nftables {family}: set {set} should not be there")
            }
            Self::MissingElement {
                family,
                set,
                element,
            } => {
                write!(f, "nftables {family}: {set} lacks {element}")
            }
            Self::UnexpectedElement {
                family,
                set,
                element,
            } => {
                write!(
                    f,
                    "nftables {family}: {set} holds {element}, which the plan does not"
                )
            }
        }
    }
}

/// Normalises an element's spacing (nft wraps long element lists).
fn normalise(element: &str) -> String {
    element.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads `nft list table` output.
pub(super) fn parse_table(text: &str) -> TableState {
    let mut state = TableState::default();
    let mut current_set: Option<String> = None;
    let mut current_chain: Option<String> = None;
    let mut collecting: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(buffer) = collecting.as_mut() {
            buffer.push(' ');
            buffer.push_str(line);
            if line.ends_with('}') {
                let body = buffer.trim_end_matches('}').to_owned();
                collecting = None;
                if let Some(set) = current_set.as_ref().and_then(|s| state.sets.get_mut(s)) {
                    set.elements
                        .extend(body.split(',').map(normalise).filter(|e| !e.is_empty()));
                }
            }
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(kind @ ("set" | "map")), Some(name), Some("{")) => {
                state.sets.insert(
                    name.to_owned(),
                    SetState {
                        map: kind == "map",
                        ..SetState::default()
                    },
                );
                current_set = Some(name.to_owned());
                current_chain = None;
                continue;
            }
            (Some("chain"), Some(name), Some("{")) => {
                state.chains.insert(name.to_owned(), 0);
                current_chain = Some(name.to_owned());
                current_set = None;
                continue;
            }
            _ => {}
        }
        if line == "}" {
            current_set = None;
            current_chain = None;
            continue;
        }
        if let Some(set) = &current_set {
            if line.starts_with("flags")
                && line.contains("dynamic")
                && let Some(s) = state.sets.get_mut(set)
            {
                s.dynamic = true;
            }
            if let Some(rest) = line.strip_prefix("elements = {") {
                if rest.trim_end().ends_with('}') {
                    let body = rest.trim_end().trim_end_matches('}');
                    if let Some(s) = state.sets.get_mut(set) {
                        s.elements
                            .extend(body.split(',').map(normalise).filter(|e| !e.is_empty()));
                    }
                } else {
                    collecting = Some(rest.to_owned());
                }
            }
        } else if let Some(chain) = &current_chain {
            let header = line.starts_with("type ") && line.contains(" hook ");
            if !line.is_empty() && !header && !line.starts_with("comment ") {
                *state.chains.get_mut(chain).expect("chain inserted above") += 1;
            }
        }
    }
    state
}

fn compare(family: Family, want: &TableState, got: &TableState, out: &mut Vec<Difference>) {
    for (chain, rules) in &want.chains {
        match got.chains.get(chain) {
            None => out.push(Difference::MissingChain {
                family,
                chain: chain.clone(),
            }),
            Some(n) if n != rules => {
                out.push(Difference::RuleCount {
                    family,
                    chain: chain.clone(),
                    want: *rules,
                    got: *n,
                });
            }
            Some(_) => {}
        }
    }
    for chain in got.chains.keys().filter(|c| !want.chains.contains_key(*c)) {
        out.push(Difference::UnexpectedChain {
            family,
            chain: chain.clone(),
        });
    }
    for (name, set) in &want.sets {
        let Some(kernel) = got.sets.get(name) else {
            out.push(Difference::MissingSet {
                family,
                set: name.clone(),
            });
            continue;
        };
        if set.dynamic || kernel.dynamic || name == SetName::Generation.name() {
            continue;
        }
        for e in set.elements.difference(&kernel.elements) {
            out.push(Difference::MissingElement {
                family,
                set: name.clone(),
                element: e.clone(),
            });
        }
        for e in kernel.elements.difference(&set.elements) {
            out.push(Difference::UnexpectedElement {
                family,
                set: name.clone(),
                element: e.clone(),
            });
        }
    }
    for set in got.sets.keys().filter(|s| !want.sets.contains_key(*s)) {
        out.push(Difference::UnexpectedSet {
            family,
            set: set.clone(),
        });
    }
}

/// Compares our tables in the kernel (through `backend`) with a full sync of `plan`.
pub fn verify<B: NftBackend>(
    backend: &mut B,
    plan: &ProxyPlan,
    mark: u32,
) -> Result<Vec<Difference>, NftError> {
    // What a full sync writes, applied to an empty fake, read back the same way.
    let mut desired = NftSyncer::new(FakeNft::new(), mark);
    desired.sync(plan)?;
    let mut out = Vec::new();
    for family in Family::BOTH {
        let want = desired
            .backend_mut()
            .table_state(family)?
            .unwrap_or_default();
        match backend.table_state(family)? {
            None => out.push(Difference::MissingTable { family }),
            Some(got) => compare(family, &want, &got, &mut out),
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_parse_into_chains_and_elements() {
        let text = "table ip hybrid-proxy {\n\tcomment \"x\"\n\tset cluster-ips {\n\t\ttype ipv4_addr\n\t\telements = { 10.96.0.10, 10.96.0.20,\n\t\t\t     10.96.0.30 }\n\t}\n\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\telements = { 10.96.0.10 . tcp . 80 : goto cluster-2 }\n\t}\n\tset aff-1 {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 3h\n\t\telements = { 10.244.1.8 expires 2h59m }\n\t}\n\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n\tchain empty {\n\t}\n}\n";
        let state = parse_table(text);
        assert_eq!(state.chains.get("nat-prerouting"), Some(&1));
        assert_eq!(state.chains.get("empty"), Some(&0));
        let ips = &state.sets["cluster-ips"];
        assert_eq!(ips.elements.len(), 3);
        assert!(state.sets["service-ips"].map);
        assert!(
            state.sets["service-ips"]
                .elements
                .contains("10.96.0.10 . tcp . 80 : goto cluster-2")
        );
        assert!(state.sets["aff-1"].dynamic);
    }
}
