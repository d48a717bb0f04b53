//! Running transactions: the trait, and the `nft` command behind it.

use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Command, Stdio},
};

use super::{Family, NftError, TABLE, transaction::Transaction};

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
}

/// The `nft` command.
#[derive(Clone, Debug)]
pub struct NftCli {
    pub program: String,
}

impl Default for NftCli {
    fn default() -> Self {
        Self {
            program: "nft".into(),
        }
    }
}

impl NftCli {
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
        let args: &[&str] = if check {
            &["--check", "-f", "-"]
        } else {
            &["-f", "-"]
        };
        let out = self.run(args, Some(&tx.to_nft()))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr: Vec<&str> = stderr.lines().take(12).collect();
        Err(NftError::Rejected {
            status: out.status.to_string(),
            stderr: stderr.join("\n"),
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
        // Terse: chains and set declarations without elements, cheap at any size.
        let out = self.run(&["-t", "list", "table", family.ip(), TABLE], None)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(NftError::List { family, stderr });
        }
        Ok(Some(parse_listing(&String::from_utf8_lossy(&out.stdout))))
    }
}

/// Reads object names from `nft -t list table` output.
pub(super) fn parse_listing(text: &str) -> TableObjects {
    let mut objects = TableObjects::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(kind), Some(name), Some("{")) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        match kind {
            "chain" => {
                objects.chains.insert(name.to_owned());
            }
            "set" => {
                objects.sets.insert((name.to_owned(), false));
            }
            "map" => {
                objects.sets.insert((name.to_owned(), true));
            }
            _ => {}
        }
    }
    objects
}
