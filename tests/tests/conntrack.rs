//! Conntrack through ctnetlink on a real kernel: UDP flows created by real packets inside a
//! network namespace (sent to backends by DNAT in a small nftables table, as a Service's would be), listed and
//! deleted through `NetlinkConntrack`, cross-checked with the `conntrack` tool when installed.
//!
//! Everything happens in a namespace the test creates: its loopback carries a client, a
//! "service" address and two "backend" addresses, and the table `inet hpt-ct` there DNATs by
//! client source port, so which flow went to which backend is known in advance.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use hybrid_proxy_tests::{netns::Netns, privileged};
use proxy_agent::{
    conntrack::{Conntrack as _, Flow, FlowFilter, NetlinkConntrack, Tuple, clean_stale_flows},
    model::{
        ClusterState, IpFamily,
        fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder},
    },
    plan::{PlanSettings, compute},
};

const UDP: u8 = 17;
const SERVICE: &str = "10.96.0.10";
const SERVICE6: &str = "fd00:96::10";
const CLIENT: &str = "10.244.1.9";
const CLIENT6: &str = "fd00:244:1::9";
/// DNAT sends client source ports 41000..41100 to backend A, 41100..41200 to backend B.
const BACKEND_A: &str = "10.244.2.5";
const BACKEND_B: &str = "10.244.2.6";
const BACKEND_A6: &str = "fd00:244:2::5";
const BACKEND_B6: &str = "fd00:244:2::6";
const BACKEND_PORT: u16 = 5353;

const RULESET: &str = "
table inet hpt-ct {
    chain output {
        type filter hook output priority 0; policy accept;
        ct state new accept
    }
    chain dnat-output {
        type nat hook output priority -100; policy accept;
        ip daddr 10.96.0.10 udp dport 53 udp sport 41000-41099 dnat ip to 10.244.2.5:5353
        ip daddr 10.96.0.10 udp dport 53 udp sport 41100-41199 dnat ip to 10.244.2.6:5353
        ip6 daddr fd00:96::10 udp dport 53 udp sport 41000-41099 dnat ip6 to [fd00:244:2::5]:5353
        ip6 daddr fd00:96::10 udp dport 53 udp sport 41100-41199 dnat ip6 to [fd00:244:2::6]:5353
    }
}
";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A namespace whose loopback holds every address the test uses, with conntrack on and the
/// DNAT table loaded.
fn lab(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    for addr in [SERVICE, CLIENT, BACKEND_A, BACKEND_B] {
        ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
    }
    for addr in [SERVICE6, CLIENT6, BACKEND_A6, BACKEND_B6] {
        ns.ip(&["addr", "add", &format!("{addr}/128"), "dev", "lo", "nodad"]);
    }
    let file = std::env::temp_dir().join(format!("{}.nft", ns.name()));
    std::fs::write(&file, RULESET).expect("writing the ruleset");
    let out = ns.exec("nft", &["-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "loading the hpt-ct table: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ns
}

/// Sends one datagram from `client:sport` to `dst` (inside the namespace: call from
/// `Netns::run`).
fn send(client: &str, sport: u16, dst: SocketAddr) {
    let socket = UdpSocket::bind(SocketAddr::new(ip(client), sport))
        .unwrap_or_else(|e| panic!("binding {client}:{sport}: {e}"));
    socket
        .send_to(b"query", dst)
        .unwrap_or_else(|e| panic!("sending from {client}:{sport} to {dst}: {e}"));
}

/// The flow conntrack records for `client:sport -> dst`, answered from `backend`.
fn expected(client: &str, sport: u16, dst: SocketAddr, backend: SocketAddr) -> Flow {
    Flow {
        original: Tuple {
            src: ip(client),
            dst: dst.ip(),
            src_port: sport,
            dst_port: dst.port(),
            protocol: UDP,
        },
        reply: Tuple {
            src: backend.ip(),
            dst: ip(client),
            src_port: backend.port(),
            dst_port: sport,
            protocol: UDP,
        },
    }
}

/// Three flows through the "service" to each backend, per family, plus one flow straight to a
/// backend (no NAT); returns them as conntrack should record them. Also checks that the
/// backends received the translated datagrams, so the table is known to work.
fn make_flows() -> Vec<Flow> {
    let mut flows = Vec::new();
    for (client, service, a, b) in [
        (CLIENT, SERVICE, BACKEND_A, BACKEND_B),
        (CLIENT6, SERVICE6, BACKEND_A6, BACKEND_B6),
    ] {
        let backends = [a, b].map(|backend| {
            let socket = UdpSocket::bind(SocketAddr::new(ip(backend), BACKEND_PORT))
                .unwrap_or_else(|e| panic!("binding backend {backend}: {e}"));
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            socket
        });
        let dst = SocketAddr::new(ip(service), 53);
        for (base, backend) in [(41000, a), (41100, b)] {
            for sport in base..base + 3 {
                send(client, sport, dst);
                let backend = SocketAddr::new(ip(backend), BACKEND_PORT);
                flows.push(expected(client, sport, dst, backend));
            }
        }
        for socket in &backends {
            for _ in 0..3 {
                let mut buf = [0; 16];
                let (_, from) = socket.recv_from(&mut buf).unwrap_or_else(|e| {
                    panic!(
                        "backend {} received no DNATed datagram: {e}",
                        socket.local_addr().unwrap()
                    )
                });
                assert_eq!(from.ip(), ip(client));
            }
        }
        let direct = SocketAddr::new(ip(b), 7000);
        send(client, 42000, direct);
        flows.push(expected(client, 42000, direct, direct));
    }
    flows
}

fn listed(ct: &mut NetlinkConntrack, family: IpFamily) -> BTreeSet<Flow> {
    ct.flows(family, UDP)
        .unwrap_or_else(|e| panic!("listing {family:?} UDP flows: {e}"))
        .into_iter()
        .collect()
}

fn of_family(flows: &[Flow], family: IpFamily) -> BTreeSet<Flow> {
    flows
        .iter()
        .filter(|f| f.family() == family)
        .copied()
        .collect()
}

/// What the `conntrack` tool lists in the namespace, one line per flow; `None` when it is
/// not installed.
fn conntrack_tool(ns: &Netns, family: &str) -> Option<String> {
    if which("conntrack").is_none() {
        eprintln!("conntrack tool not installed: skipping the cross-check");
        return None;
    }
    let out = ns.exec("conntrack", &["-L", "-p", "udp", "-f", family]);
    assert!(
        out.status.success(),
        "conntrack -L: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// The source ports of the flows the tool listed.
fn tool_ports(listing: &str) -> BTreeSet<u16> {
    listing
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("sport="))
                .map(|p| p.parse().unwrap())
        })
        .collect()
}

fn ports(flows: &BTreeSet<Flow>) -> BTreeSet<u16> {
    flows.iter().map(|f| f.original.src_port).collect()
}

#[test]
fn udp_flows_are_listed_with_their_nat_and_deleted_exactly_by_filter() {
    if !privileged::root_or_skip("udp_flows_are_listed_with_their_nat_and_deleted_exactly") {
        return;
    }
    let ns = lab("ct");
    let flows = ns.run(make_flows);

    let (v4, v6, tcp) = ns.run(|| {
        let mut ct = NetlinkConntrack::with_timeout(Duration::from_secs(5));
        let tcp = ct.flows(IpFamily::V4, 6).expect("listing TCP flows");
        (
            listed(&mut ct, IpFamily::V4),
            listed(&mut ct, IpFamily::V6),
            tcp,
        )
    });
    assert_eq!(v4, of_family(&flows, IpFamily::V4), "IPv4 UDP flows");
    assert_eq!(v6, of_family(&flows, IpFamily::V6), "IPv6 UDP flows");
    assert!(tcp.is_empty(), "no TCP flows were made: {tcp:?}");
    if let Some(listing) = conntrack_tool(&ns, "ipv4") {
        assert_eq!(tool_ports(&listing), ports(&v4), "conntrack -L:\n{listing}");
    }

    // Delete backend A's flows through the service, in both families.
    let filters = [(SERVICE, BACKEND_A), (SERVICE6, BACKEND_A6)].map(|(service, backend)| {
        FlowFilter::service_backend(UDP, (ip(service), 53), (ip(backend), BACKEND_PORT))
    });
    let (deleted, again, v4_after, v6_after) = ns.run(|| {
        let mut ct = NetlinkConntrack::new();
        let deleted = ct.delete(&filters).expect("deleting backend A's flows");
        let again = ct.delete(&filters).expect("deleting them again");
        (
            deleted,
            again,
            listed(&mut ct, IpFamily::V4),
            listed(&mut ct, IpFamily::V6),
        )
    });
    let doomed = |f: &Flow| filters.iter().any(|filter| filter.matches(f));
    let kept: Vec<Flow> = flows.iter().filter(|f| !doomed(f)).copied().collect();
    assert_eq!(
        flows.len() - kept.len(),
        6,
        "the filters select 3 flows a family"
    );
    assert_eq!(deleted, 6);
    assert_eq!(again, 0, "nothing left to delete");
    assert_eq!(v4_after, of_family(&kept, IpFamily::V4));
    assert_eq!(v6_after, of_family(&kept, IpFamily::V6));
    for (family, after) in [("ipv4", &v4_after), ("ipv6", &v6_after)] {
        if let Some(listing) = conntrack_tool(&ns, family) {
            assert_eq!(
                tool_ports(&listing),
                ports(after),
                "conntrack -L:\n{listing}"
            );
        }
    }
}

#[test]
fn a_dump_spanning_many_datagrams_lists_and_deletes_every_flow() {
    const FLOWS: u16 = 1500;
    if !privileged::root_or_skip("a_dump_spanning_many_datagrams") {
        return;
    }
    let ns = lab("ct-many");
    let target = SocketAddr::new(ip(BACKEND_B), 7001);
    let (listed_count, deleted, left) = ns.run(|| {
        for sport in 43000..43000 + FLOWS {
            send(CLIENT, sport, target);
        }
        let mut ct = NetlinkConntrack::new();
        let mine = |flows: Vec<Flow>| {
            flows
                .into_iter()
                .filter(|f| f.original.dst == target.ip() && f.original.dst_port == 7001)
                .map(|f| f.original.src_port)
                .collect::<BTreeSet<u16>>()
        };
        let listed_ports = mine(ct.flows(IpFamily::V4, UDP).expect("listing"));
        let deleted = ct
            .delete(&[FlowFilter {
                original_dst_port: Some(7001),
                ..FlowFilter::protocol(UDP)
            }])
            .expect("deleting");
        let left = mine(ct.flows(IpFamily::V4, UDP).expect("listing again"));
        (listed_ports, deleted, left)
    });
    assert_eq!(
        listed_count,
        (43000..43000 + FLOWS).collect::<BTreeSet<u16>>()
    );
    assert_eq!(deleted, usize::from(FLOWS));
    assert!(left.is_empty(), "{} flows survived", left.len());
}

#[test]
fn the_stale_flow_cleanup_deletes_flows_to_a_removed_endpoint_on_a_real_kernel() {
    if !privileged::root_or_skip("the_stale_flow_cleanup_deletes_flows") {
        return;
    }
    let ns = lab("ct-stale");
    let flows = ns.run(make_flows);

    // The Service now has only backend B; A was removed.
    let mut state = ClusterState::new();
    state.set_node(Some(
        NodeBuilder::new("node-a")
            .internal_ip("192.168.1.10")
            .build(),
    ));
    state
        .upsert_service(
            ServiceBuilder::cluster_ip("ns", "dns", &format!("{SERVICE},{SERVICE6}"))
                .port("dns", 53)
                .protocol("UDP")
                .build(),
        )
        .unwrap();
    for (name, backend, v6) in [("dns-1", BACKEND_B, false), ("dns-2", BACKEND_B6, true)] {
        let slice = SliceBuilder::new("ns", "dns")
            .name(name)
            .port_with_protocol("dns", i32::from(BACKEND_PORT), "UDP")
            .endpoint(backend, "node-b");
        state
            .upsert_slice(if v6 { slice.ipv6() } else { slice }.build())
            .unwrap();
    }
    let plan = compute(
        &state,
        &PlanSettings {
            node_name: "node-a".into(),
            ..PlanSettings::default()
        },
    );
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);

    let (report, v4, v6) = ns.run(|| {
        let mut ct = NetlinkConntrack::new();
        let report = clean_stale_flows(&mut ct, &plan, &state).expect("cleaning up");
        (
            report,
            listed(&mut ct, IpFamily::V4),
            listed(&mut ct, IpFamily::V6),
        )
    });
    let via_a = |f: &Flow| [ip(BACKEND_A), ip(BACKEND_A6)].contains(&f.reply.src);
    let kept: Vec<Flow> = flows.iter().filter(|f| !via_a(f)).copied().collect();
    assert_eq!(report.listed, flows.len());
    assert_eq!(report.stale, 2, "one filter per family: {report:?}");
    assert_eq!(report.deleted, 6);
    assert_eq!(v4, of_family(&kept, IpFamily::V4));
    assert_eq!(v6, of_family(&kept, IpFamily::V6));
}
