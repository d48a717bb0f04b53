//! How accelerated pod flows reach the other end: `redirect` (the programs deliver them in
//! both directions, the node's stack never sees them) or `stack` (translated, then the kernel
//! routes them through conntrack and the filter chains).
//!
//! `auto` is `redirect` unless something on the node needs to see forwarded pod traffic: a
//! netfilter policy engine or firewall (its rules would silently stop applying to bypassed
//! flows), or another owner's BPF program on the pod interfaces. The judgement ([`judge`])
//! is pure, over [`Facts`] read by [`Facts::read`]; the agent re-reads them periodically.
//!
//! Also here: the local endpoints (`HP_LOCAL_EPS`), read from the node's routes and
//! neighbours ([`local_endpoints`]), which tell the programs where a pod of this node is.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    process::Command,
};

use proxy_common::LocalEndpoint;
use serde_json::Value;

use super::netlink::{FdbEntry, Neighbour, Route};
/// `acceleration.forwarding`, as the configuration parses it.
pub use crate::config::ForwardingMode;
/// The per-Service override (`hybrid-proxy.io/forwarding`), as the plan carries it.
pub use crate::model::ForwardingAnnotation;

/// A base chain of another owner, as `nft -j list ruleset` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignChain {
    pub family: String,
    pub table: String,
    pub name: String,
    /// The hook of a base chain (`None`: a regular chain).
    pub hook: Option<String>,
    pub policy: Option<String>,
    pub rules: usize,
}

/// What the node has that bears on bypassing its stack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Chains of every nftables table but ours (iptables-nft rules included).
    pub chains: Vec<ForeignChain>,
    /// Table names of every nftables table but ours, `family name`.
    pub tables: Vec<String>,
    /// Chain names in `iptables-legacy-save` output, when that variant is in use.
    pub legacy_chains: Vec<String>,
    /// `(interface, program name)` of BPF programs on pod interfaces that are not ours.
    pub foreign_programs: Vec<(String, String)>,
    /// A probe that could not run (then `auto` stays on the stack: it cannot tell).
    pub unreadable: Option<String>,
}

/// Chain and table name prefixes of netfilter-based network policy engines and firewalls.
const POLICY_OWNERS: [(&str, &str); 7] = [
    ("cali-", "Calico"),
    ("calico", "Calico"),
    ("KUBE-ROUTER-", "kube-router"),
    ("WEAVE-NPC", "Weave Net"),
    ("ANTREA-", "Antrea"),
    ("antrea", "Antrea"),
    ("firewalld", "firewalld"),
];

/// Hooks whose rules see forwarded pod traffic.
const FORWARD_HOOKS: [&str; 3] = ["forward", "prerouting", "postrouting"];

/// Why `auto` forwarding stays on the stack; `None`: nothing needs the stack.
pub fn judge(facts: &Facts) -> Option<String> {
    if let Some(why) = &facts.unreadable {
        return Some(format!("the node's rules could not be read ({why})"));
    }
    let owner = |name: &str| {
        POLICY_OWNERS
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map(|(_, owner)| *owner)
    };
    for t in &facts.tables {
        let name = t.split_once(' ').map_or(t.as_str(), |(_, n)| n);
        if let Some(o) = owner(name) {
            return Some(format!("{o} is on the node (nftables table {t})"));
        }
    }
    for c in &facts.chains {
        if let Some(o) = owner(&c.name) {
            return Some(format!(
                "{o} is on the node (chain {} in table {} {})",
                c.name, c.family, c.table
            ));
        }
    }
    for c in &facts.legacy_chains {
        if let Some(o) = owner(c) {
            return Some(format!("{o} is on the node (iptables-legacy chain {c})"));
        }
    }
    for c in &facts.chains {
        let Some(hook) = c.hook.as_deref() else {
            continue;
        };
        if hook == "forward" && c.policy.as_deref().is_some_and(|p| p != "accept") {
            return Some(format!(
                "chain {} in table {} {} drops forwarded traffic by default (policy {})",
                c.name,
                c.family,
                c.table,
                c.policy.as_deref().unwrap_or_default()
            ));
        }
        if FORWARD_HOOKS.contains(&hook) && c.rules > 0 {
            return Some(format!(
                "chain {} in table {} {} has {} rule(s) on the {hook} hook",
                c.name, c.family, c.table, c.rules
            ));
        }
    }
    if let Some((iface, prog)) = facts.foreign_programs.first() {
        return Some(format!(
            "another BPF program ({prog}) is attached to pod interface {iface}"
        ));
    }
    None
}

/// Our own tables, which never count.
fn ours(table: &str) -> bool {
    table == "hybrid-proxy" || table.starts_with("hybrid-proxy-")
}

/// Parses `nft -j list ruleset` into foreign tables and chains (with their rule counts).
pub fn parse_ruleset(json: &str) -> Result<(Vec<String>, Vec<ForeignChain>), String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("nft -j: {e}"))?;
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("nft -j: no \"nftables\" array")?;
    let s = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut tables = Vec::new();
    let mut chains: Vec<ForeignChain> = Vec::new();
    let mut rules: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for item in items {
        if let Some(t) = item.get("table") {
            let (Some(family), Some(name)) = (s(t, "family"), s(t, "name")) else {
                continue;
            };
            if !ours(&name) {
                tables.push(format!("{family} {name}"));
            }
        } else if let Some(c) = item.get("chain") {
            let (Some(family), Some(table), Some(name)) =
                (s(c, "family"), s(c, "table"), s(c, "name"))
            else {
                continue;
            };
            if !ours(&table) {
                chains.push(ForeignChain {
                    family,
                    table,
                    name,
                    hook: s(c, "hook"),
                    policy: s(c, "policy"),
                    rules: 0,
                });
            }
        } else if let Some(r) = item.get("rule")
            && let (Some(family), Some(table), Some(chain)) =
                (s(r, "family"), s(r, "table"), s(r, "chain"))
        {
            *rules.entry((family, table, chain)).or_default() += 1;
        }
    }
    for c in &mut chains {
        c.rules = rules
            .get(&(c.family.clone(), c.table.clone(), c.name.clone()))
            .copied()
            .unwrap_or(0);
    }
    Ok((tables, chains))
}

/// Chain names declared in `iptables-save` output (`:NAME POLICY [..]`).
pub fn parse_save_chains(dump: &str) -> Vec<String> {
    dump.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

impl Facts {
    /// Reads the calling thread's network namespace: its nftables ruleset, iptables-legacy
    /// chains where that variant is installed, and the TCX programs of `pod_interfaces`.
    pub fn read(pod_interfaces: &[String]) -> Self {
        use crate::{
            model::IpFamily,
            preflight::leftovers::{self, IptablesVariant},
        };
        let mut facts = Self::default();
        let nft = crate::nft::NftCli::default().program;
        match leftovers::run(&nft, &["-j", "list", "ruleset"], None) {
            Ok(json) => match parse_ruleset(&json) {
                Ok((tables, chains)) => {
                    facts.tables = tables;
                    facts.chains = chains;
                }
                Err(e) => facts.unreadable = Some(e),
            },
            Err(e) => facts.unreadable = Some(e.to_string()),
        }
        // Legacy iptables keeps its rules outside nftables; absent binaries are no rules.
        for family in IpFamily::BOTH {
            if leftovers::on_path(&IptablesVariant::Legacy.save_program(family))
                && let Ok(dump) = leftovers::save(IptablesVariant::Legacy, family)
            {
                facts.legacy_chains.extend(parse_save_chains(&dump));
            }
        }
        facts.foreign_programs = foreign_programs(pod_interfaces);
        facts
    }
}

/// TC programs on `interfaces` that are not ours (`hp_*`): on the TCX hooks, and filters on
/// a `clsact` qdisc (as `tc filter show` lists them; without `tc`, those are not seen). `tc`
/// runs only for the interfaces that have such a qdisc (one netlink dump finds them), not
/// for every pod interface at every check.
fn foreign_programs(interfaces: &[String]) -> Vec<(String, String)> {
    use aya::programs::{SchedClassifier, TcAttachType};
    // Without the dump (it failed), every interface is asked.
    let with_qdisc = super::netlink::clsact_interfaces().ok();
    let mut out = Vec::new();
    for iface in interfaces {
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            let Ok((_, programs)) = SchedClassifier::query_tcx(iface, hook) else {
                continue;
            };
            for p in programs {
                let name = p.name_as_str().unwrap_or("?").to_owned();
                if !name.starts_with("hp_") {
                    out.push((iface.clone(), name));
                }
            }
        }
        if let Some(with) = &with_qdisc
            && !super::netlink::if_index(iface).is_some_and(|i| with.contains(&i))
        {
            continue;
        }
        for hook in ["ingress", "egress"] {
            let Ok(listing) = Command::new("tc")
                .args(["filter", "show", "dev", iface, hook])
                .output()
            else {
                continue;
            };
            out.extend(
                foreign_filters(&String::from_utf8_lossy(&listing.stdout))
                    .into_iter()
                    .map(|f| (iface.clone(), format!("tc {hook} filter {f}"))),
            );
        }
    }
    out
}

/// The filters of a `tc filter show` listing that are not ours, as their kind and handle.
pub fn foreign_filters(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| l.starts_with("filter ") && l.contains(" handle ") && !l.contains("hp_"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let kind = words
                .iter()
                .position(|w| *w == "pref")
                .and_then(|i| words.get(i + 2))
                .copied()
                .unwrap_or("?");
            let handle = words
                .iter()
                .position(|w| *w == "handle")
                .and_then(|i| words.get(i + 1))
                .copied()
                .unwrap_or("?");
            format!("{kind} {handle}")
        })
        .collect()
}

/// Where the node's forwarding stands: what is configured and what is in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarding {
    pub configured: ForwardingMode,
    /// New accelerated pod flows are redirected (Services without an annotation).
    pub redirect: bool,
    /// Why `auto` is on the stack.
    pub reason: Option<String>,
}

impl Forwarding {
    /// The state for `configured`, with `auto` judged from `facts`.
    pub fn decide(configured: ForwardingMode, facts: impl FnOnce() -> Facts) -> Self {
        match configured {
            ForwardingMode::Redirect => Self {
                configured,
                redirect: true,
                reason: None,
            },
            ForwardingMode::Stack => Self {
                configured,
                redirect: false,
                reason: None,
            },
            ForwardingMode::Auto => {
                let reason = judge(&facts());
                Self {
                    configured,
                    redirect: reason.is_none(),
                    reason,
                }
            }
        }
    }

    /// `stack`, configured so (tests, benchmarks).
    pub fn stack() -> Self {
        Self::decide(ForwardingMode::Stack, Facts::default)
    }

    /// `redirect`, configured so.
    pub fn redirect() -> Self {
        Self::decide(ForwardingMode::Redirect, Facts::default)
    }

    /// What `HP_META` records (`status` and `verify` read it without the agent).
    pub fn recorded(value: u32) -> Self {
        Self {
            configured: ForwardingMode::Auto,
            redirect: value == u32::from(proxy_common::forwarding::REDIRECT),
            reason: None,
        }
    }

    /// `redirect` or `stack`, as in force.
    pub fn effective(&self) -> &'static str {
        if self.redirect { "redirect" } else { "stack" }
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.effective(), self.configured)?;
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        Ok(())
    }
}

/// Whether a service port's new pod flows are redirected: its annotation, else the node's.
pub fn port_redirects(annotation: ForwardingAnnotation, node: &Forwarding) -> bool {
    match annotation {
        ForwardingAnnotation::Redirect => true,
        ForwardingAnnotation::Stack => false,
        ForwardingAnnotation::Unset => node.redirect,
    }
}

/// The pods of this node as the programs deliver to them:
///
/// - every host route (`/32`) through one of `pod_interfaces` (Calico-style routed pods),
///   with the interface's MAC and the pod's from the neighbour table (zero while unresolved;
///   the programs then keep the destination MAC);
/// - every neighbour on a bridge whose MAC the bridge learned on one of `pod_interfaces`
///   (pods on a bridge, as Flannel's `cni0`), with the bridge's MAC as the source. A pod the
///   node has not exchanged a packet with yet is not known: its flows take the stack until
///   it is (the next refresh).
pub fn local_endpoints(
    routes: &[Route],
    macs: &[(u32, [u8; 6])],
    neighbours: &[Neighbour],
    fdb: &[FdbEntry],
    pod_interfaces: &BTreeSet<u32>,
) -> BTreeMap<u32, LocalEndpoint> {
    let mac_of = |i: u32| macs.iter().find(|(x, _)| *x == i).map(|(_, m)| *m);
    let mut out = BTreeMap::new();
    for r in routes {
        if r.prefix_len != 32 || !pod_interfaces.contains(&r.oif) {
            continue;
        }
        let Some(host_mac) = mac_of(r.oif) else {
            continue;
        };
        let pod_mac = neighbours
            .iter()
            .find(|n| n.if_index == r.oif && n.addr == r.dst)
            .map_or([0; 6], |n| n.mac);
        out.insert(
            addr_key(r.dst),
            LocalEndpoint {
                if_index: r.oif,
                pod_mac,
                host_mac,
            },
        );
    }
    for n in neighbours {
        let Some(port) = fdb
            .iter()
            .find(|e| e.bridge == n.if_index && e.mac == n.mac && pod_interfaces.contains(&e.port))
        else {
            continue;
        };
        let Some(host_mac) = mac_of(n.if_index) else {
            continue;
        };
        out.entry(addr_key(n.addr)).or_insert(LocalEndpoint {
            if_index: port.port,
            pod_mac: n.mac,
            host_mac,
        });
    }
    out
}

/// The map key of an IPv4 address (network order, as the programs read it).
pub fn addr_key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(
        table: &str,
        name: &str,
        hook: Option<&str>,
        policy: &str,
        rules: usize,
    ) -> ForeignChain {
        ForeignChain {
            family: "ip".into(),
            table: table.into(),
            name: name.into(),
            hook: hook.map(str::to_owned),
            policy: Some(policy.into()),
            rules,
        }
    }

    #[test]
    fn a_clean_node_redirects() {
        let facts = Facts {
            tables: vec![],
            chains: vec![chain("filter", "FORWARD", Some("forward"), "accept", 0)],
            ..Facts::default()
        };
        assert_eq!(judge(&facts), None);
        let f = Forwarding::decide(ForwardingMode::Auto, || facts);
        assert!(f.redirect);
        assert_eq!(f.to_string(), "redirect (auto)");
    }

    #[test]
    fn policy_engines_firewalls_and_forward_rules_keep_auto_on_the_stack() {
        let cases = [
            (
                Facts {
                    chains: vec![chain("filter", "cali-FORWARD", None, "", 3)],
                    ..Facts::default()
                },
                "Calico",
            ),
            (
                Facts {
                    tables: vec!["inet firewalld".into()],
                    ..Facts::default()
                },
                "firewalld",
            ),
            (
                Facts {
                    legacy_chains: vec!["KUBE-ROUTER-FORWARD".into()],
                    ..Facts::default()
                },
                "kube-router",
            ),
            (
                Facts {
                    chains: vec![chain("filter", "FORWARD", Some("forward"), "drop", 0)],
                    ..Facts::default()
                },
                "policy drop",
            ),
            (
                Facts {
                    chains: vec![chain(
                        "nat",
                        "POSTROUTING",
                        Some("postrouting"),
                        "accept",
                        1,
                    )],
                    ..Facts::default()
                },
                "postrouting hook",
            ),
            (
                Facts {
                    foreign_programs: vec![("cali1".into(), "cil_from_container".into())],
                    ..Facts::default()
                },
                "another BPF program",
            ),
            (
                Facts {
                    unreadable: Some("no nft".into()),
                    ..Facts::default()
                },
                "could not be read",
            ),
        ];
        for (facts, want) in cases {
            let why = judge(&facts).unwrap_or_else(|| panic!("{facts:?} should need the stack"));
            assert!(why.contains(want), "{why:?} should mention {want:?}");
            let f = Forwarding::decide(ForwardingMode::Auto, || facts);
            assert!(!f.redirect);
        }
    }

    #[test]
    fn explicit_modes_do_not_probe_and_annotations_win() {
        let probe = || panic!("no probe for an explicit mode");
        let redirect = Forwarding::decide(ForwardingMode::Redirect, probe);
        let stack = Forwarding::decide(ForwardingMode::Stack, || panic!("no probe"));
        assert!(redirect.redirect && !stack.redirect);
        assert!(port_redirects(ForwardingAnnotation::Redirect, &stack));
        assert!(!port_redirects(ForwardingAnnotation::Stack, &redirect));
        assert!(port_redirects(ForwardingAnnotation::Unset, &redirect));
        assert!(!port_redirects(ForwardingAnnotation::Unset, &stack));
    }

    #[test]
    fn the_ruleset_is_read_without_our_own_tables() {
        let json = r#"{"nftables": [{"metainfo": {}},
            {"table": {"family": "ip", "name": "hybrid-proxy", "handle": 1}},
            {"chain": {"family": "ip", "table": "hybrid-proxy", "name": "forward", "hook": "forward", "policy": "accept"}},
            {"rule": {"family": "ip", "table": "hybrid-proxy", "chain": "forward"}},
            {"table": {"family": "ip", "name": "filter", "handle": 2}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "accept"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD"}}]}"#;
        let (tables, chains) = parse_ruleset(json).unwrap();
        assert_eq!(tables, ["ip filter"]);
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].rules, 2);
        assert!(
            judge(&Facts {
                chains,
                tables,
                ..Facts::default()
            })
            .unwrap()
            .contains("2 rule(s) on the forward hook")
        );
        assert!(parse_ruleset("not json").is_err());
    }

    #[test]
    fn tc_filters_of_others_are_foreign_and_ours_are_not() {
        let listing = "filter protocol all pref 49152 bpf chain 0 \n\
                       filter protocol all pref 49152 bpf chain 0 handle 0x1 not_in_hw bytecode '1,6 0 0 0'\n\
                       filter protocol all pref 49153 bpf chain 0 handle 0x1 hp_tc_ingress direct-action not_in_hw id 7\n";
        assert_eq!(foreign_filters(listing), ["bpf 0x1"]);
        assert!(foreign_filters("").is_empty());
    }

    #[test]
    fn save_output_names_its_chains() {
        let dump =
            "*filter\n:INPUT ACCEPT [0:0]\n:WEAVE-NPC - [0:0]\n-A INPUT -j WEAVE-NPC\nCOMMIT\n";
        assert_eq!(parse_save_chains(dump), ["INPUT", "WEAVE-NPC"]);
    }

    #[test]
    fn local_endpoints_are_the_host_routes_through_pod_interfaces() {
        let pod = Ipv4Addr::new(10, 244, 1, 5);
        let other = Ipv4Addr::new(10, 244, 1, 6);
        let routes = [
            Route {
                dst: pod,
                prefix_len: 32,
                oif: 7,
            },
            Route {
                dst: other,
                prefix_len: 32,
                oif: 8,
            },
            // A subnet route and a route via a node interface are not pods.
            Route {
                dst: Ipv4Addr::new(10, 244, 2, 0),
                prefix_len: 24,
                oif: 7,
            },
            Route {
                dst: Ipv4Addr::new(192, 168, 2, 2),
                prefix_len: 32,
                oif: 2,
            },
        ];
        let macs = [
            (7, [2, 0, 0, 0, 0, 7]),
            (8, [2, 0, 0, 0, 0, 8]),
            (2, [2; 6]),
        ];
        let neighbours = [Neighbour {
            if_index: 7,
            addr: pod,
            mac: [0xaa; 6],
        }];
        let eps = local_endpoints(&routes, &macs, &neighbours, &[], &BTreeSet::from([7, 8]));
        assert_eq!(eps.len(), 2);
        assert_eq!(
            eps[&addr_key(pod)],
            LocalEndpoint {
                if_index: 7,
                pod_mac: [0xaa; 6],
                host_mac: [2, 0, 0, 0, 0, 7]
            }
        );
        assert_eq!(eps[&addr_key(other)].pod_mac, [0; 6]);
    }

    #[test]
    fn pods_on_a_bridge_are_found_through_the_bridges_forwarding_database() {
        // cni0 (index 3, MAC 02:..:03) with ports 11 and 12 (pods) and 13 (not a pod port).
        let (a, b, c) = (
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 244, 1, 3),
            Ipv4Addr::new(10, 244, 1, 4),
        );
        let neighbours = [
            Neighbour {
                if_index: 3,
                addr: a,
                mac: [0xa; 6],
            },
            Neighbour {
                if_index: 3,
                addr: b,
                mac: [0xb; 6],
            },
            Neighbour {
                if_index: 3,
                addr: c,
                mac: [0xc; 6],
            },
        ];
        let fdb = [
            FdbEntry {
                port: 11,
                bridge: 3,
                mac: [0xa; 6],
            },
            FdbEntry {
                port: 13,
                bridge: 3,
                mac: [0xc; 6],
            },
        ];
        let macs = [(3, [2, 0, 0, 0, 0, 3])];
        let eps = local_endpoints(&[], &macs, &neighbours, &fdb, &BTreeSet::from([11, 12]));
        assert_eq!(
            eps.get(&addr_key(a)),
            Some(&LocalEndpoint {
                if_index: 11,
                pod_mac: [0xa; 6],
                host_mac: [2, 0, 0, 0, 0, 3]
            })
        );
        assert!(
            !eps.contains_key(&addr_key(b)),
            "no port learned its MAC yet"
        );
        assert!(!eps.contains_key(&addr_key(c)), "not on a pod port");
    }
}
