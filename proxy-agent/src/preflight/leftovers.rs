//! kube-proxy's leftovers on a node, and removing them on request.
//!
//! kube-proxy leaves its rules behind when its DaemonSet is deleted: `KUBE-*` chains in the
//! iptables `nat`, `filter` and `mangle` tables (iptables and ipvs modes), the nftables tables
//! `ip kube-proxy` and `ip6 kube-proxy` (nftables mode), and `kube-ipvs0` with IPVS virtual
//! servers (ipvs mode). Stale, they keep steering new connections to old endpoints, because
//! kube-proxy's NAT chains sit at the same hook and priority as ours and were registered
//! first.
//!
//! Finding them and writing the commands that remove them is pure (parsing `*-save` and
//! `nft list tables` output, producing an `iptables-restore --noflush` script), so it is
//! unit-tested on literal dumps; [`remove`] runs the tools. Nothing here runs unless asked:
//! plain `proxy-agent cleanup` never touches kube-proxy's objects.
//!
//! Not everything called `KUBE-*` is kube-proxy's: the kubelet owns `KUBE-FIREWALL` in the
//! filter table (it drops martian packets to 127.0.0.0/8), `KUBE-KUBELET-CANARY`, and, on
//! kubelets before 1.28, `KUBE-MARK-DROP`. Those are left alone.

use std::{
    fmt,
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use serde::Serialize;
use thiserror::Error;

use crate::model::IpFamily;

/// The iptables tables kube-proxy writes to.
pub const TABLES: [&str; 3] = ["nat", "filter", "mangle"];

/// kube-proxy's nftables tables (`family name`).
pub const NFT_TABLES: [&str; 2] = ["ip kube-proxy", "ip6 kube-proxy"];

/// The dummy interface of kube-proxy's ipvs mode.
pub const IPVS_INTERFACE: &str = "kube-ipvs0";

/// Whether a `KUBE-*` chain of `table` is kube-proxy's (and not the kubelet's).
pub fn is_kube_proxy_chain(table: &str, chain: &str) -> bool {
    chain.starts_with("KUBE-")
        && !(table == "filter" && chain == "KUBE-FIREWALL")
        && chain != "KUBE-KUBELET-CANARY"
        && chain != "KUBE-MARK-DROP"
}

/// Which iptables binaries: a node can hold rules in both backends (a kube-proxy image picks
/// the one with more rules), so both are checked when both are installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum IptablesVariant {
    /// `iptables-nft-save` and friends: rules in `nf_tables` tables `ip nat`, `ip filter`, ...
    Nft,
    /// `iptables-legacy-save`: the `x_tables` backend.
    Legacy,
    /// Plain `iptables-save`, on systems without the suffixed names.
    Default,
}

impl IptablesVariant {
    fn suffix(self) -> &'static str {
        match self {
            Self::Nft => "-nft",
            Self::Legacy => "-legacy",
            Self::Default => "",
        }
    }

    fn program(self, family: IpFamily, tool: &str) -> String {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        format!("{base}{}{tool}", self.suffix())
    }

    /// `iptables-nft-save`, `ip6tables-legacy-save`, `iptables-save`, ...
    pub fn save_program(self, family: IpFamily) -> String {
        self.program(family, "-save")
    }

    pub fn restore_program(self, family: IpFamily) -> String {
        self.program(family, "-restore")
    }

    /// `iptables-nft`, `ip6tables-legacy`, ... for messages.
    pub fn label(self, family: IpFamily) -> String {
        self.program(family, "")
    }
}

/// One rule of a `*-save` dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    /// Everything after `-A <chain> `, as the dump spells it (quotes included).
    pub spec: String,
    /// The chain it jumps or goes to (`-j`/`-g`), if any.
    pub target: Option<String>,
}

/// One table of a dump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    /// User-defined chains, in the dump's order.
    pub chains: Vec<String>,
    /// Built-in chains (`PREROUTING`, `INPUT`, ...), declared with a policy.
    pub builtin: Vec<String>,
    pub rules: Vec<Rule>,
}

/// The words of a rule: whitespace-separated, double quotes grouping, backslash escaping.
fn words(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// Parses `iptables-save` output (any variant, any family).
pub fn parse_save(text: &str) -> Vec<Table> {
    let mut tables: Vec<Table> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix('*') {
            tables.push(Table {
                name: name.trim().to_owned(),
                ..Table::default()
            });
            continue;
        }
        let Some(table) = tables.last_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            // `:KUBE-SERVICES - [0:0]`: a policy of `-` marks a user-defined chain.
            let mut fields = decl.split_whitespace();
            match (fields.next(), fields.next()) {
                (Some(chain), Some("-")) => table.chains.push(chain.to_owned()),
                (Some(chain), Some(_)) => table.builtin.push(chain.to_owned()),
                _ => {}
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            let w = words(spec);
            let target = w
                .iter()
                .position(|x| matches!(x.as_str(), "-j" | "-g" | "--jump" | "--goto"))
                .and_then(|i| w.get(i + 1))
                .cloned();
            table.rules.push(Rule {
                chain: chain.to_owned(),
                spec: spec.to_owned(),
                target,
            });
        }
    }
    tables
}

/// kube-proxy's chains in one table, and the rules elsewhere that lead into them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableLeftovers {
    pub table: String,
    pub chains: Vec<String>,
    /// Rules in chains that stay (built-in or someone else's) jumping into `chains`.
    pub hooks: Vec<Rule>,
    /// The built-in chains among the hooks' chains: through them the leftovers see packets.
    pub hooked_from: Vec<String>,
}

/// kube-proxy's leftovers in one dump (one variant, one family).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IptablesLeftovers {
    pub tables: Vec<TableLeftovers>,
}

impl IptablesLeftovers {
    /// Finds kube-proxy's chains in `nat`, `filter` and `mangle`.
    pub fn find(dump: &[Table]) -> Self {
        let mut tables = Vec::new();
        for table in dump.iter().filter(|t| TABLES.contains(&t.name.as_str())) {
            let ours = |c: &str| is_kube_proxy_chain(&table.name, c);
            let chains: Vec<String> = table.chains.iter().filter(|c| ours(c)).cloned().collect();
            if chains.is_empty() {
                continue;
            }
            let hooks = table
                .rules
                .iter()
                .filter(|r| !ours(&r.chain))
                .filter(|r| {
                    r.target
                        .as_deref()
                        .is_some_and(|t| chains.iter().any(|c| c == t))
                })
                .cloned()
                .collect::<Vec<Rule>>();
            let mut hooked_from: Vec<String> = Vec::new();
            for r in &hooks {
                if table.builtin.contains(&r.chain) && !hooked_from.contains(&r.chain) {
                    hooked_from.push(r.chain.clone());
                }
            }
            tables.push(TableLeftovers {
                table: table.name.clone(),
                chains,
                hooks,
                hooked_from,
            });
        }
        Self { tables }
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Whether any built-in chain still jumps into kube-proxy's chains.
    pub fn is_hooked(&self) -> bool {
        self.tables.iter().any(|t| !t.hooks.is_empty())
    }

    pub fn chain_count(&self) -> usize {
        self.tables.iter().map(|t| t.chains.len()).sum()
    }

    /// Input for `iptables-restore --noflush` that removes everything found: per table,
    /// declaring each kube-proxy chain flushes it (which drops the jumps between them),
    /// `-D` removes each jump into them from the chains that stay, `-X` deletes them. One
    /// `COMMIT` per table, so each table changes all at once or not at all.
    pub fn removal_script(&self) -> String {
        let mut lines = Vec::new();
        for t in &self.tables {
            lines.push(format!("*{}", t.table));
            lines.extend(t.chains.iter().map(|c| format!(":{c} - [0:0]")));
            lines.extend(t.hooks.iter().map(|r| format!("-D {} {}", r.chain, r.spec)));
            lines.extend(t.chains.iter().map(|c| format!("-X {c}")));
            lines.push("COMMIT".to_owned());
        }
        lines.iter().map(|l| l.clone() + "\n").collect()
    }
}

/// At most this many chain names in a summary; a kube-proxy with 1000 Services has 3000.
const NAMES_SHOWN: usize = 4;

impl fmt::Display for IptablesLeftovers {
    /// `nat: 12 chains (KUBE-SERVICES, KUBE-NODEPORTS, ...) hooked from PREROUTING, OUTPUT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.tables.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let shown: Vec<&str> = t
                .chains
                .iter()
                .take(NAMES_SHOWN)
                .map(String::as_str)
                .collect();
            let more = if t.chains.len() > NAMES_SHOWN {
                ", ..."
            } else {
                ""
            };
            let count = t.chains.len();
            let noun = if count == 1 { "chain" } else { "chains" };
            write!(
                f,
                "{}: {count} {noun} ({}{more})",
                t.table,
                shown.join(", ")
            )?;
            if !t.hooked_from.is_empty() {
                write!(f, " hooked from {}", t.hooked_from.join(", "))?;
            }
        }
        Ok(())
    }
}

/// kube-proxy's nftables tables in `nft list tables` output (`ip kube-proxy`, ...).
pub fn kube_proxy_nft_tables(list_tables: &str) -> Vec<String> {
    list_tables
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table "))
        .map(str::trim)
        .filter(|t| NFT_TABLES.contains(t))
        .map(str::to_owned)
        .collect()
}

/// `nft -f` input deleting the given tables in one transaction.
pub fn nft_removal_script(tables: &[String]) -> String {
    tables
        .iter()
        .map(|t| "delete table ".to_owned() + t + "\n")
        .collect()
}

/// Failures while reading or removing leftovers.
#[derive(Debug, Error)]
pub enum LeftoverError {
    #[error("running `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{what} still present after removal: {remaining}")]
    Remaining { what: String, remaining: String },
}

/// Runs a program, feeding `input` on stdin; its stdout when it succeeds.
pub(crate) fn run(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, LeftoverError> {
    let spawn = |source| LeftoverError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A write error means the program exited early; its status and stderr say why.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LeftoverError::Failed {
            program: program.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Whether `name` is an executable file in a `$PATH` directory.
pub fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| {
        Path::new(&dir)
            .join(name)
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The iptables variants installed here: both suffixed sets when present, else plain
/// `iptables-save`; none when iptables is not installed (then there is nothing to clean: a
/// node without iptables cannot hold iptables rules written by a host-installed kube-proxy,
/// and the `nf_tables` tables of iptables-nft would show up to a host `iptables-nft-save`).
pub fn installed_variants() -> Vec<IptablesVariant> {
    let suffixed: Vec<IptablesVariant> = [IptablesVariant::Nft, IptablesVariant::Legacy]
        .into_iter()
        .filter(|v| on_path(&v.save_program(IpFamily::V4)))
        .collect();
    if !suffixed.is_empty() {
        return suffixed;
    }
    if on_path(&IptablesVariant::Default.save_program(IpFamily::V4)) {
        vec![IptablesVariant::Default]
    } else {
        Vec::new()
    }
}

/// Reads one variant's dump of one family.
pub fn save(variant: IptablesVariant, family: IpFamily) -> Result<String, LeftoverError> {
    run(&variant.save_program(family), &[], None)
}

/// What [`remove`] removed, one line per variant/family or table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub lines: Vec<String>,
}

/// Removes kube-proxy's iptables chains (every installed variant, both families), its
/// nftables tables and `kube-ipvs0`. Each table changes in one transaction; afterwards the dumps are read
/// again to confirm that nothing is left.
pub fn remove(nft: &str) -> Result<Removed, LeftoverError> {
    let mut removed = Removed::default();
    for variant in installed_variants() {
        for family in IpFamily::BOTH {
            let save_program = variant.save_program(family);
            if !on_path(&save_program) {
                continue;
            }
            let found = IptablesLeftovers::find(&parse_save(&save(variant, family)?));
            if found.is_empty() {
                continue;
            }
            // `-w`: wait for the xtables lock (legacy) instead of failing; nft ignores it.
            run(
                &variant.restore_program(family),
                &["--noflush", "-w"],
                Some(&found.removal_script()),
            )?;
            let left = IptablesLeftovers::find(&parse_save(&save(variant, family)?));
            if !left.is_empty() {
                return Err(LeftoverError::Remaining {
                    what: variant.label(family),
                    remaining: left.to_string(),
                });
            }
            removed
                .lines
                .push(format!("removed from {}: {found}", variant.label(family)));
        }
    }
    if crate::bpf::netlink::if_index(IPVS_INTERFACE).is_some() {
        // kube-proxy's ipvs mode holds every ClusterIP on this dummy interface. Its IPVS
        // virtual servers stay (`ipvsadm --clear`); without the addresses they see no traffic
        // that our DNAT has not already taken.
        run("ip", &["link", "delete", IPVS_INTERFACE], None)?;
        removed
            .lines
            .push(format!("deleted interface {IPVS_INTERFACE}"));
    }
    let tables = kube_proxy_nft_tables(&run(nft, &["list", "tables"], None)?);
    if !tables.is_empty() {
        run(nft, &["-f", "-"], Some(&nft_removal_script(&tables)))?;
        for t in &tables {
            removed.lines.push(format!("removed nftables table {t}"));
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kube-proxy's iptables mode leaves in `nat` with one ClusterIP Service, plus the
    /// kubelet's canary and a CNI's chain that must stay.
    const NAT: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Mon Jan  1 00:00:00 2024
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SEP-ABC - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XYZ - [0:0]
:cali-nat-outgoing - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment "cali:abc -j KUBE-SERVICES" -j cali-nat-outgoing
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-SEP-ABC -s 10.244.1.5/32 -m comment --comment "default/web" -j KUBE-MARK-MASQ
-A KUBE-SEP-ABC -p tcp -m comment --comment "default/web" -m tcp -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web cluster IP" -m tcp --dport 80 -j KUBE-SVC-XYZ
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-XYZ -m comment --comment "default/web -> 10.244.1.5:8080" -j KUBE-SEP-ABC
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:KUBE-SOMETHING - [0:0]
COMMIT
"#;

    #[test]
    fn a_dump_is_read_per_table_with_quoted_comments_kept_whole() {
        let tables = parse_save(NAT);
        assert_eq!(
            tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["nat", "filter", "raw"]
        );
        let nat = &tables[0];
        assert_eq!(
            nat.builtin,
            ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]
        );
        assert!(!nat.chains.contains(&"PREROUTING".to_owned()));
        let calico = nat
            .rules
            .iter()
            .find(|r| r.spec.contains("cali:abc"))
            .unwrap();
        assert_eq!(calico.target.as_deref(), Some("cali-nat-outgoing"));
        assert_eq!(
            words(r#"-m comment --comment "a \"b\" c" -j X"#),
            ["-m", "comment", "--comment", r#"a "b" c"#, "-j", "X"]
        );
    }

    #[test]
    fn kube_proxy_chains_are_found_and_the_kubelets_are_not() {
        let found = IptablesLeftovers::find(&parse_save(NAT));
        let nat = &found.tables[0];
        assert_eq!(nat.table, "nat");
        assert_eq!(
            nat.chains,
            [
                "KUBE-MARK-MASQ",
                "KUBE-NODEPORTS",
                "KUBE-POSTROUTING",
                "KUBE-PROXY-CANARY",
                "KUBE-SEP-ABC",
                "KUBE-SERVICES",
                "KUBE-SVC-XYZ"
            ]
        );
        // The jumps from built-in chains, and not Calico's rule whose comment mentions one.
        assert_eq!(
            nat.hooks
                .iter()
                .map(|r| r.chain.as_str())
                .collect::<Vec<_>>(),
            ["PREROUTING", "OUTPUT", "POSTROUTING"]
        );
        assert_eq!(nat.hooked_from, ["PREROUTING", "OUTPUT", "POSTROUTING"]);
        // filter: KUBE-FIREWALL is the kubelet's.
        assert_eq!(found.tables[1].chains, ["KUBE-FORWARD"]);
        // raw is not a table kube-proxy uses.
        assert_eq!(found.tables.len(), 2);
        assert!(found.is_hooked());
        assert_eq!(found.chain_count(), 8);
        assert_eq!(
            found.to_string(),
            "nat: 7 chains (KUBE-MARK-MASQ, KUBE-NODEPORTS, KUBE-POSTROUTING, KUBE-PROXY-CANARY, \
             ...) hooked from PREROUTING, OUTPUT, POSTROUTING; filter: 1 chain (KUBE-FORWARD) \
             hooked from FORWARD"
        );
    }

    #[test]
    fn the_removal_script_flushes_unhooks_then_deletes_per_table() {
        let found = IptablesLeftovers::find(&parse_save(NAT));
        let script = found.removal_script();
        let expected_filter = "*filter\n:KUBE-FORWARD - [0:0]\n-D FORWARD -m comment --comment \
                               \"kubernetes forwarding rules\" -j KUBE-FORWARD\n-X KUBE-FORWARD\nCOMMIT\n";
        assert!(script.ends_with(expected_filter), "{script}");
        let nat: Vec<&str> = script.lines().take_while(|l| *l != "COMMIT").collect();
        assert_eq!(nat[0], "*nat");
        let first_delete = nat.iter().position(|l| l.starts_with("-D")).unwrap();
        let first_x = nat.iter().position(|l| l.starts_with("-X")).unwrap();
        let last_flush = nat.iter().rposition(|l| l.starts_with(':')).unwrap();
        assert!(
            last_flush < first_delete && first_delete < first_x,
            "{script}"
        );
        assert!(nat.contains(
            &"-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ));
        assert!(!script.contains("cali"), "{script}");
        assert!(!script.contains("KUBE-KUBELET-CANARY"), "{script}");
        assert!(!script.contains("KUBE-FIREWALL"), "{script}");
    }

    #[test]
    fn a_clean_node_has_no_leftovers() {
        let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n\
                    *filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n";
        let found = IptablesLeftovers::find(&parse_save(dump));
        assert!(found.is_empty());
        assert_eq!(found.removal_script(), "");
        assert!(IptablesLeftovers::find(&parse_save("")).is_empty());
    }

    #[test]
    fn kube_proxy_nftables_tables_are_found_by_family_and_name() {
        let list = "table ip filter\ntable ip kube-proxy\ntable ip6 kube-proxy\ntable inet kube-proxy-other\ntable ip hybrid-proxy\n";
        let tables = kube_proxy_nft_tables(list);
        assert_eq!(tables, ["ip kube-proxy", "ip6 kube-proxy"]);
        assert_eq!(
            nft_removal_script(&tables),
            "delete table ip kube-proxy\ndelete table ip6 kube-proxy\n"
        );
        assert!(kube_proxy_nft_tables("table ip hybrid-proxy\n").is_empty());
    }

    #[test]
    fn variants_name_their_programs() {
        assert_eq!(
            IptablesVariant::Nft.save_program(IpFamily::V4),
            "iptables-nft-save"
        );
        assert_eq!(
            IptablesVariant::Legacy.restore_program(IpFamily::V6),
            "ip6tables-legacy-restore"
        );
        assert_eq!(
            IptablesVariant::Default.save_program(IpFamily::V6),
            "ip6tables-save"
        );
        assert_eq!(IptablesVariant::Nft.label(IpFamily::V6), "ip6tables-nft");
    }
}
