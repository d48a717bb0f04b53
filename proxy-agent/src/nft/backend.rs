//! Running transactions: the trait, and the `nft` command behind it.

use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Command, Stdio},
    sync::{Arc, Mutex, PoisonError},
};

use super::{Family, NftError, TABLE, libnft::Libnftables, transaction::Transaction};

/// Names of the chains and sets in one of our tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableObjects {
    pub chains: BTreeSet<String>,
    /// `(name, is_map)`.
    pub sets: BTreeSet<(String, bool)>,
}

/// Where transactions go. Implementations apply a transaction atomically: all of it or,
/// on error, nothing.
pub trait NftBackend {
    fn apply(&mut self, tx: &Transaction) -> Result<(), NftError>;
    /// Validates without changing anything (`nft --check`).
    fn check(&mut self, tx: &Transaction) -> Result<(), NftError>;
    /// The objects in our table of a family; `None` when the table does not exist.
    fn list_table(&mut self, family: Family) -> Result<Option<TableObjects>, NftError>;
    /// Everything in our table of a family, rules counted and elements listed (slow at
    /// scale: for `verify`, not for syncs); `None` when the table does not exist.
    fn table_state(
        &mut self,
        family: Family,
    ) -> Result<Option<super::verify::TableState>, NftError>;
    /// The generation element of our `ip` table; `None` when there is none.
    fn read_generation(&mut self) -> Result<Option<u32>, NftError>;
}

/// The `nft` command; with [`NftCli::in_process`], transactions go through libnftables in
/// this process instead (listings still run `nft`).
#[derive(Clone, Debug)]
pub struct NftCli {
    pub program: String,
    in_process: Option<Arc<Mutex<InProcess>>>,
}

/// The in-process library: opened at the first transaction, in that thread's network
/// namespace.
#[derive(Debug)]
enum InProcess {
    NotYet,
    Open(Libnftables),
    /// It could not be opened; the `nft` program serves.
    Unavailable,
}

impl Default for NftCli {
    fn default() -> Self {
        Self {
            program: "nft".into(),
            in_process: None,
        }
    }
}

/// The first lines of nft's error messages, for [`NftError::Rejected`].
fn first_lines(text: &str) -> String {
    text.lines().take(12).collect::<Vec<_>>().join("\n")
}

impl NftCli {
    /// Transactions through libnftables in this process, which keeps one netlink socket
    /// instead of starting `nft` (and waiting for its socket to close) for each; falls back
    /// to the `nft` program, saying so, when the library cannot be opened. For long-lived
    /// callers (the sync loop) that stay in one network namespace.
    pub fn in_process() -> Self {
        Self {
            in_process: Some(Arc::new(Mutex::new(InProcess::NotYet))),
            ..Self::default()
        }
    }

    /// Runs `tx` through the library when this is an in-process backend and the library
    /// opens; `None` when the `nft` program should run it.
    fn run_in_process(&self, tx: &Transaction, check: bool) -> Option<Result<(), NftError>> {
        let mut state = self
            .in_process
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if matches!(*state, InProcess::NotYet) {
            *state = match Libnftables::open() {
                Ok(lib) => {
                    tracing::debug!("nftables transactions go through libnftables in-process");
                    InProcess::Open(lib)
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "libnftables cannot be opened; running `nft` for each transaction"
                    );
                    InProcess::Unavailable
                }
            };
        }
        let InProcess::Open(lib) = &mut *state else {
            return None;
        };
        Some(
            lib.run(&tx.to_nft(), check)
                .map(drop)
                .map_err(|errors| NftError::Rejected {
                    status: "libnftables".to_owned(),
                    stderr: first_lines(&errors),
                }),
        )
    }

    fn run(&self, args: &[&str], input: Option<&str>) -> Result<std::process::Output, NftError> {
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    NftError::NotFound {
                        program: self.program.clone(),
                    }
                } else {
                    NftError::Spawn {
                        program: self.program.clone(),
                        source,
                    }
                }
            })?;
        if let Some(text) = input {
            let mut stdin = child.stdin.take().expect("stdin is piped");
            // A write error means nft exited early; its status and stderr say why.
            let _ = stdin.write_all(text.as_bytes());
        }
        child.wait_with_output().map_err(|source| NftError::Spawn {
            program: self.program.clone(),
            source,
        })
    }

    fn run_tx(&self, tx: &Transaction, check: bool) -> Result<(), NftError> {
        if let Some(result) = self.run_in_process(tx, check) {
            return result;
        }
        let args: &[&str] = if check {
            &["--check", "-f", "-"]
        } else {
            &["-f", "-"]
        };
        let out = self.run(args, Some(&tx.to_nft()))?;
        if out.status.success() {
            return Ok(());
        }
        Err(NftError::Rejected {
            status: out.status.to_string(),
            stderr: first_lines(&String::from_utf8_lossy(&out.stderr)),
        })
    }
}

impl NftBackend for NftCli {
    fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        self.run_tx(tx, false)
    }

    fn check(&mut self, tx: &Transaction) -> Result<(), NftError> {
        self.run_tx(tx, true)
    }

    fn list_table(&mut self, family: Family) -> Result<Option<TableObjects>, NftError> {
        // `list table`, even terse, makes nft fetch every element of every map (0.4 s at
        // 10,000 Services); listing the family's chains, sets and maps separately fetches
        // declarations only (about 10 ms each). nft 1.0.6 lists maps per family only.
        let mut objects = TableObjects::default();
        let chains = self.run(&["list", "chains", family.ip()], None)?;
        if !chains.status.success() {
            return Err(NftError::List {
                family,
                stderr: String::from_utf8_lossy(&chains.stderr).to_string(),
            });
        }
        let listed = parse_listing(&String::from_utf8_lossy(&chains.stdout));
        let Some(ours) = listed.get(TABLE) else {
            return Ok(None);
        };
        objects.chains.clone_from(&ours.chains);
        for kind in ["sets", "maps"] {
            let out = self.run(&["-t", "list", kind, family.ip()], None)?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr).to_string();
                return Err(NftError::List { family, stderr });
            }
            if let Some(t) = parse_listing(&String::from_utf8_lossy(&out.stdout)).get(TABLE) {
                objects.sets.extend(t.sets.iter().cloned());
            }
        }
        Ok(Some(objects))
    }

    fn table_state(
        &mut self,
        family: Family,
    ) -> Result<Option<super::verify::TableState>, NftError> {
        let text = self.listing(family, &["list", "table", family.ip(), TABLE])?;
        Ok(text.map(|t| super::verify::parse_table(&t)))
    }

    fn read_generation(&mut self) -> Result<Option<u32>, NftError> {
        let set = super::render::SetName::Generation.name();
        let Some(text) = self.listing(Family::Ip, &["list", "set", "ip", TABLE, set])? else {
            return Ok(None);
        };
        Ok(super::verify::parse_table(&text)
            .sets
            .get(set)
            .and_then(|s| s.elements.iter().next().and_then(|e| parse_number(e))))
    }
}

/// A number as nft prints it (`0x0000303a` for marks, decimal otherwise).
pub(super) fn parse_number(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

impl NftCli {
    /// Runs `nft <args>`; its stdout, or `None` when our table does not exist.
    fn listing(&self, family: Family, args: &[&str]) -> Result<Option<String>, NftError> {
        let out = self.run(args, None)?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        Err(NftError::List { family, stderr })
    }
}

/// Reads object names, per table, from `nft list ...` output.
pub(super) fn parse_listing(text: &str) -> std::collections::BTreeMap<String, TableObjects> {
    let mut tables: std::collections::BTreeMap<String, TableObjects> =
        std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(kind), Some(second)) = (words.next(), words.next()) else {
            continue;
        };
        if kind == "table" {
            // `table ip hybrid-proxy {`
            current = words.next().map(str::to_owned);
            if let Some(name) = &current {
                tables.entry(name.clone()).or_default();
            }
            continue;
        }
        let (Some(table), Some("{")) = (&current, words.next()) else {
            continue;
        };
        let objects = tables.entry(table.clone()).or_default();
        match kind {
            "chain" => {
                objects.chains.insert(second.to_owned());
            }
            "set" => {
                objects.sets.insert((second.to_owned(), false));
            }
            "map" => {
                objects.sets.insert((second.to_owned(), true));
            }
            _ => {}
        }
    }
    tables
}

#[cfg(test)]
mod tests {
    #[test]
    fn listings_are_read_per_table() {
        let text = "table ip other {\n\tchain x {\n\t}\n}\ntable ip hybrid-proxy {\n\tchain services {\n\t\tjump y\n\t}\n\tmap service-ips {\n\t\ttype ipv4_addr : verdict\n\t}\n\tset cluster-ips {\n\t}\n}\n";
        let tables = super::parse_listing(text);
        let ours = &tables["hybrid-proxy"];
        assert_eq!(ours.chains.iter().collect::<Vec<_>>(), ["services"]);
        assert!(ours.sets.contains(&("service-ips".to_owned(), true)));
        assert!(ours.sets.contains(&("cluster-ips".to_owned(), false)));
        assert_eq!(tables["other"].chains.len(), 1);
    }
}
