//! IPv6 Services on the nftables path, with real packets in a dual-stack namespace lab
//! (`Lab::dual_stack`): `proxy-agent apply` programs `table ip6 hybrid-proxy` on node-a, and
//! clients in pods and outside the cluster see where their connections go. The last test
//! repeats the traffic with `acceleration.mode: all` and checks the IPv6 fast path served
//! the pod flows, to the same backends from the same client addresses.
//!
//! Every pin path is `/sys/fs/bpf/hpt-*` and is removed by the test.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use hybrid_proxy_tests::{
    bpf_harness::chain,
    lab::{EXTERNAL_IP6, Lab, NODE_A_IP6},
    netns::Netns,
    privileged,
    traffic::{self, Connection, Outcome, Seen},
};
use proxy_agent::bpf::{
    inspect,
    kernel::{self, KernelMaps},
    store::MapStore as _,
    writes::v6_addr,
};
use proxy_common::{StatIndex, owner};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const WEB6: &str = "[fd00:10:96::10]:80";
const WEB6_DNS: &str = "[fd00:10:96::10]:53";
const EMPTY6: &str = "[fd00:10:96::11]:80";
const DUAL4: &str = "10.96.0.20:80";
const DUAL6: &str = "[fd00:10:96::20]:80";

/// A Service with ports http (80/TCP) and dns (53/UDP). `spec` holds extra flow-mapping
/// entries (`ipFamilies`, `clusterIPs`, `type`, ...).
fn service(name: &str, cluster_ip: &str, ports: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{clusterIP: \"{cluster_ip}\", ports: [{ports}]{spec}}}\n---\n"
    )
}

const PORTS: &str = "{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}";
const IPV6_ONLY: &str = ", ipFamilies: [IPv6], ipFamilyPolicy: SingleStack";

/// An EndpointSlice of `family` (`IPv4`/`IPv6`) serving http and dns on 8080, with the
/// endpoints `endpoints` (from `Lab::endpoints`/`endpoints6`).
fn slice(service: &str, family: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-{family}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: {family}\nports: [{{name: http, port: 8080}}, {{name: dns, port: 8080, protocol: UDP}}]\n\
         endpoints: [{endpoints}]\n---\n"
    )
}

/// A dual-stack lab with backends `a1` (node-a) and `b1` (node-b) serving 8080, and a
/// client pod `c1` on node-a.
fn lab(tag: &str) -> Lab {
    Lab::dual_stack(tag).with_backends()
}

/// `n` exchanges that must all be answered (else the failure, with the node's ruleset).
fn exchanges(lab: &Lab, from: &Netns, dst: &str, udp: bool, n: usize) -> Seen {
    traffic::exchanges(from, dst, udp, n).unwrap_or_else(|e| panic!("{e}\n{}", lab.ruleset()))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

macro_rules! require_root {
    ($name:expr) => {
        if !privileged::root_or_skip($name) {
            return;
        }
    };
}

/// The Services of the ClusterIP test: `web6` (IPv6 only, both backends), `empty6` (IPv6,
/// no endpoints) and `dual` (`ipFamilies: [IPv4, IPv6]`, both backends in each family).
fn cluster_ip_manifests(lab: &Lab) -> String {
    [
        service("web6", "fd00:10:96::10", PORTS, IPV6_ONLY),
        slice("web6", "IPv6", &lab.endpoints6(&["a1", "b1"])),
        service("empty6", "fd00:10:96::11", PORTS, IPV6_ONLY),
        service(
            "dual",
            "10.96.0.20",
            PORTS,
            ", clusterIPs: [10.96.0.20, \"fd00:10:96::20\"], ipFamilies: [IPv4, IPv6], \
             ipFamilyPolicy: RequireDualStack",
        ),
        slice("dual", "IPv4", &lab.endpoints(&["a1", "b1"])),
        slice("dual", "IPv6", &lab.endpoints6(&["a1", "b1"])),
    ]
    .concat()
}

#[test]
fn ipv6_cluster_ip_spreads_over_endpoints_keeps_client_ips_and_rejects_what_it_must() {
    require_root!("ipv6_cluster_ip");
    let lab = lab("cip6");
    lab.write_manifests(&cluster_ip_manifests(&lab));
    lab.apply(&[]);
    let c1 = lab.pod("c1");
    let c1_ip6 = c1.ip6().to_string();

    // TCP and UDP, to the local and the remote endpoint, from the client's own address.
    for (dst, udp) in [(WEB6, false), (WEB6_DNS, true)] {
        let seen = exchanges(&lab, &c1.ns, dst, udp, 24);
        assert_eq!(seen.backends, set(&["a1", "b1"]), "{dst}");
        assert_eq!(seen.peers, set(&[&c1_ip6]), "{dst}");
    }
    // An unknown port on the cluster IP and a Service without endpoints are rejected.
    assert_eq!(
        traffic::tcp(&c1.ns, addr("[fd00:10:96::10]:81")),
        Outcome::Refused,
        "{}",
        lab.ruleset()
    );
    assert_eq!(traffic::tcp(&c1.ns, addr(EMPTY6)), Outcome::Refused);
    assert_eq!(
        traffic::udp(&c1.ns, addr("[fd00:10:96::11]:53")),
        Outcome::Refused
    );
    // An unallocated address of the IPv6 service CIDR is dropped.
    assert_eq!(
        traffic::tcp(&c1.ns, addr("[fd00:10:96::99]:80")),
        Outcome::Timeout
    );

    // From the node itself (host network), both endpoints are reached too.
    let from_host = exchanges(&lab, &lab.node, WEB6, false, 24);
    assert_eq!(from_host.backends, set(&["a1", "b1"]));
    assert!(!from_host.peers.contains("fd00:10:96::10"), "{from_host:?}");

    // A dual-stack Service: each family's cluster IP reaches that family's endpoints.
    let seen4 = exchanges(&lab, &c1.ns, DUAL4, false, 24);
    assert_eq!(seen4.backends, set(&["a1", "b1"]));
    assert_eq!(seen4.peers, set(&[&c1.ip.to_string()]));
    let seen6 = exchanges(&lab, &c1.ns, DUAL6, false, 24);
    assert_eq!(seen6.backends, set(&["a1", "b1"]));
    assert_eq!(seen6.peers, set(&[&c1_ip6]));
    let udp6 = exchanges(&lab, &c1.ns, "[fd00:10:96::20]:53", true, 24);
    assert_eq!(udp6.backends, set(&["a1", "b1"]));
    assert_eq!(udp6.peers, set(&[&c1_ip6]));
}

/// Node ports on node-a's IPv6 address: `edge-cluster` (30080, eTP Cluster) and
/// `edge-local` (30081, eTP Local), both with endpoints a1 (node-a) and b1 (node-b).
fn node_port_manifests(lab: &Lab) -> String {
    [
        service(
            "edge-cluster",
            "fd00:10:96::30",
            "{name: http, port: 80, nodePort: 30080}",
            &format!("{IPV6_ONLY}, type: NodePort"),
        ),
        slice("edge-cluster", "IPv6", &lab.endpoints6(&["a1", "b1"])),
        service(
            "edge-local",
            "fd00:10:96::31",
            "{name: http, port: 80, nodePort: 30081}",
            &format!("{IPV6_ONLY}, type: NodePort, externalTrafficPolicy: Local"),
        ),
        slice("edge-local", "IPv6", &lab.endpoints6(&["a1", "b1"])),
    ]
    .concat()
}

const EDGE_CLUSTER: &str = "[fd00:1::10]:30080";
const EDGE_LOCAL: &str = "[fd00:1::10]:30081";

#[test]
fn ipv6_node_port_masquerades_for_cluster_policy_and_keeps_the_client_for_local() {
    require_root!("ipv6_node_port");
    let lab = lab("np6");
    lab.write_manifests(&node_port_manifests(&lab));
    lab.apply(&[]);
    assert_eq!(EDGE_CLUSTER, format!("[{NODE_A_IP6}]:30080"));

    let cluster = exchanges(&lab, &lab.external, EDGE_CLUSTER, false, 24);
    assert_eq!(cluster.backends, set(&["a1", "b1"]));
    assert!(
        !cluster.peers.contains(EXTERNAL_IP6),
        "eTP Cluster must masquerade: {cluster:?}"
    );

    let local = exchanges(&lab, &lab.external, EDGE_LOCAL, false, 12);
    assert_eq!(local.backends, set(&["a1"]), "only the local endpoint");
    assert_eq!(
        local.peers,
        set(&[EXTERNAL_IP6]),
        "the client's address is kept"
    );
}

/// A pin path of one test on the host's bpffs; everything pinned there (and attached from
/// it) is removed on drop, from inside the lab's node namespace.
struct Pin {
    path: PathBuf,
    netns: String,
    config: PathBuf,
}

impl Pin {
    fn new(test: &str, lab: &Lab) -> Self {
        Self {
            path: PathBuf::from(format!("/sys/fs/bpf/hpt-{test}-{}", std::process::id())),
            netns: lab.node.name().to_owned(),
            config: lab.manifests().with_extension("all.yaml"),
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        let (path, netns) = (self.path.clone(), self.netns.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(f) = std::fs::File::open(format!("/run/netns/{netns}")) {
                // SAFETY: a namespace descriptor; only this thread's namespace changes.
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
                let _ = kernel::cleanup(&path);
            }
            let _ = std::fs::remove_dir_all(&path);
        })
        .join();
    }
}

/// Writes an `acceleration.mode: all` configuration with both families' CIDRs (the
/// cluster CIDRs comma-separated, the service CIDRs as a list: both forms are accepted).
fn write_all_config(pin: &Pin) -> &Path {
    std::fs::write(
        &pin.config,
        format!(
            "nodeName: node-a\nclusterCIDR: \"10.244.0.0/16,fd00:10:244::/56\"\n\
             serviceCIDRs: [10.96.0.0/12, \"fd00:10:96::/112\"]\n\
             acceleration:\n  mode: all\n  interfaces: [eth0]\n  pinPath: {}\n",
            pin.path.display()
        ),
    )
    .unwrap();
    &pin.config
}

fn pinned(pin: &Pin) -> inspect::PinnedView {
    inspect::read(&pin.path)
        .unwrap_or_else(|e| panic!("reading {}: {}", pin.path.display(), chain(&e)))
        .unwrap_or_else(|| panic!("nothing pinned at {}", pin.path.display()))
}

fn stat(view: &inspect::PinnedView, index: StatIndex) -> u64 {
    view.stats
        .iter()
        .find(|(i, _)| *i == index)
        .map_or(0, |(_, n)| *n)
}

fn fast_packets(view: &inspect::PinnedView, label: &str) -> u64 {
    view.ports
        .iter()
        .find(|p| p.label.starts_with(label))
        .unwrap_or_else(|| panic!("no port {label} in {:#?}", view.ports))
        .counter
        .fast_packets
}

/// The exchanges compared between nftables alone and the fast path.
fn all_exchanges(lab: &Lab) -> Vec<(String, Seen)> {
    let c1 = &lab.pod("c1").ns;
    [
        (c1, WEB6, false, 24),
        (c1, WEB6_DNS, true, 24),
        (c1, DUAL4, false, 24),
        (c1, DUAL6, false, 24),
        (&lab.external, EDGE_CLUSTER, false, 24),
        (&lab.external, EDGE_LOCAL, false, 12),
    ]
    .into_iter()
    .map(|(from, dst, udp, n)| {
        (
            format!("{dst}{}", if udp { "/udp" } else { "" }),
            exchanges(lab, from, dst, udp, n),
        )
    })
    .collect()
}

#[test]
fn ipv6_fast_path_serves_the_same_backends_and_client_addresses_as_nftables() {
    require_root!("ipv6_accel_identical");
    let lab = lab("aid6");
    let pin = Pin::new("identical6", &lab);
    lab.write_manifests(&[cluster_ip_manifests(&lab), node_port_manifests(&lab)].concat());
    lab.apply(&[]);
    let off = all_exchanges(&lab);

    let config = write_all_config(&pin);
    let out = lab.apply(&["--config", config.to_str().unwrap()]);
    assert!(out.contains("fast path (all)"), "{out}");
    let before = pinned(&pin);
    let on = all_exchanges(&lab);
    for ((what, a), (_, b)) in off.iter().zip(&on) {
        assert_eq!(a, b, "{what}: acceleration off vs all");
    }
    let after = pinned(&pin);

    // The IPv6-only Services' counters: the pod flows were translated by the fast path
    // (TC), and so was the eTP Local node port from outside (XDP); the eTP Cluster node
    // port needs SNAT, so nftables served it, as for IPv4.
    let fast = |label: &str| fast_packets(&after, label) - fast_packets(&before, label);
    for label in [
        "default/web6 http",
        "default/web6 dns",
        "default/edge-local http",
    ] {
        assert!(fast(label) > 0, "{label}: no fast-path packets");
    }
    assert_eq!(
        fast("default/edge-cluster http"),
        0,
        "edge-cluster needs SNAT"
    );
    let new_flows = stat(&after, StatIndex::NewFlow) - stat(&before, StatIndex::NewFlow);
    assert!(new_flows >= 48, "{new_flows} new fast-path flows");

    // An open connection to the IPv6 cluster IP is a fast-path flow of HP_FLOWS6, from the
    // client's own address, translated to one of the backends' IPv6 addresses.
    let c1 = lab.pod("c1");
    let mut conn = Connection::open(&c1.ns, addr(WEB6));
    let backend = conn.request().backend().to_owned();
    let mut maps = KernelMaps::open_pinned(&pin.path).unwrap();
    let flows6 = maps.v6().flows.entries().unwrap();
    let ours: Vec<_> = flows6
        .iter()
        .filter(|(k, v)| v6_addr(&k.src) == c1.ip6() && v.owner == owner::FAST)
        .collect();
    let backend_ip6 = lab.pod(&backend).ip6();
    assert!(
        ours.iter()
            .any(|(_, v)| v6_addr(&v.nat.addr) == backend_ip6 && u16::from_be(v.nat.port) == 8080),
        "no fast-path flow from {} to {backend_ip6}:8080 in HP_FLOWS6: {flows6:#?}",
        c1.ip6()
    );
    assert_eq!(conn.request().backend(), backend, "the flow stays put");
}
