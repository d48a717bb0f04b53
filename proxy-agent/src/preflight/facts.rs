//! Reading the node: every probe preflight makes, none of which changes anything.
//!
//! The nftables probe is `nft --check` of [`PROBE_RULESET`]: the kernel validates the whole
//! transaction (so a missing `nft_numgen`, `nft_fib`, NAT or conntrack module shows up as an
//! error) and then discards it. The BPF probe loads a trivial XDP and TC program and creates a
//! map, and closes them.

use std::path::{Path, PathBuf};

use super::leftovers::{self, IptablesVariant};
use crate::model::IpFamily;

/// What preflight learned about the node; plain data, judged by [`super::checks`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The kernel release (`uname -r`).
    pub kernel_release: String,
    /// The output of `nft --version`, or why it could not run.
    pub nft_version: Result<String, String>,
    /// `nft --check` of [`PROBE_RULESET`]: nothing, or what nft said.
    pub nft_probe: Result<(), String>,
    /// Whether `/sys/kernel/btf/vmlinux` exists.
    pub btf_vmlinux: bool,
    /// Loading XDP and TC programs and creating an LRU hash map: nothing, or what failed.
    pub bpf: Result<(), String>,
    /// Where bpffs is mounted.
    pub bpffs_mounts: Vec<PathBuf>,
    /// Whether this process may mount (`CAP_SYS_ADMIN` in its effective set): the agent mounts
    /// bpffs itself when it is missing.
    pub can_mount: bool,
    /// Network interfaces of this namespace.
    pub interfaces: Vec<String>,
    /// One dump per installed iptables variant and family.
    pub iptables: Vec<IptablesDump>,
    /// `nft list tables`, or why it failed.
    pub nft_tables: Result<String, String>,
    /// `/proc/net/ip_vs` (IPv4 and IPv6 virtual servers); `None` when IPVS is not loaded.
    pub ip_vs: Option<String>,
    /// What bears on bypassing the node's stack (`acceleration.forwarding`): rules of other
    /// owners, TC programs of others on any interface.
    pub forwarding: crate::bpf::forwarding::Facts,
}

/// The `*-save` output of one iptables variant and family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IptablesDump {
    pub variant: IptablesVariant,
    pub family: IpFamily,
    pub dump: Result<String, String>,
}

/// A ruleset using every nftables feature the agent's ruleset uses: base chains at our hooks
/// and priorities, nat, conntrack status and state, `fib`, `numgen` inside a concatenated
/// `typeof` map, verdict maps, dynamic sets with timeouts, `reject`, fully-random masquerade.
/// Checked, never committed; the table name is not ours so that a check cannot collide with
/// a running agent.
pub const PROBE_RULESET: &str = "\
table ip hybrid-proxy-preflight {
\tmap endpoints {
\t\ttypeof ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . tcp dport
\t}
\tmap service-ips {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t}
\tset hairpin {
\t\ttype ipv4_addr . ipv4_addr
\t}
\tset affinity {
\t\ttype ipv4_addr
\t\tflags dynamic,timeout
\t\ttimeout 10800s
\t}
\tchain filter-prerouting {
\t\ttype filter hook prerouting priority -110; policy accept;
\t\tct state new fib daddr type local ip daddr != 127.0.0.0/8 reject
\t}
\tchain nat-prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tip daddr . meta l4proto . th dport vmap @service-ips
\t}
\tchain nat-postrouting {
\t\ttype nat hook postrouting priority 100; policy accept;
\t\tct status dnat ip saddr . ip daddr @hairpin meta mark set meta mark | 0x00004000
\t\tmeta mark & 0x00004000 == 0 return
\t\tmasquerade fully-random
\t}
\tchain service {
\t\tupdate @affinity { ip saddr }
\t\tdnat ip to ip daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints
\t}
\tchain endpoint {
\t\tmeta l4proto tcp dnat ip to 10.0.0.1:80
\t}
}
table ip6 hybrid-proxy-preflight {
\tmap endpoints {
\t\ttypeof ip6 daddr . meta l4proto . th dport . numgen random mod 1 : ip6 daddr . udp dport
\t}
\tchain nat-output {
\t\ttype nat hook output priority -100; policy accept;
\t\tfib daddr type local meta l4proto udp dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints
\t}
}
";

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Mount points of bpffs in a `/proc/self/mounts` text.
pub fn bpffs_mounts(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            // Spaces in mount points are written as \040.
            (fstype == "bpf").then(|| PathBuf::from(point.replace("\\040", " ")))
        })
        .collect()
}

fn probe_bpf() -> Result<(), String> {
    use aya::{maps::MapType, programs::ProgramType, sys};
    for (name, program) in [
        ("XDP", ProgramType::Xdp),
        ("TC (sched_cls)", ProgramType::SchedClassifier),
    ] {
        match sys::is_program_supported(program) {
            Ok(true) => {}
            Ok(false) => return Err(format!("the kernel cannot load {name} programs")),
            Err(e) => return Err(format!("loading a test {name} program: {e}")),
        }
    }
    match sys::is_map_supported(MapType::LruHash) {
        Ok(true) => Ok(()),
        Ok(false) => Err("the kernel has no LRU hash maps".into()),
        Err(e) => Err(format!("creating a test map: {e}")),
    }
}

/// Interfaces of this network namespace (asked over netlink: `/sys/class/net` shows the
/// namespace sysfs was mounted in).
fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = crate::bpf::netlink::interfaces()
        .map(|list| list.into_iter().map(|(name, _)| name).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Whether `CapEff` in a `/proc/self/status` text holds `CAP_SYS_ADMIN` (bit 21).
pub fn has_cap_sys_admin(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

/// Probes the node.
pub fn gather() -> Facts {
    let nft = crate::nft::NftCli::default().program;
    let nft_version = leftovers::run(&nft, &["--version"], None)
        .map(|s| s.trim().to_owned())
        .map_err(|e| e.to_string());
    let nft_probe = if nft_version.is_ok() {
        leftovers::run(&nft, &["--check", "-f", "-"], Some(PROBE_RULESET))
            .map(drop)
            .map_err(|e| e.to_string())
    } else {
        Err("nft is not available".into())
    };
    let mut iptables = Vec::new();
    for variant in leftovers::installed_variants() {
        for family in IpFamily::BOTH {
            if leftovers::on_path(&variant.save_program(family)) {
                iptables.push(IptablesDump {
                    variant,
                    family,
                    dump: leftovers::save(variant, family).map_err(|e| e.to_string()),
                });
            }
        }
    }
    Facts {
        kernel_release: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        nft_probe,
        nft_tables: leftovers::run(&nft, &["list", "tables"], None).map_err(|e| e.to_string()),
        nft_version,
        btf_vmlinux: Path::new("/sys/kernel/btf/vmlinux").exists(),
        bpf: probe_bpf(),
        bpffs_mounts: bpffs_mounts(
            &std::fs::read_to_string("/proc/self/mounts").unwrap_or_default(),
        ),
        can_mount: has_cap_sys_admin(
            &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
        ),
        forwarding: crate::bpf::forwarding::Facts::read(&interfaces()),
        interfaces: interfaces(),
        iptables,
        ip_vs: std::fs::read_to_string("/proc/net/ip_vs").ok(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bpffs_mount_points_are_read_from_the_mount_table() {
        let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid 0 0\n\
                      none /run/my\\040bpf bpf rw 0 0\ntmpfs /run tmpfs rw 0 0\n";
        assert_eq!(
            super::bpffs_mounts(mounts),
            [
                std::path::PathBuf::from("/sys/fs/bpf"),
                std::path::PathBuf::from("/run/my bpf")
            ]
        );
    }

    #[test]
    fn cap_sys_admin_is_read_from_the_effective_set() {
        assert!(super::has_cap_sys_admin(
            "Name:\tx\nCapEff:\t000001ffffffffff\n"
        ));
        // NET_ADMIN (12), NET_RAW (13), PERFMON (38), BPF (39): no SYS_ADMIN.
        assert!(!super::has_cap_sys_admin("CapEff:\t000000c000003000\n"));
        assert!(!super::has_cap_sys_admin(""));
    }
}
