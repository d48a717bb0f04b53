//! Judging the facts: pure functions from [`Facts`] and the configuration to checks.
//!
//! What fails and what only warns: anything without which nftables cannot serve fails, and so
//! do kube-proxy leftovers that still see packets (their NAT chains sit at our hook and
//! priority and were registered first, so they keep answering new connections with stale
//! endpoints). Fast-path requirements fail only when acceleration is on; with it off they
//! warn, since turning it on later would not work.

use std::path::Path;

use super::{
    Check, Report, Status,
    facts::{Facts, IptablesDump},
    leftovers::{self, IptablesLeftovers},
};
use crate::config::{AccelerationMode, Config};

/// Oldest kernel with every nftables feature the ruleset uses (kube-proxy's nftables mode
/// asks for the same).
pub const MIN_KERNEL: (u32, u32) = (5, 13);
/// First kernel with TCX, the link-based TC attachment; before it the fast path attaches
/// through netlink (clsact), which works but can be replaced by other tools' filters.
pub const TCX_KERNEL: (u32, u32) = (6, 6);
/// Oldest `nft` that writes our ruleset correctly.
pub const MIN_NFT: (u32, u32, u32) = (1, 0, 1);

/// How to remove kube-proxy's leftovers.
const CLEANUP_FIX: &str = "stop kube-proxy on this node (delete its DaemonSet, or set \
                           kube_proxy_remove: true in Kubespray), then run \
                           `proxy-agent cleanup --kube-proxy` here";

/// `(major, minor)` of a kernel release such as `6.1.0-18-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The version in `nft --version` output (`nftables v1.0.6 (Lester Gooch #5)`).
pub fn nft_version(output: &str) -> Option<(u32, u32, u32)> {
    let v = output
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
    });
    let major = parts.next()?.ok()?;
    let minor = parts.next()?.ok()?;
    let patch = parts.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

fn accelerated(config: &Config) -> bool {
    config.acceleration.mode != AccelerationMode::Off
}

/// A fast-path problem: fails when acceleration is on, warns when it is off.
fn fast_path_problem(config: &Config, name: &str, detail: String, fix: &str) -> Check {
    if accelerated(config) {
        Check::fail(name, detail, fix)
    } else {
        Check::warn(
            name,
            format!("{detail} (acceleration is off: nftables serves everything)"),
            fix,
        )
    }
}

fn kernel(facts: &Facts, config: &Config) -> Check {
    let release = &facts.kernel_release;
    let Some(v) = kernel_version(release) else {
        return Check::warn(
            "kernel",
            format!("cannot read the kernel version from {release:?}"),
            "check /proc/sys/kernel/osrelease",
        );
    };
    if v < MIN_KERNEL {
        return Check::fail(
            "kernel",
            format!(
                "{release} is older than {}.{}, the oldest kernel with every nftables feature \
                 the ruleset uses",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            format!(
                "upgrade the kernel to {}.{} or later ({}.{} or later for TCX)",
                MIN_KERNEL.0, MIN_KERNEL.1, TCX_KERNEL.0, TCX_KERNEL.1
            ),
        );
    }
    if v < TCX_KERNEL && accelerated(config) {
        return Check::warn(
            "kernel",
            format!(
                "{release}: nftables is fine; TCX needs {}.{}, so the fast path attaches its TC \
                 programs through netlink (clsact) instead",
                TCX_KERNEL.0, TCX_KERNEL.1
            ),
            format!(
                "nothing is required; upgrade to {}.{} or later for TCX links",
                TCX_KERNEL.0, TCX_KERNEL.1
            ),
        );
    }
    Check::pass("kernel", release.clone())
}

fn nft(facts: &Facts) -> Check {
    match &facts.nft_version {
        Err(e) => Check::fail(
            "nft",
            format!("cannot run nft: {e}"),
            "install nftables (Debian/Ubuntu: apt-get install nftables)",
        ),
        Ok(out) => match nft_version(out) {
            Some(v) if v >= MIN_NFT => Check::pass("nft", out.clone()),
            Some(_) => Check::fail(
                "nft",
                format!(
                    "{out} is older than {}.{}.{}",
                    MIN_NFT.0, MIN_NFT.1, MIN_NFT.2
                ),
                "install nftables 1.0.1 or later (Debian 12 has 1.0.6)",
            ),
            None => Check::warn(
                "nft",
                format!("cannot read a version in {out:?}"),
                "make sure `nft --version` reports 1.0.1 or later",
            ),
        },
    }
}

fn nftables_features(facts: &Facts) -> Check {
    const WHAT: &str = "nf_tables, NAT, conntrack, numgen, fib, reject, concatenated maps";
    match &facts.nft_probe {
        Ok(()) => Check::pass(
            "nftables",
            format!("{WHAT}: a sample ruleset passes nft --check"),
        ),
        Err(e) => Check::fail(
            "nftables",
            format!("a sample ruleset using {WHAT} is rejected: {e}"),
            "load or build the kernel's nftables modules (nf_tables, nft_nat, nft_ct, \
             nft_numgen, nft_fib_ipv4/ipv6, nft_reject_inet, nft_masq); the agent needs \
             CAP_NET_ADMIN",
        ),
    }
}

fn btf(facts: &Facts, config: &Config) -> Check {
    if facts.btf_vmlinux {
        Check::pass("btf", "/sys/kernel/btf/vmlinux")
    } else {
        fast_path_problem(
            config,
            "btf",
            "no /sys/kernel/btf/vmlinux: the kernel has no BTF".into(),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y, or keep acceleration off",
        )
    }
}

fn bpf(facts: &Facts, config: &Config) -> Check {
    match &facts.bpf {
        Ok(()) => Check::pass("bpf", "XDP and TC programs load; LRU hash maps"),
        Err(e) => fast_path_problem(
            config,
            "bpf",
            e.clone(),
            "grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (kernel >= 5.8); the kernel needs \
             CONFIG_BPF_SYSCALL and CONFIG_NET_CLS_BPF",
        ),
    }
}

/// What `acceleration.forwarding` will do on this node, and whether that is safe.
fn forwarding(facts: &Facts, config: &Config) -> Check {
    use crate::config::ForwardingMode;
    let why = crate::bpf::forwarding::judge(&facts.forwarding);
    match (config.acceleration.forwarding, why) {
        (ForwardingMode::Stack, _) => Check::pass(
            "forwarding",
            "stack (configured): accelerated pod flows go through the node's netfilter",
        ),
        (ForwardingMode::Auto, None) => Check::pass(
            "forwarding",
            "auto: redirect (nothing on the node needs to see forwarded pod traffic)",
        ),
        (ForwardingMode::Redirect, None) => Check::pass(
            "forwarding",
            "redirect (configured; nothing on the node needs to see forwarded pod traffic)",
        ),
        (ForwardingMode::Auto, Some(why)) => Check::warn(
            "forwarding",
            format!("auto: stack, because {why}"),
            "nothing to do: accelerated pod flows keep going through the node's stack; set              acceleration.forwarding: redirect only if those rules need not see them",
        ),
        (ForwardingMode::Redirect, Some(why)) => Check::warn(
            "forwarding",
            format!(
                "redirect is configured, but {why}: its rules will not see accelerated pod flows"
            ),
            "set acceleration.forwarding: auto or stack, or annotate the Services whose              traffic those rules must see hybrid-proxy.io/forwarding: stack",
        ),
    }
}

fn bpffs(facts: &Facts, config: &Config) -> Check {
    let pin = &config.acceleration.pin_path;
    if let Some(mount) = facts
        .bpffs_mounts
        .iter()
        .filter(|m| pin.starts_with(m))
        .max_by_key(|m| m.components().count())
    {
        return Check::pass(
            "bpffs",
            format!(
                "{} is on the bpffs mounted at {}",
                pin.display(),
                mount.display()
            ),
        );
    }
    if facts.can_mount {
        return Check::pass(
            "bpffs",
            format!(
                "no bpffs at {}: the agent mounts one (it has CAP_SYS_ADMIN), but pins then \
                 live only as long as this mount namespace",
                pin.display()
            ),
        );
    }
    let standard = Path::new("/sys/fs/bpf");
    fast_path_problem(
        config,
        "bpffs",
        format!(
            "no bpffs at {}, and mounting one needs CAP_SYS_ADMIN",
            pin.display()
        ),
        &if pin.starts_with(standard) {
            "mount bpffs on the host (`mount -t bpf bpf /sys/fs/bpf`; systemd does this at \
             boot) and give the pod a hostPath volume of /sys/fs/bpf"
                .to_owned()
        } else {
            format!(
                "set acceleration.pinPath below a bpffs mount, or mount one at {}",
                pin.display()
            )
        },
    )
}

fn interfaces(facts: &Facts, config: &Config) -> Vec<Check> {
    if !accelerated(config) {
        return Vec::new();
    }
    let tcx = kernel_version(&facts.kernel_release).is_some_and(|v| v >= TCX_KERNEL);
    config
        .acceleration
        .interfaces
        .iter()
        .map(|name| {
            let check = format!("interface {name}");
            if facts.interfaces.iter().any(|i| i == name) {
                let tc = if tcx {
                    "TC through TCX"
                } else {
                    "TC through clsact (no TCX before 6.6)"
                };
                Check::pass(check, format!("exists: XDP, {tc}"))
            } else {
                Check::fail(
                    check,
                    format!(
                        "no interface {name} on this node (it has {})",
                        facts.interfaces.join(", ")
                    ),
                    "fix acceleration.interfaces in the configuration",
                )
            }
        })
        .collect()
}

fn kube_proxy_iptables(facts: &Facts) -> Check {
    const NAME: &str = "kube-proxy-iptables";
    if facts.iptables.is_empty() {
        return Check::pass(
            NAME,
            "iptables is not installed: no iptables rules to conflict",
        );
    }
    let mut status = Status::Pass;
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    for IptablesDump {
        variant,
        family,
        dump,
    } in &facts.iptables
    {
        let label = variant.label(*family);
        match dump {
            Err(e) => unreadable.push(format!("{label}: {e}")),
            Ok(text) => {
                let left = IptablesLeftovers::find(&leftovers::parse_save(text));
                if left.is_empty() {
                    continue;
                }
                status = status.max(if left.is_hooked() {
                    Status::Fail
                } else {
                    Status::Warn
                });
                found.push(format!("{label}: {left}"));
            }
        }
    }
    if !found.is_empty() {
        let detail = format!("kube-proxy's chains: {}", found.join("; "));
        return if status == Status::Fail {
            Check::fail(NAME, detail, CLEANUP_FIX)
        } else {
            Check::warn(
                NAME,
                format!("{detail} (nothing jumps to them)"),
                CLEANUP_FIX,
            )
        };
    }
    if !unreadable.is_empty() {
        return Check::warn(
            NAME,
            format!("cannot read iptables: {}", unreadable.join("; ")),
            "run preflight with CAP_NET_ADMIN, and CAP_NET_RAW for iptables-legacy",
        );
    }
    let labels: Vec<String> = facts
        .iptables
        .iter()
        .map(|d| d.variant.label(d.family))
        .collect();
    Check::pass(
        NAME,
        format!("no kube-proxy chains ({})", labels.join(", ")),
    )
}

fn kube_proxy_nftables(facts: &Facts) -> Check {
    const NAME: &str = "kube-proxy-nftables";
    match &facts.nft_tables {
        Err(e) => Check::warn(
            NAME,
            format!("cannot list nftables tables: {e}"),
            "run preflight with CAP_NET_ADMIN",
        ),
        Ok(list) => {
            let tables = leftovers::kube_proxy_nft_tables(list);
            if tables.is_empty() {
                Check::pass(NAME, "no tables ip/ip6 kube-proxy")
            } else {
                Check::fail(
                    NAME,
                    format!(
                        "kube-proxy's nftables mode left: table {}",
                        tables.join(", table ")
                    ),
                    CLEANUP_FIX,
                )
            }
        }
    }
}

/// Virtual servers in `/proc/net/ip_vs` (not their real servers, listed as `  -> ...`).
pub fn ipvs_virtual_servers(ip_vs: &str) -> usize {
    ip_vs
        .lines()
        .filter(|l| {
            ["TCP ", "UDP ", "SCTP ", "FWM "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .count()
}

fn ipvs(facts: &Facts) -> Check {
    const NAME: &str = "kube-proxy-ipvs";
    let servers = facts.ip_vs.as_deref().map_or(0, ipvs_virtual_servers);
    if facts.interfaces.iter().any(|i| i == "kube-ipvs0") {
        return Check::fail(
            NAME,
            format!(
                "kube-ipvs0 exists (kube-proxy's ipvs mode) with {servers} IPVS virtual \
                 servers: it makes every ClusterIP a local address of this node"
            ),
            format!(
                "{CLEANUP_FIX} (it deletes kube-ipvs0); then `ipvsadm --clear` removes the \
                 virtual servers"
            ),
        );
    }
    if servers > 0 {
        return Check::warn(
            NAME,
            format!("{servers} IPVS virtual servers, not necessarily kube-proxy's"),
            "if they are kube-proxy's, `ipvsadm --clear` removes them",
        );
    }
    match facts.ip_vs {
        None => Check::pass(NAME, "IPVS is not loaded"),
        Some(_) => Check::pass(NAME, "no IPVS virtual servers, no kube-ipvs0"),
    }
}

/// Every check, in the order they are printed.
pub fn evaluate(facts: &Facts, config: &Config) -> Report {
    let mut checks = vec![
        kernel(facts, config),
        nft(facts),
        nftables_features(facts),
        bpf(facts, config),
        btf(facts, config),
        bpffs(facts, config),
        forwarding(facts, config),
    ];
    checks.extend(interfaces(facts, config));
    checks.push(kube_proxy_iptables(facts));
    checks.push(kube_proxy_nftables(facts));
    checks.push(ipvs(facts));
    Report { checks }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{model::IpFamily, preflight::leftovers::IptablesVariant};

    /// A node on which everything passes.
    fn healthy() -> Facts {
        Facts {
            kernel_release: "6.12.0-amd64".into(),
            nft_version: Ok("nftables v1.0.6 (Lester Gooch #5)".into()),
            nft_probe: Ok(()),
            btf_vmlinux: true,
            bpf: Ok(()),
            bpffs_mounts: vec![PathBuf::from("/sys/fs/bpf")],
            can_mount: false,
            interfaces: vec!["eth0".into(), "lo".into()],
            iptables: vec![IptablesDump {
                variant: IptablesVariant::Nft,
                family: IpFamily::V4,
                dump: Ok("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n".into()),
            }],
            nft_tables: Ok("table ip hybrid-proxy\ntable ip6 hybrid-proxy\n".into()),
            ip_vs: None,
            forwarding: crate::bpf::forwarding::Facts::default(),
        }
    }

    fn accelerated_on(interfaces: &[&str]) -> Config {
        let mut c = Config::default();
        c.acceleration.mode = AccelerationMode::All;
        c.acceleration.interfaces = interfaces.iter().map(|s| (*s).to_owned()).collect();
        c
    }

    fn status_of(report: &Report, name: &str) -> Status {
        report
            .check(name)
            .unwrap_or_else(|| panic!("no check {name} in\n{report}"))
            .status
    }

    #[test]
    fn a_healthy_node_passes_everything() {
        let report = evaluate(&healthy(), &accelerated_on(&["eth0"]));
        assert_eq!(report.status(), Status::Pass, "{report}");
        assert_eq!(
            report
                .checks
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            [
                "kernel",
                "nft",
                "nftables",
                "bpf",
                "btf",
                "bpffs",
                "forwarding",
                "interface eth0",
                "kube-proxy-iptables",
                "kube-proxy-nftables",
                "kube-proxy-ipvs"
            ]
        );
    }

    #[test]
    fn forwarding_says_what_auto_does_and_warns_when_redirect_would_hide_flows() {
        let mut facts = healthy();
        let config = accelerated_on(&["eth0"]);
        let check = |f: &Facts, c: &Config| {
            evaluate(f, c)
                .check("forwarding")
                .cloned()
                .expect("a forwarding check")
        };
        let clean = check(&facts, &config);
        assert_eq!(clean.status, Status::Pass);
        assert!(clean.detail.contains("auto: redirect"), "{clean:?}");
        facts.forwarding.tables = vec!["inet firewalld".into()];
        let auto = check(&facts, &config);
        assert_eq!(auto.status, Status::Warn);
        assert!(
            auto.detail
                .contains("auto: stack, because firewalld is on the node"),
            "{auto:?}"
        );
        let mut redirect = config.clone();
        redirect.acceleration.forwarding = crate::config::ForwardingMode::Redirect;
        let forced = check(&facts, &redirect);
        assert_eq!(forced.status, Status::Warn);
        assert!(
            forced.fix.contains("hybrid-proxy.io/forwarding: stack"),
            "{forced:?}"
        );
        let mut stack = config;
        stack.acceleration.forwarding = crate::config::ForwardingMode::Stack;
        assert_eq!(check(&facts, &stack).status, Status::Pass);
    }

    #[test]
    fn kernel_versions_decide_nftables_and_tcx() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.15.0"), Some((5, 15)));
        assert_eq!(kernel_version("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(kernel_version("garbage"), None);
        for (release, accelerated, expected) in [
            ("5.10.0-28-amd64", false, Status::Fail),
            ("5.13.0", false, Status::Pass),
            ("6.1.0", false, Status::Pass),
            ("6.1.0", true, Status::Warn),
            ("6.6.0", true, Status::Pass),
            ("", false, Status::Warn),
        ] {
            let facts = Facts {
                kernel_release: release.into(),
                ..healthy()
            };
            let config = if accelerated {
                accelerated_on(&[])
            } else {
                Config::default()
            };
            let report = evaluate(&facts, &config);
            assert_eq!(
                status_of(&report, "kernel"),
                expected,
                "{release}: {report}"
            );
        }
    }

    #[test]
    fn nft_must_exist_and_be_recent() {
        assert_eq!(
            nft_version("nftables v1.0.6 (Lester Gooch #5)"),
            Some((1, 0, 6))
        );
        assert_eq!(
            nft_version("nftables v1.1.1 (Commodore Bullmoose #2)"),
            Some((1, 1, 1))
        );
        assert_eq!(nft_version("nftables v0.9.8 (E.D.S.)"), Some((0, 9, 8)));
        for (version, expected) in [
            (
                Ok("nftables v1.0.1 (Fearless Fosdick #3)".into()),
                Status::Pass,
            ),
            (Ok("nftables v0.9.8 (E.D.S.)".into()), Status::Fail),
            (Err("`nft` not found".into()), Status::Fail),
            (Ok("something else".into()), Status::Warn),
        ] {
            let facts = Facts {
                nft_version: version.clone(),
                ..healthy()
            };
            let report = evaluate(&facts, &Config::default());
            assert_eq!(status_of(&report, "nft"), expected, "{version:?}");
        }
    }

    #[test]
    fn a_rejected_probe_ruleset_fails_with_nfts_words() {
        let facts = Facts {
            nft_probe: Err("Error: Could not process rule: No such file or directory".into()),
            ..healthy()
        };
        let report = evaluate(&facts, &Config::default());
        let check = report.check("nftables").unwrap();
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("No such file"), "{}", check.detail);
        assert!(check.fix.contains("nft_numgen"), "{}", check.fix);
        assert_eq!(report.status(), Status::Fail);
    }

    #[test]
    fn fast_path_requirements_fail_only_with_acceleration_on() {
        let facts = Facts {
            btf_vmlinux: false,
            bpf: Err("loading a test XDP program: EPERM".into()),
            bpffs_mounts: Vec::new(),
            ..healthy()
        };
        let off = evaluate(&facts, &Config::default());
        for name in ["btf", "bpf", "bpffs"] {
            assert_eq!(status_of(&off, name), Status::Warn, "{off}");
        }
        assert_eq!(off.status(), Status::Warn);
        let on = evaluate(&facts, &accelerated_on(&[]));
        for name in ["btf", "bpf", "bpffs"] {
            assert_eq!(status_of(&on, name), Status::Fail, "{on}");
        }
        assert!(on.check("bpffs").unwrap().fix.contains("hostPath"));
    }

    #[test]
    fn bpffs_is_found_above_the_pin_path_or_mountable() {
        let mut config = accelerated_on(&[]);
        config.acceleration.pin_path = PathBuf::from("/run/bpf/hp");
        let facts = Facts {
            bpffs_mounts: vec![PathBuf::from("/sys/fs/bpf"), PathBuf::from("/run/bpf")],
            ..healthy()
        };
        let report = evaluate(&facts, &config);
        assert!(
            report
                .check("bpffs")
                .unwrap()
                .detail
                .contains("mounted at /run/bpf")
        );
        let facts = Facts {
            bpffs_mounts: Vec::new(),
            can_mount: true,
            ..healthy()
        };
        assert_eq!(status_of(&evaluate(&facts, &config), "bpffs"), Status::Pass);
    }

    #[test]
    fn configured_interfaces_must_exist() {
        let report = evaluate(&healthy(), &accelerated_on(&["eth0", "bond0"]));
        assert_eq!(status_of(&report, "interface eth0"), Status::Pass);
        let bond = report.check("interface bond0").unwrap();
        assert_eq!(bond.status, Status::Fail);
        assert!(bond.detail.contains("eth0, lo"), "{}", bond.detail);
        let old = Facts {
            kernel_release: "6.1.0".into(),
            ..healthy()
        };
        let report = evaluate(&old, &accelerated_on(&["eth0"]));
        assert!(
            report
                .check("interface eth0")
                .unwrap()
                .detail
                .contains("clsact")
        );
        // Without acceleration, interfaces are not checked.
        let report = evaluate(&healthy(), &Config::default());
        assert!(report.check("interface eth0").is_none());
    }

    const KUBE_PROXY_NAT: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n\
        -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
        -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n";

    #[test]
    fn hooked_kube_proxy_chains_fail_and_unhooked_ones_warn() {
        let facts = Facts {
            iptables: vec![
                IptablesDump {
                    variant: IptablesVariant::Nft,
                    family: IpFamily::V4,
                    dump: Ok(KUBE_PROXY_NAT.into()),
                },
                IptablesDump {
                    variant: IptablesVariant::Legacy,
                    family: IpFamily::V6,
                    dump: Ok(String::new()),
                },
            ],
            ..healthy()
        };
        let report = evaluate(&facts, &Config::default());
        let check = report.check("kube-proxy-iptables").unwrap();
        assert_eq!(check.status, Status::Fail);
        assert_eq!(
            check.detail,
            "kube-proxy's chains: iptables-nft: nat: 2 chains (KUBE-SERVICES, KUBE-NODEPORTS) \
             hooked from PREROUTING"
        );
        assert!(check.fix.contains("cleanup --kube-proxy"));

        let unhooked = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n";
        let facts = Facts {
            iptables: vec![IptablesDump {
                variant: IptablesVariant::Legacy,
                family: IpFamily::V4,
                dump: Ok(unhooked.into()),
            }],
            ..healthy()
        };
        let report = evaluate(&facts, &Config::default());
        assert_eq!(status_of(&report, "kube-proxy-iptables"), Status::Warn);
    }

    #[test]
    fn unreadable_or_missing_iptables() {
        let facts = Facts {
            iptables: vec![IptablesDump {
                variant: IptablesVariant::Legacy,
                family: IpFamily::V4,
                dump: Err("Permission denied (you must be root)".into()),
            }],
            ..healthy()
        };
        let report = evaluate(&facts, &Config::default());
        let check = report.check("kube-proxy-iptables").unwrap();
        assert_eq!(check.status, Status::Warn);
        assert!(check.fix.contains("CAP_NET_RAW"));
        let facts = Facts {
            iptables: Vec::new(),
            ..healthy()
        };
        let report = evaluate(&facts, &Config::default());
        assert_eq!(status_of(&report, "kube-proxy-iptables"), Status::Pass);
    }

    #[test]
    fn kube_proxy_nftables_tables_fail() {
        let facts = Facts {
            nft_tables: Ok("table ip kube-proxy\ntable ip6 kube-proxy\ntable ip filter\n".into()),
            ..healthy()
        };
        let report = evaluate(&facts, &Config::default());
        let check = report.check("kube-proxy-nftables").unwrap();
        assert_eq!(check.status, Status::Fail);
        assert!(
            check
                .detail
                .contains("table ip kube-proxy, table ip6 kube-proxy")
        );
    }

    const IP_VS: &str = "IP Virtual Server version 1.2.1 (size=4096)\n\
        Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n\
        TCP  0A60000A:0035 rr\n  -> 0AF40105:0035      Masq    1      0          0\n\
        UDP  0A60000A:0035 rr\n";

    #[test]
    fn ipvs_with_kube_ipvs0_fails_and_other_virtual_servers_warn() {
        assert_eq!(ipvs_virtual_servers(IP_VS), 2);
        let kube = Facts {
            ip_vs: Some(IP_VS.into()),
            interfaces: vec!["eth0".into(), "kube-ipvs0".into()],
            ..healthy()
        };
        let report = evaluate(&kube, &Config::default());
        let check = report.check("kube-proxy-ipvs").unwrap();
        assert_eq!(check.status, Status::Fail);
        assert!(
            check.detail.contains("2 IPVS virtual servers"),
            "{}",
            check.detail
        );
        let other = Facts {
            ip_vs: Some(IP_VS.into()),
            ..healthy()
        };
        assert_eq!(
            status_of(&evaluate(&other, &Config::default()), "kube-proxy-ipvs"),
            Status::Warn
        );
        let empty = Facts {
            ip_vs: Some(IP_VS.lines().take(3).collect::<Vec<_>>().join("\n")),
            ..healthy()
        };
        assert_eq!(
            status_of(&evaluate(&empty, &Config::default()), "kube-proxy-ipvs"),
            Status::Pass
        );
    }

    #[test]
    fn the_report_prints_as_a_table_and_as_json() {
        let facts = Facts {
            nft_tables: Ok("table ip kube-proxy\n".into()),
            ..healthy()
        };
        let report = evaluate(&facts, &Config::default());
        let text = report.to_string();
        let line = text
            .lines()
            .find(|l| l.contains("kube-proxy-nftables"))
            .unwrap();
        assert!(line.starts_with("FAIL  kube-proxy-nftables"), "{text}");
        assert!(text.contains("fix: stop kube-proxy"), "{text}");
        assert!(
            text.ends_with("preflight: fail: 9 pass, 0 warn, 1 fail"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["status"], "fail");
        assert_eq!(json["checks"][0]["name"], "kernel");
        assert_eq!(json["checks"][0]["status"], "pass");
        assert!(json["checks"][0].get("fix").is_none());
    }
}
