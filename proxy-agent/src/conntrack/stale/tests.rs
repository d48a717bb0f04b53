//! The cleanup rules, stated as which flows survive the cleanup after a sync.

use std::{collections::BTreeSet, net::SocketAddr};

use k8s_openapi::api::{core::v1 as core, discovery::v1::EndpointSlice};

use super::*;
use crate::{
    conntrack::{FakeConntrack, Tuple},
    model::fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder},
    plan::{NodePortAddresses, PlanSettings, compute},
};

const NODE: &str = "node-a";
const NODE_IP: &str = "192.168.1.10";
const NODE_IP6: &str = "fd00:1::10";
/// A client pod on this node.
const POD: &str = "10.244.1.9";
const POD6: &str = "fd00:244:1::9";

fn settings() -> PlanSettings {
    PlanSettings {
        node_name: NODE.into(),
        node_port_addresses: NodePortAddresses::Primary,
        ..PlanSettings::default()
    }
}

fn all_local_node_ports() -> PlanSettings {
    PlanSettings {
        node_port_addresses: NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().unwrap()]),
        ..settings()
    }
}

fn cluster(services: Vec<core::Service>, slices: Vec<EndpointSlice>) -> ClusterState {
    let mut state = ClusterState::new();
    state.set_node(Some(
        NodeBuilder::new(NODE)
            .internal_ip(NODE_IP)
            .internal_ip(NODE_IP6)
            .build(),
    ));
    for svc in services {
        state.upsert_service(svc).unwrap();
    }
    for slice in slices {
        state.upsert_slice(slice).unwrap();
    }
    state
}

/// The UDP Service `ns/dns` on 10.96.0.10:53, targeting the endpoints' port `dns`.
fn dns() -> ServiceBuilder {
    ServiceBuilder::cluster_ip("ns", "dns", "10.96.0.10")
        .port("dns", 53)
        .protocol("UDP")
}

/// Its EndpointSlice, with the endpoints listening on 5353.
fn dns_slice() -> SliceBuilder {
    SliceBuilder::new("ns", "dns").port_with_protocol("dns", 5353, "UDP")
}

/// A flow from `client:sport` to `dst` answered from `backend`.
fn flow(protocol: Protocol, (client, sport): (&str, u16), dst: &str, backend: &str) -> Flow {
    let dst: SocketAddr = dst.parse().unwrap();
    let backend: SocketAddr = backend.parse().unwrap();
    let client = client.parse().unwrap();
    let protocol = protocol.number();
    Flow {
        original: Tuple {
            src: client,
            dst: dst.ip(),
            src_port: sport,
            dst_port: dst.port(),
            protocol,
        },
        reply: Tuple {
            src: backend.ip(),
            dst: client,
            src_port: backend.port(),
            dst_port: sport,
            protocol,
        },
    }
}

/// A UDP flow from the local client pod, from source port `sport`.
fn udp(sport: u16, dst: &str, backend: &str) -> Flow {
    flow(Protocol::Udp, (POD, sport), dst, backend)
}

struct Case {
    name: &'static str,
    services: Vec<core::Service>,
    slices: Vec<EndpointSlice>,
    settings: PlanSettings,
    /// The conntrack table before the cleanup, by label.
    flows: Vec<(&'static str, Flow)>,
    /// The labels of the flows the cleanup deletes.
    deleted: &'static [&'static str],
}

impl Default for Case {
    fn default() -> Self {
        Self {
            name: "",
            services: vec![dns().build()],
            slices: Vec::new(),
            settings: settings(),
            flows: Vec::new(),
            deleted: &[],
        }
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one table: each case is a few lines of fixtures"
)]
fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "flows answered by a removed endpoint go, flows to the remaining one stay",
            slices: vec![dns_slice().endpoint("10.244.2.6", "node-b").build()],
            flows: vec![
                ("via removed", udp(1001, "10.96.0.10:53", "10.244.2.5:5353")),
                (
                    "via remaining",
                    udp(1002, "10.96.0.10:53", "10.244.2.6:5353"),
                ),
            ],
            deleted: &["via removed"],
            ..Case::default()
        },
        Case {
            name: "a terminating endpoint that still serves keeps its flows",
            slices: vec![
                dns_slice()
                    .endpoint("10.244.2.5", "node-b")
                    .terminating_serving()
                    .endpoint("10.244.2.6", "node-b")
                    .build(),
            ],
            flows: vec![
                (
                    "via terminating",
                    udp(1001, "10.96.0.10:53", "10.244.2.5:5353"),
                ),
                ("via ready", udp(1002, "10.96.0.10:53", "10.244.2.6:5353")),
            ],
            deleted: &[],
            ..Case::default()
        },
        Case {
            name: "an endpoint that stopped serving loses its flows",
            slices: vec![
                dns_slice()
                    .endpoint("10.244.2.5", "node-b")
                    .not_ready()
                    .endpoint("10.244.2.6", "node-b")
                    .build(),
            ],
            flows: vec![
                (
                    "via not ready",
                    udp(1001, "10.96.0.10:53", "10.244.2.5:5353"),
                ),
                ("via ready", udp(1002, "10.96.0.10:53", "10.244.2.6:5353")),
            ],
            deleted: &["via not ready"],
            ..Case::default()
        },
        Case {
            name: "a Service without serving endpoints is left alone",
            slices: vec![
                dns_slice()
                    .endpoint("10.244.2.5", "node-b")
                    .not_ready()
                    .build(),
            ],
            flows: vec![
                (
                    "via not ready",
                    udp(1001, "10.96.0.10:53", "10.244.2.5:5353"),
                ),
                ("not DNATed", udp(1002, "10.96.0.10:53", "10.96.0.10:53")),
            ],
            deleted: &[],
            ..Case::default()
        },
        Case {
            name: "flows created while the Service had no endpoint go once it has one",
            slices: vec![dns_slice().endpoint("10.244.2.6", "node-b").build()],
            flows: vec![
                ("not DNATed", udp(1001, "10.96.0.10:53", "10.96.0.10:53")),
                ("DNATed", udp(1002, "10.96.0.10:53", "10.244.2.6:5353")),
            ],
            deleted: &["not DNATed"],
            ..Case::default()
        },
        Case {
            name: "after a target port change, flows to the old port go",
            slices: vec![
                SliceBuilder::new("ns", "dns")
                    .port_with_protocol("dns", 5354, "UDP")
                    .endpoint("10.244.2.5", "node-b")
                    .build(),
            ],
            flows: vec![
                ("old port", udp(1001, "10.96.0.10:53", "10.244.2.5:5353")),
                ("new port", udp(1002, "10.96.0.10:53", "10.244.2.5:5354")),
            ],
            deleted: &["old port"],
            ..Case::default()
        },
        Case {
            name: "external and load-balancer IPs are cleaned like the cluster IP",
            services: vec![
                dns()
                    .external_ips(&["203.0.113.7"])
                    .load_balancer(&["198.51.100.8"])
                    .build(),
            ],
            slices: vec![dns_slice().endpoint("10.244.2.6", "node-b").build()],
            flows: vec![
                (
                    "external removed",
                    udp(1001, "203.0.113.7:53", "10.244.2.5:5353"),
                ),
                (
                    "external kept",
                    udp(1002, "203.0.113.7:53", "10.244.2.6:5353"),
                ),
                (
                    "lb removed",
                    udp(1003, "198.51.100.8:53", "10.244.2.5:5353"),
                ),
                ("lb kept", udp(1004, "198.51.100.8:53", "10.244.2.6:5353")),
                // Another port on the same address belongs to no Service port.
                (
                    "other port",
                    udp(1005, "198.51.100.8:54", "10.244.2.5:5353"),
                ),
            ],
            deleted: &["external removed", "lb removed"],
            ..Case::default()
        },
        Case {
            name: "node ports are cleaned on the node-port addresses only",
            services: vec![dns().node_port(30053).build()],
            slices: vec![dns_slice().endpoint("10.244.2.6", "node-b").build()],
            flows: vec![
                (
                    "node IP removed",
                    udp(1001, "192.168.1.10:30053", "10.244.2.5:5353"),
                ),
                (
                    "node IP kept",
                    udp(1002, "192.168.1.10:30053", "10.244.2.6:5353"),
                ),
                (
                    "outside server on the same port",
                    udp(1003, "8.8.8.8:30053", "8.8.8.8:30053"),
                ),
                (
                    "address without node ports",
                    udp(1004, "192.168.1.11:30053", "10.244.2.5:5353"),
                ),
            ],
            deleted: &["node IP removed"],
            ..Case::default()
        },
        Case {
            name: "with node ports on every local address, any address but loopback counts",
            services: vec![dns().node_port(30053).build()],
            slices: vec![dns_slice().endpoint("10.244.2.6", "node-b").build()],
            settings: all_local_node_ports(),
            flows: vec![
                (
                    "second address",
                    udp(1001, "192.168.1.11:30053", "10.244.2.5:5353"),
                ),
                ("loopback", udp(1002, "127.0.0.1:30053", "127.0.0.1:30053")),
            ],
            deleted: &["second address"],
        },
        Case {
            name: "a Service address wins over another Service's equal node port",
            services: vec![
                dns().node_port(30053).build(),
                ServiceBuilder::cluster_ip("ns", "game", "10.96.0.20")
                    .port("game", 30053)
                    .protocol("UDP")
                    .build(),
            ],
            slices: vec![
                dns_slice().endpoint("10.244.2.6", "node-b").build(),
                SliceBuilder::new("ns", "game")
                    .port_with_protocol("game", 30053, "UDP")
                    .endpoint("10.244.2.7", "node-b")
                    .build(),
            ],
            settings: all_local_node_ports(),
            flows: vec![
                (
                    "game serving",
                    udp(1001, "10.96.0.20:30053", "10.244.2.7:30053"),
                ),
                (
                    "game removed",
                    udp(1002, "10.96.0.20:30053", "10.244.2.8:30053"),
                ),
            ],
            deleted: &["game removed"],
        },
        Case {
            name: "TCP is never cleaned",
            services: vec![
                ServiceBuilder::cluster_ip("ns", "web", "10.96.0.30")
                    .port("http", 80)
                    .build(),
            ],
            slices: vec![
                SliceBuilder::new("ns", "web")
                    .port("http", 8080)
                    .endpoint("10.244.2.6", "node-b")
                    .build(),
            ],
            flows: vec![(
                "tcp via removed",
                flow(
                    Protocol::Tcp,
                    (POD, 1001),
                    "10.96.0.30:80",
                    "10.244.2.5:8080",
                ),
            )],
            deleted: &[],
            ..Case::default()
        },
        Case {
            name: "SCTP is cleaned like UDP",
            services: vec![
                ServiceBuilder::cluster_ip("ns", "sig", "10.96.0.40")
                    .port("sig", 3868)
                    .protocol("SCTP")
                    .build(),
            ],
            slices: vec![
                SliceBuilder::new("ns", "sig")
                    .port_with_protocol("sig", 3868, "SCTP")
                    .endpoint("10.244.2.6", "node-b")
                    .build(),
            ],
            flows: vec![
                (
                    "sctp via removed",
                    flow(
                        Protocol::Sctp,
                        (POD, 3868),
                        "10.96.0.40:3868",
                        "10.244.2.5:3868",
                    ),
                ),
                (
                    "sctp via serving",
                    flow(
                        Protocol::Sctp,
                        (POD, 3869),
                        "10.96.0.40:3868",
                        "10.244.2.6:3868",
                    ),
                ),
            ],
            deleted: &["sctp via removed"],
            ..Case::default()
        },
        Case {
            name: "endpoints the policy no longer picks keep their flows while they serve",
            services: vec![dns().internal_policy_local().build()],
            slices: vec![
                dns_slice()
                    .endpoint("10.244.1.5", NODE)
                    .endpoint("10.244.2.6", "node-b")
                    .build(),
            ],
            flows: vec![
                (
                    "remote serving",
                    udp(1001, "10.96.0.10:53", "10.244.2.6:5353"),
                ),
                (
                    "remote removed",
                    udp(1002, "10.96.0.10:53", "10.244.2.7:5353"),
                ),
            ],
            deleted: &["remote removed"],
            ..Case::default()
        },
        Case {
            name: "dual stack: each family is judged on its own endpoints",
            services: vec![
                ServiceBuilder::cluster_ip("ns", "dns", "10.96.0.10,fd00:96::10")
                    .port("dns", 53)
                    .protocol("UDP")
                    .build(),
            ],
            // IPv6 has an endpoint, IPv4 none: only IPv6 flows are judged.
            slices: vec![
                dns_slice()
                    .name("dns-v6")
                    .ipv6()
                    .endpoint("fd00:244:2::6", "node-b")
                    .build(),
            ],
            flows: vec![
                (
                    "v6 removed",
                    flow(
                        Protocol::Udp,
                        (POD6, 1001),
                        "[fd00:96::10]:53",
                        "[fd00:244:2::5]:5353",
                    ),
                ),
                (
                    "v6 serving",
                    flow(
                        Protocol::Udp,
                        (POD6, 1002),
                        "[fd00:96::10]:53",
                        "[fd00:244:2::6]:5353",
                    ),
                ),
                ("v4 removed", udp(1003, "10.96.0.10:53", "10.244.2.5:5353")),
            ],
            deleted: &["v6 removed"],
            ..Case::default()
        },
        Case {
            name: "flows to anything but a Service address are not ours",
            slices: vec![dns_slice().endpoint("10.244.2.6", "node-b").build()],
            flows: vec![
                (
                    "pod to pod",
                    udp(1001, "10.244.2.5:5353", "10.244.2.5:5353"),
                ),
                ("other port", udp(1002, "10.96.0.10:54", "10.244.2.5:5353")),
            ],
            deleted: &[],
            ..Case::default()
        },
    ]
}

#[test]
fn cleanup_deletes_exactly_the_stale_flows() {
    for case in cases() {
        let state = cluster(case.services, case.slices);
        let plan = compute(&state, &case.settings);
        assert!(plan.errors.is_empty(), "{}: {:?}", case.name, plan.errors);
        let mut conntrack = FakeConntrack::with_flows(case.flows.iter().map(|(_, f)| *f));

        let report = clean_stale_flows(&mut conntrack, &plan, &state)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));

        let left: BTreeSet<Flow> = conntrack.dump().into_iter().collect();
        let deleted: BTreeSet<&str> = case
            .flows
            .iter()
            .filter(|(_, f)| !left.contains(f))
            .map(|(label, _)| *label)
            .collect();
        let want: BTreeSet<&str> = case.deleted.iter().copied().collect();
        assert_eq!(deleted, want, "{}", case.name);
        assert_eq!(report.deleted, want.len(), "{}", case.name);
        assert_eq!(report.stale, want.len(), "{}", case.name);
    }
}

#[test]
fn one_filter_per_service_address_and_stale_backend() {
    let state = cluster(
        vec![dns().node_port(30053).build()],
        vec![dns_slice().endpoint("10.244.2.6", "node-b").build()],
    );
    let plan = compute(&state, &settings());
    let flows = [
        udp(1001, "10.96.0.10:53", "10.244.2.5:5353"),
        flow(
            Protocol::Udp,
            ("10.244.3.3", 1001),
            "10.96.0.10:53",
            "10.244.2.5:5353",
        ),
        udp(1002, "10.96.0.10:53", "10.244.2.7:5353"),
        udp(1003, "192.168.1.10:30053", "10.244.2.5:5353"),
        udp(1004, "10.96.0.10:53", "10.244.2.6:5353"),
    ];
    let ip = |s: &str| s.parse().unwrap();
    assert_eq!(
        stale_flows(&plan, &state, &flows),
        vec![
            FlowFilter::service_backend(17, (ip("10.96.0.10"), 53), (ip("10.244.2.5"), 5353)),
            FlowFilter::service_backend(17, (ip("10.96.0.10"), 53), (ip("10.244.2.7"), 5353)),
            FlowFilter::service_backend(17, (ip("192.168.1.10"), 30053), (ip("10.244.2.5"), 5353)),
        ]
    );
}

/// Records what the cleanup asks of the kernel.
#[derive(Default)]
struct Recording {
    inner: FakeConntrack,
    listed: Vec<(IpFamily, u8)>,
    deletes: usize,
}

impl Conntrack for Recording {
    fn flows(&mut self, family: IpFamily, protocol: u8) -> Result<Vec<Flow>, ConntrackError> {
        self.listed.push((family, protocol));
        self.inner.flows(family, protocol)
    }

    fn delete(&mut self, filters: &[FlowFilter]) -> Result<usize, ConntrackError> {
        self.deletes += 1;
        self.inner.delete(filters)
    }
}

#[test]
fn only_families_and_protocols_with_serving_cleaned_ports_are_listed() {
    let state = cluster(
        vec![
            ServiceBuilder::cluster_ip("ns", "web", "10.96.0.30")
                .port("http", 80)
                .build(),
            dns().build(),
        ],
        vec![
            SliceBuilder::new("ns", "web")
                .port("http", 8080)
                .endpoint("10.244.2.6", "node-b")
                .build(),
        ],
    );
    // A TCP Service, and a UDP one without endpoints: nothing to list at all.
    let plan = compute(&state, &settings());
    let mut ct = Recording::default();
    let report = clean_stale_flows(&mut ct, &plan, &state).unwrap();
    assert_eq!(report, CleanupReport::default());
    assert!(ct.listed.is_empty());
    assert_eq!(ct.deletes, 0);

    // Once the UDP Service has an endpoint, its family and protocol are listed; nothing is
    // stale, so nothing is deleted.
    let mut state = state;
    state
        .upsert_slice(dns_slice().endpoint("10.244.2.6", "node-b").build())
        .unwrap();
    let plan = compute(&state, &settings());
    ct.inner
        .insert(udp(1001, "10.96.0.10:53", "10.244.2.6:5353"));
    let report = clean_stale_flows(&mut ct, &plan, &state).unwrap();
    assert_eq!(ct.listed, vec![(IpFamily::V4, 17)]);
    assert_eq!(ct.deletes, 0);
    assert_eq!(
        report,
        CleanupReport {
            listed: 1,
            stale: 0,
            deleted: 0
        }
    );
}

#[test]
fn a_refusing_kernel_fails_the_cleanup() {
    let state = cluster(
        vec![dns().build()],
        vec![dns_slice().endpoint("10.244.2.6", "node-b").build()],
    );
    let plan = compute(&state, &settings());
    let mut ct = FakeConntrack::with_flows([udp(1001, "10.96.0.10:53", "10.244.2.5:5353")]);
    ct.fail_with(Some(libc::EPERM));
    let err = clean_stale_flows(&mut ct, &plan, &state).unwrap_err();
    assert!(matches!(err, ConntrackError::Refused { .. }), "{err}");
    ct.fail_with(None);
    assert_eq!(ct.dump().len(), 1);
}
