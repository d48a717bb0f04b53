//! Moving a node from kube-proxy: `proxy-agent preflight` finds kube-proxy's leftovers,
//! `proxy-agent cleanup --kube-proxy` removes them (and only them), plain `cleanup` never
//! touches them. Everything happens inside a network namespace the test creates.

use std::process::Output;

use hybrid_proxy_tests::{lab::agent_binary, netns::Netns, privileged};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `proxy-agent <args>` inside the namespace.
fn agent(ns: &Netns, args: &[&str]) -> Output {
    ns.exec(agent_binary().to_str().expect("UTF-8 path"), args)
}

/// `preflight --json` in the namespace: its exit status and the status of each check.
fn preflight(ns: &Netns) -> (bool, serde_json::Value) {
    let out = agent(ns, &["preflight", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("preflight printed no JSON ({e}):\n{}", text(&out)));
    (out.status.success(), json)
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn save(ns: &Netns, program: &str) -> String {
    String::from_utf8_lossy(&ns.exec_ok(program, &[]).stdout).into_owned()
}

fn tables(ns: &Netns) -> String {
    String::from_utf8_lossy(&ns.exec_ok("nft", &["list", "tables"]).stdout).into_owned()
}

/// The iptables rules kube-proxy leaves, beside the kubelet's `KUBE-FIREWALL` and a chain of
/// someone else's, which must stay. `(program, arguments)`.
const IPTABLES_LEFTOVERS: &[(&str, &str)] = &[
    ("iptables-nft", "-t nat -N KUBE-SERVICES"),
    ("iptables-nft", "-t nat -N KUBE-NODEPORTS"),
    ("iptables-nft", "-t nat -N KUBE-SVC-ABCDEF"),
    (
        "iptables-nft",
        "-t nat -A PREROUTING -m comment --comment portals -j KUBE-SERVICES",
    ),
    ("iptables-nft", "-t nat -A OUTPUT -j KUBE-SERVICES"),
    (
        "iptables-nft",
        "-t nat -A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -j KUBE-SVC-ABCDEF",
    ),
    (
        "iptables-nft",
        "-t nat -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
    ),
    ("iptables-nft", "-t filter -N KUBE-SERVICES"),
    (
        "iptables-nft",
        "-t filter -A OUTPUT -m conntrack --ctstate NEW -j KUBE-SERVICES",
    ),
    ("iptables-nft", "-t filter -N KUBE-FIREWALL"),
    ("iptables-nft", "-t filter -A INPUT -j KUBE-FIREWALL"),
    ("iptables-nft", "-t filter -N SOMEONE-ELSE"),
    ("iptables-nft", "-t filter -A FORWARD -j SOMEONE-ELSE"),
    ("iptables-nft", "-t mangle -N KUBE-PROXY-CANARY"),
    ("ip6tables-nft", "-t nat -N KUBE-SERVICES"),
    ("ip6tables-nft", "-t nat -A PREROUTING -j KUBE-SERVICES"),
];

/// kube-proxy's nftables mode's tables.
const NFT_LEFTOVERS: &str = "table ip kube-proxy {\n chain services {\n  type nat hook prerouting priority -100;\n }\n}\n\
                             table ip6 kube-proxy {\n chain services {\n }\n}\n";

/// Leaves what kube-proxy's three modes leave: iptables chains (in iptables-legacy too when
/// the kernel has its tables: returns whether it does), nftables tables and kube-ipvs0.
fn leave_kube_proxy_behind(ns: &Netns, test: &str) -> bool {
    for (program, args) in IPTABLES_LEFTOVERS {
        ns.exec_ok(program, &args.split(' ').collect::<Vec<_>>());
    }
    let legacy = ns
        .exec("iptables-legacy", &["-t", "nat", "-N", "KUBE-SERVICES"])
        .status
        .success();
    if legacy {
        ns.exec_ok(
            "iptables-legacy",
            &["-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES"],
        );
    } else {
        eprintln!("{test}: no iptables-legacy tables in this kernel; checking iptables-nft only");
    }
    // kube-proxy makes a dummy interface; a veth (whose peer goes with it) stands in where the
    // kernel has no dummy driver.
    let dummy = ["link", "add", "kube-ipvs0", "type", "dummy"];
    if !ns.exec("ip", &dummy).status.success() {
        let veth = "link add kube-ipvs0 type veth peer name kipvs-peer";
        ns.exec_ok("ip", &veth.split(' ').collect::<Vec<_>>());
    }
    let nft_file = std::env::temp_dir().join(format!("{}.nft", ns.name()));
    std::fs::write(&nft_file, NFT_LEFTOVERS).unwrap();
    ns.exec_ok("nft", &["-f", nft_file.to_str().unwrap()]);
    std::fs::remove_file(&nft_file).unwrap();
    legacy
}

/// Preflight sees all three kinds of leftovers, fails, and says how to fix it.
fn assert_preflight_fails_on_leftovers(ns: &Netns, legacy: bool) {
    let (ok, report) = preflight(ns);
    assert!(
        !ok,
        "preflight passed despite kube-proxy's leftovers: {report:#}"
    );
    assert_eq!(report["status"], "fail");
    let iptables = check(&report, "kube-proxy-iptables");
    assert_eq!(iptables["status"], "fail", "{report:#}");
    let detail = iptables["detail"].as_str().unwrap();
    for expected in [
        "iptables-nft: ",
        "nat: 3 chains (KUBE-NODEPORTS, KUBE-SERVICES, KUBE-SVC-ABCDEF) hooked from PREROUTING, OUTPUT",
        "mangle: 1 chain (KUBE-PROXY-CANARY)",
        "filter: 1 chain (KUBE-SERVICES) hooked from OUTPUT",
        "ip6tables-nft: nat: 1 chain (KUBE-SERVICES) hooked from PREROUTING",
    ] {
        assert!(detail.contains(expected), "{expected:?} not in {detail}");
    }
    assert!(
        !detail.contains("KUBE-FIREWALL"),
        "the kubelet's chain is not kube-proxy's: {detail}"
    );
    if legacy {
        assert!(detail.contains("iptables-legacy: nat: 1 chain"), "{detail}");
    }
    assert_eq!(check(&report, "kube-proxy-nftables")["status"], "fail");
    assert_eq!(check(&report, "kube-proxy-ipvs")["status"], "fail");
    let table = text(&agent(ns, &["preflight"]));
    assert!(table.contains("FAIL  kube-proxy-nftables"), "{table}");
    assert!(table.contains("fix: stop kube-proxy"), "{table}");
}

#[test]
fn preflight_finds_kube_proxy_leftovers_and_cleanup_kube_proxy_removes_only_them() {
    const TEST: &str =
        "preflight_finds_kube_proxy_leftovers_and_cleanup_kube_proxy_removes_only_them";
    if !privileged::root_or_skip(TEST) {
        return;
    }
    let ns = Netns::new("pre");
    let legacy = leave_kube_proxy_behind(&ns, TEST);
    assert_preflight_fails_on_leftovers(&ns, legacy);

    // Plain cleanup removes the agent's rules only, never kube-proxy's.
    let out = agent(&ns, &["cleanup"]);
    assert!(out.status.success(), "cleanup failed: {}", text(&out));
    assert!(
        tables(&ns).contains("table ip kube-proxy"),
        "{}",
        tables(&ns)
    );
    assert!(save(&ns, "iptables-nft-save").contains(":KUBE-SERVICES"));
    assert!(
        ns.exec("ip", &["link", "show", "kube-ipvs0"])
            .status
            .success()
    );
    let (ok, _) = preflight(&ns);
    assert!(!ok, "plain cleanup must leave kube-proxy's leftovers alone");

    // cleanup --kube-proxy removes them, and leaves the agent's table, the kubelet's chain and
    // everyone else's alone.
    ns.exec_ok("nft", &["add", "table", "ip", "hybrid-proxy"]);
    let out = agent(&ns, &["cleanup", "--kube-proxy"]);
    let said = text(&out);
    assert!(out.status.success(), "cleanup --kube-proxy failed: {said}");
    for expected in [
        "removed from iptables-nft: ",
        "nat: 3 chains",
        "removed from ip6tables-nft",
        "removed nftables table ip kube-proxy",
        "removed nftables table ip6 kube-proxy",
        "deleted interface kube-ipvs0",
    ] {
        assert!(said.contains(expected), "{expected:?} not in {said}");
    }
    let (ok, report) = preflight(&ns);
    for name in [
        "kube-proxy-iptables",
        "kube-proxy-nftables",
        "kube-proxy-ipvs",
    ] {
        assert_eq!(check(&report, name)["status"], "pass", "{name}: {report:#}");
    }
    // Without acceleration, nothing else can fail here.
    assert!(ok, "{report:#}");
    let v4 = save(&ns, "iptables-nft-save");
    assert!(
        !v4.contains("KUBE-SERVICES") && !v4.contains("KUBE-PROXY-CANARY"),
        "{v4}"
    );
    assert!(v4.contains("-A INPUT -j KUBE-FIREWALL"), "{v4}");
    assert!(v4.contains("-A FORWARD -j SOMEONE-ELSE"), "{v4}");
    assert!(!save(&ns, "ip6tables-nft-save").contains("KUBE-"));
    if legacy {
        assert!(!save(&ns, "iptables-legacy-save").contains("KUBE-"));
    }
    let left = tables(&ns);
    assert!(left.contains("table ip hybrid-proxy"), "{left}");
    assert!(!left.contains("kube-proxy"), "{left}");

    // A second run finds nothing to do.
    let out = agent(&ns, &["cleanup", "--kube-proxy"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no kube-proxy leftovers found"),
        "{}",
        text(&out)
    );
}
