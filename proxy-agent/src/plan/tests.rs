//! Behaviour of the plan, stated as where packets go.

use std::net::IpAddr;

use k8s_openapi::api::{core::v1 as core, discovery::v1::EndpointSlice};

use super::{
    DetectLocal, NodePortAddresses, PlanSettings, ProxyPlan, compute,
    route::{Packet, Route, Source, Target},
};
use crate::model::{
    ClusterState, InvalidReason, ObjectKind, Protocol, ServiceName,
    fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder},
};

const NODE: &str = "node-a";
const NODE_IP: &str = "192.168.1.10";
const NODE_IP6: &str = "fd00:1::10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn settings() -> PlanSettings {
    PlanSettings {
        node_name: NODE.into(),
        detect_local: DetectLocal::ClusterCidr,
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/56".parse().unwrap(),
        ],
        service_cidrs: vec![
            "10.96.0.0/12".parse().unwrap(),
            "fd00:96::/108".parse().unwrap(),
        ],
        node_port_addresses: NodePortAddresses::Primary,
        local_addresses: Vec::new(),
        masquerade_all: false,
    }
}

fn node() -> core::Node {
    NodeBuilder::new(NODE)
        .internal_ip(NODE_IP)
        .internal_ip(NODE_IP6)
        .pod_cidr("10.244.1.0/24")
        .zone("z1")
        .build()
}

fn plan_with(
    services: Vec<core::Service>,
    slices: Vec<EndpointSlice>,
    settings: &PlanSettings,
) -> ProxyPlan {
    let mut state = ClusterState::new();
    state.set_node(Some(node()));
    for svc in services {
        state.upsert_service(svc).unwrap();
    }
    for slice in slices {
        state.upsert_slice(slice).unwrap();
    }
    compute(&state, settings)
}

fn plan(services: Vec<core::Service>, slices: Vec<EndpointSlice>) -> ProxyPlan {
    plan_with(services, slices, &settings())
}

/// A pod on this node.
fn pod(src: &str) -> Source {
    Source::arriving(ip(src), "cali0")
}

/// A client outside the cluster, arriving on the node's uplink.
fn outside(src: &str) -> Source {
    Source::arriving(ip(src), "eth0")
}

fn host() -> Source {
    Source::host(ip(NODE_IP))
}

fn send(plan: &ProxyPlan, source: Source, dst: &str, protocol: Protocol, port: u16) -> Route {
    plan.route(&Packet {
        source,
        dst: ip(dst),
        protocol,
        port,
    })
}

fn tcp(plan: &ProxyPlan, source: Source, dst: &str, port: u16) -> Route {
    send(plan, source, dst, Protocol::Tcp, port)
}

/// The route that spreads over these `ip:port` endpoints with this masquerade decision.
fn to(endpoints: &[&str], masquerade: bool) -> Route {
    let mut targets: Vec<Target> = endpoints
        .iter()
        .map(|e| {
            let addr: std::net::SocketAddr = e.parse().unwrap();
            Target {
                endpoint: super::PlanEndpoint {
                    ip: addr.ip(),
                    port: addr.port(),
                    local: addr.ip().to_string().starts_with("10.244.1.")
                        || addr.ip().to_string().starts_with("fd00:244:0:1::"),
                },
                masquerade,
            }
        })
        .collect();
    targets.sort();
    Route::Dnat(targets)
}

fn sorted(route: Route) -> Route {
    match route {
        Route::Dnat(mut t) => {
            t.sort();
            Route::Dnat(t)
        }
        other => other,
    }
}

macro_rules! expect_routes {
    ($plan:expr, $( $packet:expr => $want:expr ),+ $(,)?) => {
        $( assert_eq!(sorted($packet), $want, "{}", stringify!($packet)); )+
    };
}

/// `web` on 10.96.0.10:80 -> port name `http`, endpoints on this node (10.244.1.5) and on
/// node-b (10.244.2.5), both ready, serving 8080.
fn web() -> ServiceBuilder {
    ServiceBuilder::cluster_ip("default", "web", "10.96.0.10").port("http", 80)
}

fn web_slice() -> SliceBuilder {
    SliceBuilder::new("default", "web")
        .port("http", 8080)
        .endpoint("10.244.1.5", NODE)
        .endpoint("10.244.2.5", "node-b")
}

const BOTH: &[&str] = &["10.244.1.5:8080", "10.244.2.5:8080"];
const LOCAL: &[&str] = &["10.244.1.5:8080"];

#[test]
fn cluster_ip_spreads_over_all_endpoints_and_keeps_pod_sources() {
    let p = plan(vec![web().build()], vec![web_slice().build()]);
    expect_routes!(p,
        tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80) => to(BOTH, false),
        // From outside the cluster CIDR (a routed client, or the node itself): masqueraded,
        // because the reply could come back through another node.
        tcp(&p, outside("172.16.0.1"), "10.96.0.10", 80) => to(BOTH, true),
        tcp(&p, host(), "10.96.0.10", 80) => to(BOTH, true),
        // An unknown port on a cluster IP is rejected, an unallocated cluster IP dropped,
        // anything else untouched.
        tcp(&p, pod("10.244.1.9"), "10.96.0.10", 81) => Route::Reject,
        tcp(&p, pod("10.244.1.9"), "10.96.0.99", 80) => Route::Drop,
        tcp(&p, pod("10.244.1.9"), "8.8.8.8", 80) => Route::NotService,
        send(&p, pod("10.244.1.9"), "10.96.0.10", Protocol::Udp, 80) => Route::Reject,
    );
}

#[test]
fn ports_map_to_target_ports_by_name_through_the_slices() {
    let svc = web().port("metrics", 9090).build();
    let slice = web_slice().port("metrics", 9100).build();
    let p = plan(vec![svc], vec![slice]);
    expect_routes!(p,
        tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80) => to(BOTH, false),
        tcp(&p, pod("10.244.1.9"), "10.96.0.10", 9090) => to(&["10.244.1.5:9100", "10.244.2.5:9100"], false),
    );
    // A Service port no slice names has no endpoints.
    let p = plan(
        vec![web().port("admin", 8443).build()],
        vec![web_slice().build()],
    );
    assert_eq!(
        tcp(&p, pod("10.244.1.9"), "10.96.0.10", 8443),
        Route::Reject
    );
}

#[test]
fn udp_and_sctp_ports_are_separate_services() {
    let svc = ServiceBuilder::cluster_ip("kube-system", "dns", "10.96.0.53")
        .port("dns", 53)
        .protocol("UDP")
        .port("dns-tcp", 53)
        .port("sig", 3868)
        .protocol("SCTP")
        .build();
    let slice = SliceBuilder::new("kube-system", "dns")
        .port_with_protocol("dns", 5353, "UDP")
        .port_with_protocol("dns-tcp", 5354, "TCP")
        .port_with_protocol("sig", 3869, "SCTP")
        .endpoint("10.244.1.7", NODE)
        .build();
    let p = plan(vec![svc], vec![slice]);
    expect_routes!(p,
        send(&p, pod("10.244.1.9"), "10.96.0.53", Protocol::Udp, 53) => to(&["10.244.1.7:5353"], false),
        send(&p, pod("10.244.1.9"), "10.96.0.53", Protocol::Tcp, 53) => to(&["10.244.1.7:5354"], false),
        send(&p, pod("10.244.1.9"), "10.96.0.53", Protocol::Sctp, 3868) => to(&["10.244.1.7:3869"], false),
    );
}

#[test]
fn no_endpoints_rejects_on_every_address() {
    let svc = web()
        .node_port(30080)
        .external_ips(&["203.0.113.7"])
        .build();
    let p = plan(vec![svc], vec![]);
    expect_routes!(p,
        tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80) => Route::Reject,
        tcp(&p, outside("172.16.0.1"), NODE_IP, 30080) => Route::Reject,
        tcp(&p, outside("172.16.0.1"), "203.0.113.7", 80) => Route::Reject,
    );
    // Not-ready, not-serving endpoints count as none.
    let slice = SliceBuilder::new("default", "web")
        .port("http", 8080)
        .endpoint("10.244.1.5", NODE)
        .not_ready()
        .build();
    let p = plan(vec![web().build()], vec![slice]);
    assert_eq!(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80), Route::Reject);
}

#[test]
fn node_port_with_cluster_policy_masquerades_to_all_endpoints() {
    let p = plan(
        vec![web().node_port(30080).build()],
        vec![web_slice().build()],
    );
    expect_routes!(p,
        tcp(&p, outside("172.16.0.1"), NODE_IP, 30080) => to(BOTH, true),
        // Only on the configured node addresses (the primary IP by default).
        tcp(&p, outside("172.16.0.1"), "192.168.1.99", 30080) => Route::NotService,
        tcp(&p, outside("172.16.0.1"), NODE_IP, 30081) => Route::NotService,
    );
    assert_eq!(p.ports().next().unwrap().1.node_port, Some(30080));
}

#[test]
fn node_port_addresses_select_where_node_ports_listen() {
    let mut s = settings();
    s.local_addresses = vec![ip(NODE_IP), ip("10.0.5.1"), ip("127.0.0.1")];
    s.node_port_addresses = NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().unwrap()]);
    let p = plan_with(
        vec![web().node_port(30080).build()],
        vec![web_slice().build()],
        &s,
    );
    expect_routes!(p,
        tcp(&p, outside("172.16.0.1"), "10.0.5.1", 30080) => to(BOTH, true),
        tcp(&p, outside("172.16.0.1"), NODE_IP, 30080) => Route::NotService,
    );
    s.node_port_addresses = NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().unwrap()]);
    let p = plan_with(
        vec![web().node_port(30080).build()],
        vec![web_slice().build()],
        &s,
    );
    assert_eq!(p.node.v4.node_port_ips, super::NodePortIps::AllLocal);
}

#[test]
fn external_policy_local_keeps_client_ip_and_uses_local_endpoints_only() {
    let svc = web()
        .node_port(30080)
        .load_balancer(&["198.51.100.7"])
        .external_policy_local()
        .health_check_node_port(32000)
        .build();
    let p = plan(vec![svc.clone()], vec![web_slice().build()]);
    expect_routes!(p,
        tcp(&p, outside("172.16.0.1"), NODE_IP, 30080) => to(LOCAL, false),
        tcp(&p, outside("172.16.0.1"), "198.51.100.7", 80) => to(LOCAL, false),
        // Pods and the node itself short-circuit to every endpoint, as if they had gone out
        // through the load balancer; the node's own traffic is masqueraded.
        tcp(&p, pod("10.244.1.9"), "198.51.100.7", 80) => to(BOTH, false),
        tcp(&p, host(), "198.51.100.7", 80) => to(BOTH, true),
        // The cluster IP still uses every endpoint.
        tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80) => to(BOTH, false),
    );
    assert_eq!(
        p.ports().next().unwrap().1.health_check_node_port,
        Some(32000)
    );

    // No local endpoint: external clients are dropped (the load balancer's health check
    // takes the node out), pods still short-circuit.
    let remote_only = SliceBuilder::new("default", "web")
        .port("http", 8080)
        .endpoint("10.244.2.5", "node-b")
        .build();
    let p = plan(vec![svc], vec![remote_only]);
    expect_routes!(p,
        tcp(&p, outside("172.16.0.1"), NODE_IP, 30080) => Route::Drop,
        tcp(&p, outside("172.16.0.1"), "198.51.100.7", 80) => Route::Drop,
        tcp(&p, pod("10.244.1.9"), "198.51.100.7", 80) => to(&["10.244.2.5:8080"], false),
    );
}

#[test]
fn load_balancer_ips_except_proxy_mode() {
    let p = plan(
        vec![web().load_balancer(&["198.51.100.7"]).build()],
        vec![web_slice().build()],
    );
    assert_eq!(
        sorted(tcp(&p, outside("172.16.0.1"), "198.51.100.7", 80)),
        to(BOTH, true)
    );
    let p = plan(
        vec![
            web()
                .load_balancer(&["198.51.100.7"])
                .ip_mode_proxy()
                .build(),
        ],
        vec![web_slice().build()],
    );
    assert_eq!(
        tcp(&p, outside("172.16.0.1"), "198.51.100.7", 80),
        Route::NotService
    );
}

#[test]
fn source_ranges_filter_load_balancer_ips_only() {
    let svc = web()
        .node_port(30080)
        .load_balancer(&["198.51.100.7"])
        .source_ranges(&["172.16.0.0/16", " 10.9.0.0/16 "])
        .build();
    let p = plan(vec![svc], vec![web_slice().build()]);
    expect_routes!(p,
        tcp(&p, outside("172.16.0.1"), "198.51.100.7", 80) => to(BOTH, true),
        tcp(&p, outside("10.9.3.3"), "198.51.100.7", 80) => to(BOTH, true),
        tcp(&p, outside("203.0.113.1"), "198.51.100.7", 80) => Route::Drop,
        // Node ports are not subject to source ranges (kube-proxy's long-standing behaviour).
        tcp(&p, outside("203.0.113.1"), NODE_IP, 30080) => to(BOTH, true),
    );
}

#[test]
fn external_ips_capture_their_port() {
    let p = plan(
        vec![web().external_ips(&["203.0.113.7"]).build()],
        vec![web_slice().build()],
    );
    expect_routes!(p,
        tcp(&p, outside("172.16.0.1"), "203.0.113.7", 80) => to(BOTH, true),
        tcp(&p, outside("172.16.0.1"), "203.0.113.7", 443) => Route::NotService,
    );
    // With the Local policy, an external IP keeps the client address.
    let p = plan(
        vec![
            web()
                .external_ips(&["203.0.113.7"])
                .external_policy_local()
                .build(),
        ],
        vec![web_slice().build()],
    );
    assert_eq!(
        sorted(tcp(&p, outside("172.16.0.1"), "203.0.113.7", 80)),
        to(LOCAL, false)
    );
}

#[test]
fn internal_policy_local_uses_local_endpoints_and_drops_without() {
    let p = plan(
        vec![web().internal_policy_local().build()],
        vec![web_slice().build()],
    );
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(LOCAL, false)
    );
    let remote_only = SliceBuilder::new("default", "web")
        .port("http", 8080)
        .endpoint("10.244.2.5", "node-b")
        .build();
    let p = plan(
        vec![web().internal_policy_local().build()],
        vec![remote_only],
    );
    assert_eq!(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80), Route::Drop);
}

#[test]
fn client_ip_affinity_carries_its_timeout() {
    let p = plan(
        vec![web().affinity(None).build()],
        vec![web_slice().build()],
    );
    assert_eq!(p.ports().next().unwrap().1.affinity_timeout, Some(10_800));
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(BOTH, false)
    );
    let p = plan(
        vec![web().affinity(Some(60)).build()],
        vec![web_slice().build()],
    );
    assert_eq!(p.ports().next().unwrap().1.affinity_timeout, Some(60));
    let p = plan(vec![web().build()], vec![web_slice().build()]);
    assert_eq!(p.ports().next().unwrap().1.affinity_timeout, None);
}

#[test]
fn terminating_endpoints_serve_only_when_nothing_is_ready() {
    let slice = |second_ready: bool| {
        let b = SliceBuilder::new("default", "web")
            .port("http", 8080)
            .endpoint("10.244.1.5", NODE)
            .terminating_serving()
            .endpoint("10.244.2.5", "node-b")
            .endpoint("10.244.2.6", "node-b")
            .conditions(false, false, true);
        if second_ready {
            b
        } else {
            b.endpoint("10.244.2.7", "node-b").terminating_serving()
        }
    };
    // A ready endpoint exists: only it.
    let p = plan(vec![web().build()], vec![slice(true).build()]);
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(&["10.244.2.5:8080"], false)
    );
    // None ready: the serving-terminating ones, never the non-serving one.
    let no_ready = SliceBuilder::new("default", "web")
        .port("http", 8080)
        .endpoint("10.244.1.5", NODE)
        .terminating_serving()
        .endpoint("10.244.2.6", "node-b")
        .conditions(false, false, true)
        .endpoint("10.244.2.7", "node-b")
        .terminating_serving()
        .build();
    let p = plan(vec![web().build()], vec![no_ready]);
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(&["10.244.1.5:8080", "10.244.2.7:8080"], false)
    );
    // Local policy falls back separately: the only local endpoint is terminating while a
    // remote one is ready; external clients use the local terminating one.
    let svc = web().node_port(30080).external_policy_local().build();
    let p = plan(vec![svc], vec![slice(true).build()]);
    assert_eq!(
        sorted(tcp(&p, outside("172.16.0.1"), NODE_IP, 30080)),
        to(LOCAL, false)
    );
}

#[test]
fn zone_hints_narrow_endpoints_only_when_complete_and_matching() {
    let hinted = |b_zone: &str| {
        SliceBuilder::new("default", "web")
            .port("http", 8080)
            .endpoint("10.244.1.5", NODE)
            .hint_zones(&["z1"])
            .endpoint("10.244.2.5", "node-b")
            .hint_zones(&[b_zone])
            .endpoint("10.244.3.5", "node-c")
            .hint_zones(&["z1"])
    };
    let svc = web().traffic_distribution("PreferClose").build();
    let p = plan(vec![svc.clone()], vec![hinted("z2").build()]);
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(&["10.244.1.5:8080", "10.244.3.5:8080"], false)
    );
    // One ready endpoint without hints: hints are ignored.
    let partial = hinted("z2").endpoint("10.244.4.5", "node-d").build();
    let p = plan(vec![svc.clone()], vec![partial]);
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(
            &[
                "10.244.1.5:8080",
                "10.244.2.5:8080",
                "10.244.3.5:8080",
                "10.244.4.5:8080"
            ],
            false
        )
    );
    // No hint for this node's zone: every endpoint.
    let other = SliceBuilder::new("default", "web")
        .port("http", 8080)
        .endpoint("10.244.2.5", "node-b")
        .hint_zones(&["z2"])
        .endpoint("10.244.3.5", "node-c")
        .hint_zones(&["z3"])
        .build();
    let p = plan(vec![svc.clone()], vec![other]);
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(&["10.244.2.5:8080", "10.244.3.5:8080"], false)
    );
    // Node without a zone label: hints ignored.
    let mut state = ClusterState::new();
    state.set_node(Some(NodeBuilder::new(NODE).internal_ip(NODE_IP).build()));
    state.upsert_service(svc).unwrap();
    state.upsert_slice(hinted("z2").build()).unwrap();
    let p = compute(&state, &settings());
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)).clone(),
        to(
            &["10.244.1.5:8080", "10.244.2.5:8080", "10.244.3.5:8080"],
            false
        )
    );
}

#[test]
fn node_hints_prefer_this_node_and_fall_back_to_zone_hints() {
    let slice = |a_nodes: &[&str]| {
        SliceBuilder::new("default", "web")
            .port("http", 8080)
            .endpoint("10.244.1.5", NODE)
            .hint_nodes(a_nodes)
            .hint_zones(&["z1"])
            .endpoint("10.244.2.5", "node-b")
            .hint_nodes(&["node-b"])
            .hint_zones(&["z1"])
            .endpoint("10.244.3.5", "node-c")
            .hint_nodes(&["node-c"])
            .hint_zones(&["z2"])
            .build()
    };
    let svc = web().traffic_distribution("PreferSameNode").build();
    let p = plan(vec![svc.clone()], vec![slice(&[NODE])]);
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(LOCAL, false)
    );
    // No endpoint hinted for this node: the zone hints decide.
    let p = plan(vec![svc], vec![slice(&["node-x"])]);
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(&["10.244.1.5:8080", "10.244.2.5:8080"], false)
    );
}

#[test]
fn dual_stack_families_are_planned_separately() {
    let svc = ServiceBuilder::cluster_ip("default", "web", "10.96.0.10,fd00:96::10")
        .port("http", 80)
        .build();
    let v6 = SliceBuilder::new("default", "web")
        .name("web-v6")
        .ipv6()
        .port("http", 8080)
        .endpoint("fd00:244:0:1::5", NODE)
        .build();
    let p = plan(vec![svc.clone()], vec![web_slice().build(), v6]);
    expect_routes!(p,
        tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80) => to(BOTH, false),
        tcp(&p, pod("fd00:244:0:1::9"), "fd00:96::10", 80) => to(&["[fd00:244:0:1::5]:8080"], false),
    );
    // IPv6 without endpoints is rejected while IPv4 serves.
    let p = plan(vec![svc], vec![web_slice().build()]);
    expect_routes!(p,
        tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80) => to(BOTH, false),
        tcp(&p, pod("fd00:244:0:1::9"), "fd00:96::10", 80) => Route::Reject,
    );
}

#[test]
fn headless_and_external_name_services_are_ignored_without_errors() {
    let p = plan(
        vec![
            ServiceBuilder::headless("default", "db")
                .port("pg", 5432)
                .build(),
            ServiceBuilder::external_name("default", "ext", "example.com")
                .port("http", 80)
                .build(),
        ],
        vec![
            SliceBuilder::new("default", "db")
                .port("pg", 5432)
                .endpoint("10.244.1.5", NODE)
                .build(),
        ],
    );
    assert!(p.services.is_empty());
    assert!(p.errors.is_empty(), "{:?}", p.errors);
}

#[test]
fn bad_objects_are_reported_by_name_and_field_and_the_rest_is_planned() {
    let bad_ip = ServiceBuilder::cluster_ip("team", "bad-ip", "10.96.0.300")
        .port("http", 80)
        .build();
    let bad_port = web()
        .port("zero", 0)
        .port("huge", 70_000)
        .port("odd", 81)
        .protocol("ICMP")
        .build();
    let bad_ext = ServiceBuilder::cluster_ip("team", "ext", "10.96.0.11")
        .port("http", 80)
        .external_ips(&["nope", "203.0.113.8"])
        .build();
    let bad_slice = SliceBuilder::new("team", "ext")
        .port("http", 8080)
        .endpoint("10.244.1.300", NODE)
        .endpoint("10.244.1.6", NODE)
        .build();
    let p = plan(
        vec![bad_ip, bad_port, bad_ext],
        vec![web_slice().build(), bad_slice],
    );

    let fields: Vec<(ObjectKind, String, String, &str)> = p
        .errors
        .iter()
        .map(|e| {
            (
                e.kind,
                format!("{}/{}", e.namespace, e.name),
                e.field.clone(),
                e.reason.code(),
            )
        })
        .collect();
    let expect =
        |kind, obj: &str, field: &str, code| (kind, obj.to_owned(), field.to_owned(), code);
    for want in [
        expect(
            ObjectKind::Service,
            "team/bad-ip",
            "spec.clusterIPs[0]",
            "bad_ip",
        ),
        expect(
            ObjectKind::Service,
            "default/web",
            "spec.ports[1].port",
            "port_out_of_range",
        ),
        expect(
            ObjectKind::Service,
            "default/web",
            "spec.ports[2].port",
            "port_out_of_range",
        ),
        expect(
            ObjectKind::Service,
            "default/web",
            "spec.ports[3].protocol",
            "unknown_protocol",
        ),
        expect(
            ObjectKind::Service,
            "team/ext",
            "spec.externalIPs[0]",
            "bad_ip",
        ),
        expect(
            ObjectKind::EndpointSlice,
            "team/ext-1",
            "endpoints[0].addresses[0]",
            "bad_ip",
        ),
    ] {
        assert!(fields.contains(&want), "missing {want:?} in {fields:?}");
    }
    assert_eq!(fields.len(), 6, "{fields:?}");
    let message = p
        .errors
        .iter()
        .find(|e| e.name == "bad-ip")
        .unwrap()
        .to_string();
    assert_eq!(
        message,
        "Service team/bad-ip: spec.clusterIPs[0]: \"10.96.0.300\" is not an IP address"
    );

    // Everything valid is still there.
    assert!(!p.services.contains_key(&ServiceName::new("team", "bad-ip")));
    expect_routes!(p,
        tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80) => to(BOTH, false),
        tcp(&p, outside("172.16.0.1"), "203.0.113.8", 80) => to(&["10.244.1.6:8080"], true),
    );
}

#[test]
fn legacy_leading_zero_addresses_are_read_as_decimal() {
    let svc = ServiceBuilder::cluster_ip("default", "web", "010.096.000.010")
        .port("http", 80)
        .build();
    let slice = SliceBuilder::new("default", "web")
        .port("http", 8080)
        .endpoint("010.244.001.005", NODE)
        .build();
    let p = plan(vec![svc], vec![slice]);
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(LOCAL, false)
    );
    assert!(p.errors.is_empty());
}

#[test]
fn conflicting_addresses_go_to_the_first_service_by_name() {
    let a = ServiceBuilder::cluster_ip("default", "a", "10.96.0.10")
        .port("http", 80)
        .node_port(30080)
        .build();
    let b = ServiceBuilder::cluster_ip("default", "b", "10.96.0.10")
        .port("http", 80)
        .port("other", 81)
        .node_port(30080)
        .build();
    let slices = vec![
        SliceBuilder::new("default", "a")
            .port("http", 8080)
            .endpoint("10.244.1.5", NODE)
            .build(),
        SliceBuilder::new("default", "b")
            .port("http", 8080)
            .port("other", 8081)
            .endpoint("10.244.1.6", NODE)
            .build(),
    ];
    let p = plan(vec![b, a], slices);
    expect_routes!(p,
        tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80) => to(&["10.244.1.5:8080"], false),
        tcp(&p, pod("10.244.1.9"), "10.96.0.10", 81) => to(&["10.244.1.6:8081"], false),
    );
    let conflicts: Vec<_> = p
        .errors
        .iter()
        .filter(|e| e.reason.code() == "conflict")
        .collect();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert!(conflicts.iter().all(|e| e.name == "b"));
    assert!(
        matches!(&conflicts[0].reason, InvalidReason::Conflict { owner, .. } if owner == "Service default/a")
    );
}

#[test]
fn slices_of_one_service_merge_and_deduplicate() {
    let first = SliceBuilder::new("default", "web")
        .name("web-a")
        .port("http", 8080)
        .endpoint("10.244.1.5", NODE)
        .endpoint("10.244.2.5", "node-b")
        .build();
    let second = SliceBuilder::new("default", "web")
        .name("web-b")
        .port("http", 8080)
        .endpoint("10.244.2.5", "node-b")
        .endpoint("10.244.3.5", "node-c")
        .build();
    let p = plan(vec![web().build()], vec![first, second]);
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(
            &["10.244.1.5:8080", "10.244.2.5:8080", "10.244.3.5:8080"],
            false
        )
    );
}

#[test]
fn masquerade_all_and_hairpin() {
    let mut s = settings();
    s.masquerade_all = true;
    let p = plan_with(vec![web().build()], vec![web_slice().build()], &s);
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(BOTH, true)
    );

    // A pod reaching itself through its Service is masqueraded on that path only.
    let p = plan(vec![web().build()], vec![web_slice().build()]);
    let Route::Dnat(targets) = tcp(&p, pod("10.244.1.5"), "10.96.0.10", 80) else {
        panic!()
    };
    for t in targets {
        assert_eq!(t.masquerade, t.endpoint.ip == ip("10.244.1.5"), "{t:?}");
    }
}

#[test]
fn local_traffic_detectors() {
    let mut s = settings();
    s.detect_local = DetectLocal::None;
    let p = plan_with(vec![web().build()], vec![web_slice().build()], &s);
    assert_eq!(
        sorted(tcp(&p, outside("172.16.0.1"), "10.96.0.10", 80)),
        to(BOTH, false)
    );

    s.detect_local = DetectLocal::NodeCidr;
    let p = plan_with(vec![web().build()], vec![web_slice().build()], &s);
    // The node's podCIDR is 10.244.1.0/24: a pod of another node counts as off-node.
    assert_eq!(
        sorted(tcp(&p, pod("10.244.1.9"), "10.96.0.10", 80)),
        to(BOTH, false)
    );
    assert_eq!(
        sorted(tcp(&p, outside("10.244.2.9"), "10.96.0.10", 80)),
        to(BOTH, true)
    );

    s.detect_local = DetectLocal::InterfaceNamePrefix("cali".into());
    let p = plan_with(vec![web().build()], vec![web_slice().build()], &s);
    assert_eq!(
        sorted(tcp(&p, pod("10.99.0.1"), "10.96.0.10", 80)),
        to(BOTH, false)
    );
    assert_eq!(
        sorted(tcp(&p, outside("10.244.1.9"), "10.96.0.10", 80)),
        to(BOTH, true)
    );
}

#[test]
fn partial_update_matches_a_full_recompute() {
    let mut state = ClusterState::new();
    state.set_node(Some(node()));
    state.upsert_service(web().build()).unwrap();
    state.upsert_slice(web_slice().build()).unwrap();
    state
        .upsert_service(
            ServiceBuilder::cluster_ip("default", "api", "10.96.0.20")
                .port("http", 80)
                .build(),
        )
        .unwrap();
    let mut planner = super::Planner::new(settings());
    let before = planner.full(&state);

    let changed = state
        .upsert_slice(web_slice().endpoint("10.244.3.5", "node-c").build())
        .unwrap();
    let after = planner.update(&state, &changed);
    assert_eq!(after, compute(&state, &settings()));
    assert_eq!(
        before.changed_services(&after),
        vec![ServiceName::new("default", "web")]
    );
    // The unchanged Service's plan is shared, not copied.
    let api = ServiceName::new("default", "api");
    assert!(std::sync::Arc::ptr_eq(
        &before.services[&api],
        &after.services[&api]
    ));

    assert!(state.remove_service(&ServiceName::new("default", "web")));
    let after = planner.update(&state, &[ServiceName::new("default", "web")]);
    assert_eq!(after, compute(&state, &settings()));
    assert_eq!(after.services.len(), 1);
}

#[test]
fn partial_updates_settle_conflicts_like_a_full_recompute() {
    let svc = |name: &str, ext: &str| {
        ServiceBuilder::cluster_ip("default", name, &format!("10.96.0.{}", name.len() + 10))
            .port("http", 80)
            .external_ips(&[ext])
            .build()
    };
    let mut state = ClusterState::new();
    state.set_node(Some(node()));
    state.upsert_service(svc("a", "203.0.113.9")).unwrap();
    state.upsert_service(svc("bb", "203.0.113.9")).unwrap();
    state.upsert_service(svc("ccc", "203.0.113.7")).unwrap();
    let mut planner = super::Planner::new(settings());
    let first = planner.full(&state);
    assert_eq!(
        first
            .errors
            .iter()
            .filter(|e| e.reason.code() == "conflict")
            .count(),
        1
    );

    // The owner goes away: the other claimant gets the address, without a full re-plan.
    state.remove_service(&ServiceName::new("default", "a"));
    let after = planner.update(&state, &[ServiceName::new("default", "a")]);
    assert_eq!(after, compute(&state, &settings()));
    assert!(after.errors.is_empty(), "{:?}", after.errors);
    let bb = &after.services[&ServiceName::new("default", "bb")];
    assert_eq!(
        bb.ports[0].families[0].external_ips,
        vec![ip("203.0.113.9")]
    );

    // A third Service moves onto the address: it is later by name, so it loses.
    state.upsert_service(svc("ccc", "203.0.113.9")).unwrap();
    let after = planner.update(&state, &[ServiceName::new("default", "ccc")]);
    assert_eq!(after, compute(&state, &settings()));
    assert_eq!(after.errors.len(), 1);
    assert_eq!(after.errors[0].name, "ccc");
}
