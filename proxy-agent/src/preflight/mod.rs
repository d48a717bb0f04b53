//! `proxy-agent preflight`: can this node run the agent, and is anything in the way?
//!
//! Probing and judging are separate. [`facts::gather`] reads the node (kernel release,
//! `nft --version`, an `nft --check` of a sample ruleset, bpffs mounts, interfaces,
//! `iptables-save`, `nft list tables`, IPVS) and changes nothing; [`checks::evaluate`] is a
//! pure function from those [`Facts`] and the configuration to a [`Report`], so every verdict
//! is unit-tested on literal facts.
//!
//! kube-proxy's leftovers are found, and removed on request (`cleanup --kube-proxy`), by
//! [`leftovers`].

pub mod checks;
pub mod facts;
pub mod leftovers;

use std::fmt;

pub use checks::evaluate;
pub use facts::{Facts, gather};
use serde::Serialize;

use crate::config::Config;

/// The verdict of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// The agent runs, but something is degraded (e.g. no fast path) or worth a look.
    Warn,
    /// The agent would not work, or would fight another service proxy.
    Fail,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short, stable name (`kernel`, `nft`, `kube-proxy-iptables`, ...).
    pub name: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it; empty when it passed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: fix.into(),
        }
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

/// Every check, in a fixed order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// The worst verdict (`Pass` for an empty report).
    pub fn status(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Pass)
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// The report as one JSON document: `{"status": ..., "checks": [...]}`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Doc<'a> {
            status: Status,
            checks: &'a [Check],
        }
        serde_json::to_string_pretty(&Doc {
            status: self.status(),
            checks: &self.checks,
        })
        .expect("a report always serialises")
    }
}

/// A table: one line per check, its fix indented below it.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let status = c.status.name().to_uppercase();
            writeln!(f, "{status:<4}  {:<width$}  {}", c.name, c.detail)?;
            if !c.fix.is_empty() {
                writeln!(f, "{:<4}  {:<width$}  fix: {}", "", "", c.fix)?;
            }
        }
        // Not "N passed, N failed": CI reads that shape as a test runner's summary.
        write!(
            f,
            "preflight: {}: {} pass, {} warn, {} fail",
            self.status().name(),
            self.count(Status::Pass),
            self.count(Status::Warn),
            self.count(Status::Fail)
        )
    }
}

/// Probes this node and judges it against `config`.
pub fn run(config: &Config) -> Report {
    evaluate(&gather(), config)
}
