//! One nftables transaction, as a value: built by the syncer, printed for `render` and trace
//! logs, applied once, all or nothing.

use std::fmt::{self, Write as _};

use super::{Family, TABLE};

/// A base chain's hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    /// `filter` or `nat`.
    pub kind: &'static str,
    pub hook: &'static str,
    pub priority: i32,
}

/// One command of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    AddTable {
        family: Family,
    },
    DeleteTable {
        family: Family,
    },
    AddChain {
        family: Family,
        name: String,
        base: Option<BaseChain>,
    },
    FlushChain {
        family: Family,
        name: String,
    },
    DeleteChain {
        family: Family,
        name: String,
    },
    AddRule {
        family: Family,
        chain: String,
        rule: String,
    },
    /// `spec` is the body between the braces, e.g. `type ipv4_addr ;`.
    AddSet {
        family: Family,
        name: String,
        map: bool,
        spec: String,
    },
    FlushSet {
        family: Family,
        name: String,
        map: bool,
    },
    DeleteSet {
        family: Family,
        name: String,
        map: bool,
    },
    /// Elements as nft spells them: `key` or `key : value`.
    AddElements {
        family: Family,
        set: String,
        elements: Vec<String>,
    },
    /// Keys only.
    DeleteElements {
        family: Family,
        set: String,
        elements: Vec<String>,
    },
}

/// Elements per `add element` line: long enough to parse fast, short enough that an error's
/// line number points somewhere useful.
const ELEMENTS_PER_LINE: usize = 512;

impl Command {
    fn write(&self, out: &mut String) {
        let set_kind = |map: bool| if map { "map" } else { "set" };
        // Writing to a String cannot fail.
        let _ = match self {
            Self::AddTable { family } => writeln!(
                out,
                "add table {family} {TABLE} {{ comment \"hybrid-proxy service rules\" ; }}"
            ),
            Self::DeleteTable { family } => writeln!(out, "delete table {family} {TABLE}"),
            Self::AddChain {
                family,
                name,
                base: None,
            } => writeln!(out, "add chain {family} {TABLE} {name}"),
            Self::AddChain {
                family,
                name,
                base: Some(b),
            } => writeln!(
                out,
                "add chain {family} {TABLE} {name} {{ type {} hook {} priority {} ; policy accept ; }}",
                b.kind, b.hook, b.priority
            ),
            Self::FlushChain { family, name } => {
                writeln!(out, "flush chain {family} {TABLE} {name}")
            }
            Self::DeleteChain { family, name } => {
                writeln!(out, "delete chain {family} {TABLE} {name}")
            }
            Self::AddRule {
                family,
                chain,
                rule,
            } => writeln!(out, "add rule {family} {TABLE} {chain} {rule}"),
            Self::AddSet {
                family,
                name,
                map,
                spec,
            } => {
                writeln!(
                    out,
                    "add {} {family} {TABLE} {name} {{ {spec} }}",
                    set_kind(*map)
                )
            }
            Self::FlushSet { family, name, map } => {
                writeln!(out, "flush {} {family} {TABLE} {name}", set_kind(*map))
            }
            Self::DeleteSet { family, name, map } => {
                writeln!(out, "delete {} {family} {TABLE} {name}", set_kind(*map))
            }
            Self::AddElements {
                family,
                set,
                elements,
            }
            | Self::DeleteElements {
                family,
                set,
                elements,
            } => {
                let verb = if matches!(self, Self::AddElements { .. }) {
                    "add"
                } else {
                    "delete"
                };
                for chunk in elements.chunks(ELEMENTS_PER_LINE) {
                    let _ = write!(out, "{verb} element {family} {TABLE} {set} {{ ");
                    for (i, e) in chunk.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        out.push_str(e);
                    }
                    out.push_str(" }\n");
                }
                Ok(())
            }
        };
    }
}

/// The commands of one sync, applied atomically by `nft -f`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    pub commands: Vec<Command>,
}

impl Transaction {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, command: Command) {
        self.commands.push(command);
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The `nft -f` input.
    pub fn to_nft(&self) -> String {
        let mut out = String::with_capacity(self.commands.len() * 64);
        for c in &self.commands {
            c.write(&mut out);
        }
        out
    }

    /// Number of elements added and deleted.
    pub fn element_counts(&self) -> (usize, usize) {
        self.commands.iter().fold((0, 0), |(a, d), c| match c {
            Command::AddElements { elements, .. } => (a + elements.len(), d),
            Command::DeleteElements { elements, .. } => (a, d + elements.len()),
            _ => (a, d),
        })
    }
}

impl fmt::Display for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nft())
    }
}
