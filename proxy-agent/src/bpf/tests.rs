//! The fast path's pure logic and its seam, on the in-memory fakes: which ports are
//! accelerated and why not, what a sync writes, that the writes round-trip through the maps
//! (adoption), that a failed sync converges, and garbage collection.

use std::{net::Ipv4Addr, time::Duration};

use k8s_openapi::api::{core::v1 as core, discovery::v1::EndpointSlice};
use proxy_common::{FlowKey, FlowValue, dir, owner, tcp};

use super::{
    config::{AccelerationMode, FlowTimeouts},
    reconcile::{self, FakeConntrack, Syncer},
    store::FakeMaps,
    writes::{Endpoint, backend_of},
};
use crate::{
    model::{
        ClusterState,
        fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder},
        service::ACCELERATION_ANNOTATION,
    },
    plan::{self, DetectLocal, PlanSettings, ProxyPlan},
};

fn settings(masquerade_all: bool) -> PlanSettings {
    PlanSettings {
        node_name: "node-a".into(),
        detect_local: DetectLocal::ClusterCidr,
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        masquerade_all,
        ..PlanSettings::default()
    }
}

fn plan_with(
    services: Vec<core::Service>,
    slices: Vec<EndpointSlice>,
    masquerade_all: bool,
) -> ProxyPlan {
    let mut state = ClusterState::new();
    for s in services {
        state.upsert_service(s).unwrap();
    }
    for s in slices {
        state.upsert_slice(s).unwrap();
    }
    state.set_node(Some(
        NodeBuilder::new("node-a")
            .internal_ip("192.168.1.10")
            .pod_cidr("10.244.1.0/24")
            .build(),
    ));
    plan::compute(&state, &settings(masquerade_all))
}

fn web() -> ServiceBuilder {
    ServiceBuilder::cluster_ip("default", "web", "10.96.0.10").port("http", 80)
}

fn slice(endpoints: &[(&str, &str)]) -> EndpointSlice {
    let mut b = SliceBuilder::new("default", "web").port("http", 8080);
    for (ip, node) in endpoints {
        b = b.endpoint(ip, node);
    }
    b.build()
}

fn both() -> EndpointSlice {
    slice(&[("10.244.1.5", "node-a"), ("10.244.2.5", "node-b")])
}

/// `(pods, external)` decisions of the first port, as the report prints them.
fn decide(plan: &ProxyPlan, mode: AccelerationMode) -> (String, String) {
    let ports = super::eligibility::decide(plan, mode);
    let show = |d: &super::eligibility::Decision| match d {
        Ok(a) => format!("on {}", a.addresses.len()),
        Err(r) => r.to_string(),
    };
    (show(&ports[0].pods), show(&ports[0].external))
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn eligibility_says_why_a_port_stays_on_nftables() {
    use AccelerationMode::{All, Annotated, Off};
    let annotated = |v: &str| web().annotation(ACCELERATION_ANNOTATION, v);
    let lb = || {
        web()
            .node_port(30080)
            .load_balancer(&["198.51.100.7"])
            .external_ips(&["203.0.113.9"])
    };
    let cases: Vec<(
        &str,
        ServiceBuilder,
        EndpointSlice,
        AccelerationMode,
        bool,
        &str,
        &str,
    )> = vec![
        (
            "cluster IP",
            web(),
            both(),
            All,
            false,
            "on 1",
            "no external address",
        ),
        (
            "mode off",
            web(),
            both(),
            Off,
            false,
            "mode off",
            "mode off",
        ),
        (
            "not annotated",
            web(),
            both(),
            Annotated,
            false,
            "not annotated",
            "not annotated",
        ),
        (
            "annotated",
            annotated("on"),
            both(),
            Annotated,
            false,
            "on 1",
            "no external address",
        ),
        (
            "annotation off wins",
            annotated("off"),
            both(),
            All,
            false,
            "annotation off",
            "annotation off",
        ),
        (
            "SCTP",
            web().protocol("SCTP"),
            both(),
            All,
            false,
            "SCTP",
            "SCTP",
        ),
        (
            "no endpoints",
            web(),
            slice(&[]),
            All,
            false,
            "no endpoints",
            "no external address",
        ),
        (
            "iTP Local without local endpoints",
            web().internal_policy_local(),
            slice(&[("10.244.2.5", "node-b")]),
            All,
            false,
            "no local endpoints",
            "no external address",
        ),
        (
            "masqueradeAll",
            web(),
            both(),
            All,
            true,
            "needs SNAT",
            "no external address",
        ),
        (
            "eTP Cluster",
            lb(),
            both(),
            All,
            false,
            "on 1",
            "needs SNAT",
        ),
        // Pods short-circuit to every endpoint: the node port, LB IP and external IP too.
        (
            "eTP Local",
            lb().external_policy_local(),
            both(),
            All,
            false,
            "on 4",
            "on 3",
        ),
        (
            "eTP Local, source ranges",
            lb().external_policy_local()
                .source_ranges(&["192.0.2.0/24"]),
            both(),
            All,
            false,
            "on 3",
            "on 2",
        ),
        (
            "eTP Local, no local endpoint",
            lb().external_policy_local(),
            slice(&[("10.244.2.5", "node-b")]),
            All,
            false,
            "on 4",
            "no local endpoints",
        ),
    ];
    for (what, svc, slice, mode, masq, pods, external) in cases {
        let p = plan_with(vec![svc.build()], vec![slice], masq);
        assert_eq!(
            decide(&p, mode),
            (pods.to_owned(), external.to_owned()),
            "{what}"
        );
    }
    let lb_only = web()
        .load_balancer(&["198.51.100.7"])
        .external_policy_local()
        .source_ranges(&["192.0.2.0/24"]);
    let p = plan_with(vec![lb_only.build()], vec![both()], false);
    assert_eq!(decide(&p, All).1, "source ranges");

    let dual = ServiceBuilder::cluster_ip("default", "web", "10.96.0.10,fd00:96::10")
        .port("http", 80)
        .with_spec(|s| {
            s.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
            s.ip_family_policy = Some("RequireDualStack".into());
        });
    let v6 = SliceBuilder::new("default", "web")
        .name("web-v6")
        .ipv6()
        .port("http", 8080)
        .endpoint("fd00:244::5", "node-a")
        .build();
    let p = plan_with(vec![dual.build()], vec![both(), v6], false);
    let ports = super::eligibility::decide(&p, All);
    assert_eq!(ports.len(), 2);
    // Each family on its own: the IPv6 port captures the IPv6 ClusterIP and sends it to the
    // IPv6 endpoint only.
    let v6_pods = ports[1].pods.as_ref().expect("IPv6 is on the fast path");
    assert_eq!(
        v6_pods.addresses,
        vec![("fd00:96::10".parse().unwrap(), 80)]
    );
    let endpoints: Vec<_> = v6_pods.endpoints.iter().map(|e| e.ip).collect();
    assert_eq!(
        endpoints,
        vec!["fd00:244::5".parse::<std::net::IpAddr>().unwrap()]
    );
}

fn sync(
    maps: &mut FakeMaps,
    syncer: &mut Syncer,
    plan: &ProxyPlan,
    generation: u64,
) -> reconcile::ApplyReport {
    syncer
        .sync(maps, &mut FakeConntrack::default(), plan, generation)
        .unwrap()
}

#[test]
fn a_sync_writes_sets_before_the_services_that_use_them_and_round_trips() {
    let mut maps = FakeMaps::new();
    let mut syncer = Syncer::new(AccelerationMode::All);
    let p = plan_with(vec![web().affinity(Some(60)).build()], vec![both()], false);
    let report = sync(&mut maps, &mut syncer, &p, 1);
    let text = report.writes.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "bpf sync generation 1 (5 writes)", "{text}");
    assert!(lines[1].starts_with("  put counter "), "{text}");
    assert!(
        lines[2].contains("put set ")
            && lines[2].contains("rev 1: [10.244.1.5:8080,10.244.2.5:8080]"),
        "{text}"
    );
    assert!(
        lines[3].contains("put service 10.96.0.10:80/tcp [pods]")
            && lines[3].contains("affinity 60s"),
        "{text}"
    );
    assert!(
        lines[4].contains("put port ")
            && lines[4].contains("default/web http(80)/TCP: slot 1, pods 0, external 10"),
        "the port's record, with why it is not accelerated from outside: {text}"
    );
    assert_eq!(lines[5], "  set generation 1, forwarding stack");
    assert_eq!(maps.backends.len(), 2);
    assert_eq!(maps.maglev.len(), 1);

    // Nothing changed: nothing but the generation is written.
    assert!(sync(&mut maps, &mut syncer, &p, 2).writes.is_noop());
    // A new agent reads the maps back and agrees.
    let mut adopted = Syncer::new(AccelerationMode::All);
    assert!(sync(&mut maps, &mut adopted, &p, 3).writes.is_noop());

    // A backend change: new revision, the service flips, the old revision stays one sync.
    let p2 = plan_with(
        vec![web().affinity(Some(60)).build()],
        vec![slice(&[("10.244.1.5", "node-a")])],
        false,
    );
    let text = sync(&mut maps, &mut adopted, &p2, 4).writes.to_string();
    assert!(text.contains("rev 2: [10.244.1.5:8080]"), "{text}");
    assert!(text.contains("purge affinity of set"), "{text}");
    assert_eq!(maps.maglev.len(), 2, "previous revision kept");
    let p3 = plan_with(vec![web().build()], vec![both()], false);
    let text = sync(&mut maps, &mut adopted, &p3, 5).writes.to_string();
    assert!(
        text.contains("delete set") && text.contains("rev 1 (2 backends)"),
        "{text}"
    );
    assert_eq!(maps.maglev.len(), 2);

    // Demotion (mode annotated) leaves a counting entry; mode off removes everything but
    // the flows.
    adopted.mode = AccelerationMode::Annotated;
    sync(&mut maps, &mut adopted, &p3, 6);
    assert_eq!(maps.services.len(), 1);
    assert!(
        maps.services
            .values()
            .all(|v| v.flags == proxy_common::service_flags::COUNT_ONLY && v.counter == 1)
    );
    assert!(maps.backends.is_empty() && maps.maglev.is_empty());
    adopted.mode = AccelerationMode::Off;
    sync(&mut maps, &mut adopted, &p3, 6);
    assert!(maps.services.is_empty() && maps.backends.is_empty() && maps.maglev.is_empty());
    assert!(maps.ports.is_empty());
    assert!(
        maps.dump().contains("counter slots {1}"),
        "slot zeroed at promotion stays"
    );
    assert_eq!(maps.meta.generation, 6);
}

#[test]
fn a_failed_sync_converges_on_the_next_one() {
    let p = plan_with(vec![web().build()], vec![both()], false);
    let mut clean = FakeMaps::new();
    sync(&mut clean, &mut Syncer::new(AccelerationMode::All), &p, 1);

    for fail_after in 0..5 {
        let mut maps = FakeMaps::new();
        let mut syncer = Syncer::new(AccelerationMode::All);
        maps.fail_after(Some(fail_after));
        assert!(
            syncer
                .sync(&mut maps, &mut FakeConntrack::default(), &p, 1)
                .is_err()
        );
        maps.fail_after(None);
        // The retry re-reads the maps and writes what is missing; what an interrupted sync
        // left behind goes at the next one. Revision numbers may differ from a clean run.
        sync(&mut maps, &mut syncer, &p, 2);
        sync(&mut maps, &mut syncer, &p, 3);
        assert_eq!(
            maps.services.len(),
            clean.services.len(),
            "after failing at write {fail_after}"
        );
        for v in maps.services.values() {
            let key = proxy_common::MaglevKey {
                id: v.id,
                revision: v.revision,
                set: v.set,
                _pad: [0; 3],
            };
            assert!(
                maps.maglev.contains_key(&key),
                "after failing at write {fail_after}"
            );
        }
        assert_eq!(maps.maglev.len(), 1, "after failing at write {fail_after}");
        let backends: Vec<_> = maps.backends.values().collect();
        let clean_backends: Vec<_> = clean.backends.values().collect();
        assert_eq!(
            backends, clean_backends,
            "after failing at write {fail_after}"
        );
    }

    // The fake's all-or-nothing apply leaves nothing behind.
    let mut maps = FakeMaps::new();
    let before = maps.clone();
    let (writes, _) = super::writes::plan_writes(
        &super::writes::ServiceMaps::default(),
        &super::writes::desired(
            &super::eligibility::decide(&p, AccelerationMode::All),
            &super::forwarding::Forwarding::stack(),
        ),
        1,
    );
    maps.fail_after(Some(3));
    assert!(maps.apply_atomic(&writes).is_err());
    assert_eq!(maps.dump(), before.dump());
}

#[test]
fn promotion_marks_flows_nftables_started_before_the_service_entry() {
    let udp_slice = SliceBuilder::new("default", "web")
        .port_with_protocol("http", 8080, "UDP")
        .endpoint("10.244.1.5", "node-a")
        .build();
    let p = plan_with(vec![web().protocol("UDP").build()], vec![udp_slice], false);
    let mut maps = FakeMaps::new();
    let mut syncer = Syncer::new(AccelerationMode::All);
    let tuple = |sport: u16| super::netlink::ConntrackTuple {
        src: u32::from_ne_bytes([10, 244, 1, 20]),
        dst: u32::from_ne_bytes([10, 96, 0, 10]),
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        proto: 17,
    };
    let unrelated = super::netlink::ConntrackTuple {
        dst: u32::from_ne_bytes([10, 96, 0, 99]),
        ..tuple(1)
    };
    // The second read (after the entry was written) finds one more flow.
    let mut ct = FakeConntrack {
        snapshots: vec![vec![tuple(5000), unrelated], vec![tuple(5000), tuple(5001)]],
        ..FakeConntrack::default()
    };
    let report = syncer.sync(&mut maps, &mut ct, &p, 1).unwrap();
    assert_eq!((report.nftables_owned_marked, report.late_marked), (1, 1));
    let text = report.writes.to_string();
    let mark = text.find("nftables-owned").unwrap();
    assert!(
        mark < text.find("put service").unwrap(),
        "marked first: {text}"
    );
    assert_eq!(maps.flows.len(), 2);
    assert!(maps.flows.values().all(|v| v.owner == owner::NFTABLES));
    // Nothing newly promoted: conntrack is not read.
    let report = syncer
        .sync(&mut maps, &mut FakeConntrack::default(), &p, 2)
        .unwrap();
    assert_eq!(report.nftables_owned_marked, 0);
}

#[test]
fn garbage_collection_removes_idle_flows_in_pairs() {
    let mut maps = FakeMaps::new();
    let sec = 1_000_000_000u64;
    let now = 10_000 * sec;
    let client = u32::from_ne_bytes([10, 244, 1, 20]);
    let v4 = |e| match e {
        Endpoint::V4(b) => b,
        Endpoint::V6(_) => unreachable!("built from an IPv4 address"),
    };
    let vip = v4(backend_of(Ipv4Addr::new(10, 96, 0, 10).into(), 80));
    let mut pair = |cport: u16, proto: u8, flags: u8, idle: u64| {
        let backend = v4(backend_of(Ipv4Addr::new(10, 244, 2, 5).into(), 8080));
        let fwd = FlowKey {
            src: client,
            dst: vip.addr,
            sport: cport.to_be(),
            dport: vip.port,
            proto,
            dir: dir::FORWARD,
            _pad: 0,
        };
        let rev = FlowKey {
            src: backend.addr,
            dst: client,
            sport: backend.port,
            dport: cport.to_be(),
            proto,
            dir: dir::REPLY,
            _pad: 0,
        };
        let v = |nat, flags, last| FlowValue {
            id: 7,
            last_seen_ns: last,
            nat,
            owner: owner::FAST,
            tcp_flags: flags,
            forwarding: 0,
            _pad: 0,
            counter: u32::from(cport),
        };
        // The reply side was seen a little later than the forward side.
        maps.flows
            .insert(fwd, v(backend, flags, now - idle * sec - sec));
        maps.flows.insert(rev, v(vip, flags, now - idle * sec));
    };
    pair(1, 6, tcp::SYN | tcp::ACK, 3600); // established, idle 1 h: kept (24 h)
    pair(2, 6, tcp::SYN | tcp::ACK | tcp::FIN, 180); // closing, idle 3 min: removed (2 min)
    pair(3, 17, 0, 60); // UDP idle 1 min: kept
    pair(4, 17, 0, 180); // UDP idle 3 min: removed
    pair(5, 6, tcp::SYN, 300); // never answered: removed
    let report = reconcile::collect_garbage(&mut maps, &FlowTimeouts::default(), now).unwrap();
    assert_eq!((report.entries, report.removed), (10, 6));
    assert_eq!(report.counters_in_use, [1, 3].into_iter().collect());
    let ports: Vec<u16> = maps
        .flows
        .keys()
        .filter(|k| k.dir == dir::FORWARD)
        .map(|k| u16::from_be(k.sport))
        .collect();
    assert_eq!(ports, vec![1, 3]);
    let short = FlowTimeouts {
        tcp_established: Duration::from_mins(1),
        ..FlowTimeouts::default()
    };
    reconcile::collect_garbage(&mut maps, &short, now).unwrap();
    assert_eq!(maps.flows.len(), 2, "only the recent UDP flow is left");
}

/// The entries of one scope, as `address:port/protocol -> on|count`.
fn entries(maps: &FakeMaps, key_scope: u8) -> Vec<String> {
    maps.services
        .iter()
        .filter(|(k, _)| k.scope == key_scope)
        .map(|(k, v)| {
            let (ip, port, _) = super::writes::EntryKey::V4(*k).address();
            let what = if v.flags & proxy_common::service_flags::COUNT_ONLY == 0 {
                "on"
            } else {
                "count"
            };
            format!("{ip}:{port}/{} {what}", k.proto)
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn every_service_address_is_counted_and_only_eligible_paths_are_accelerated() {
    use proxy_common::scope::{EXTERNAL, POD};
    let edge = ServiceBuilder::cluster_ip("default", "edge", "10.96.0.20")
        .port("http", 80)
        .node_port(30080)
        .load_balancer(&["198.51.100.7"])
        .external_ips(&["203.0.113.9"]);
    let edge_slice = SliceBuilder::new("default", "edge")
        .port("http", 8080)
        .endpoint("10.244.1.6", "node-a")
        .build();
    let quiet = ServiceBuilder::cluster_ip("default", "quiet", "10.96.0.30")
        .port("http", 80)
        .annotation(ACCELERATION_ANNOTATION, "off");
    let quiet_slice = SliceBuilder::new("default", "quiet")
        .port("http", 8080)
        .endpoint("10.244.1.7", "node-a")
        .build();
    let sctp = ServiceBuilder::cluster_ip("default", "sig", "10.96.0.40")
        .port("s", 9)
        .protocol("SCTP");
    let p = plan_with(
        vec![web().build(), edge.build(), quiet.build(), sctp.build()],
        vec![both(), edge_slice, quiet_slice],
        false,
    );
    let mut maps = FakeMaps::new();
    let mut syncer = Syncer::new(AccelerationMode::All);
    let report = sync(&mut maps, &mut syncer, &p, 1);
    assert_eq!(report.accelerated_ports(), 2, "{report}");
    // eTP Cluster: pods are accelerated to the cluster IP only, everything else is counted;
    // annotated "off": counted; SCTP: neither (the programs do not parse it).
    assert_eq!(
        entries(&maps, POD),
        vec![
            "10.96.0.10:80/6 on",
            "10.96.0.20:80/6 on",
            "10.96.0.30:80/6 count",
            "192.168.1.10:30080/6 count",
            "198.51.100.7:80/6 count",
            "203.0.113.9:80/6 count",
        ]
    );
    assert_eq!(
        entries(&maps, EXTERNAL),
        vec![
            "192.168.1.10:30080/6 count",
            "198.51.100.7:80/6 count",
            "203.0.113.9:80/6 count",
        ]
    );
    assert_eq!(report.counted_only, 7);
    // Each counted port has a slot, shared by its entries, and a record saying why.
    let slots: std::collections::BTreeSet<u32> =
        maps.services.values().map(|v| v.counter).collect();
    assert_eq!(slots.len(), 3, "{}", maps.dump());
    assert!(!slots.contains(&0));
    let records: Vec<(String, u8, u8)> = maps
        .ports
        .values()
        .map(|i| (super::writes::port_label(i), i.pods, i.external))
        .collect();
    let code = |r: super::Reason| r.code();
    assert!(records.contains(&(
        "default/edge http(80)/TCP".into(),
        0,
        code(super::Reason::NeedsSnat)
    )));
    assert!(records.contains(&(
        "default/quiet http(80)/TCP".into(),
        code(super::Reason::AnnotationOff),
        code(super::Reason::AnnotationOff)
    )));
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(
        super::Reason::from_code(code(super::Reason::Capacity)),
        Some(super::Reason::Capacity)
    );
    // A new agent reads it all back and agrees.
    let mut adopted = Syncer::new(AccelerationMode::All);
    let again = sync(&mut maps, &mut adopted, &p, 2);
    assert!(again.writes.is_noop(), "{}", again.writes);
}

#[test]
fn promoting_a_counted_address_marks_the_flows_nftables_started() {
    let p_plain = plan_with(vec![web().build()], vec![both()], false);
    let p_on = plan_with(
        vec![web().annotation(ACCELERATION_ANNOTATION, "on").build()],
        vec![both()],
        false,
    );
    let mut maps = FakeMaps::new();
    let mut syncer = Syncer::new(AccelerationMode::Annotated);
    sync(&mut maps, &mut syncer, &p_plain, 1);
    assert_eq!(
        entries(&maps, proxy_common::scope::POD),
        vec!["10.96.0.10:80/6 count"]
    );
    let slot = maps.services.values().next().unwrap().counter;
    let tuple = super::netlink::ConntrackTuple {
        src: u32::from_ne_bytes([10, 244, 1, 20]),
        dst: u32::from_ne_bytes([10, 96, 0, 10]),
        sport: 5000u16.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
    };
    let mut ct = FakeConntrack {
        snapshots: vec![vec![tuple]],
        ..FakeConntrack::default()
    };
    let report = syncer.sync(&mut maps, &mut ct, &p_on, 2).unwrap();
    assert_eq!(report.nftables_owned_marked, 1, "{report}");
    assert_eq!(
        entries(&maps, proxy_common::scope::POD),
        vec!["10.96.0.10:80/6 on"]
    );
    let marked: Vec<_> = maps.flows.values().collect();
    assert_eq!(marked.len(), 1);
    assert_eq!(marked[0].owner, owner::NFTABLES);
    assert_eq!(
        marked[0].counter, slot,
        "its packets still count for the service"
    );
}

#[test]
fn auto_mode_accelerates_what_the_policy_promotes_and_annotations_win() {
    let hot = web();
    let forced = ServiceBuilder::cluster_ip("default", "forced", "10.96.0.21")
        .port("http", 80)
        .annotation(ACCELERATION_ANNOTATION, "on");
    let forced_slice = SliceBuilder::new("default", "forced")
        .port("http", 8080)
        .endpoint("10.244.1.8", "node-a")
        .build();
    let p = plan_with(
        vec![hot.build(), forced.build()],
        vec![both(), forced_slice],
        false,
    );
    let mut maps = FakeMaps::new();
    let mut syncer = Syncer::new(AccelerationMode::Auto);
    sync(&mut maps, &mut syncer, &p, 1);
    assert_eq!(
        entries(&maps, proxy_common::scope::POD),
        vec!["10.96.0.10:80/6 count", "10.96.0.21:80/6 on"],
        "nothing measured yet: only the annotated one"
    );
    let candidates = syncer.candidates().to_vec();
    assert_eq!(candidates.len(), 2);
    assert!(candidates.iter().any(|c| c.forced));
    let web_id = candidates.iter().find(|c| !c.forced).unwrap().id;
    let web_port = |s: &Syncer| {
        s.ports()
            .iter()
            .find(|p| p.service.name == "web")
            .unwrap()
            .pods
            .clone()
    };
    assert_eq!(web_port(&syncer).unwrap_err().to_string(), "auto: not hot");
    syncer.auto.promoted.insert(web_id);
    sync(&mut maps, &mut syncer, &p, 2);
    assert_eq!(
        entries(&maps, proxy_common::scope::POD),
        vec!["10.96.0.10:80/6 on", "10.96.0.21:80/6 on"]
    );
    syncer.auto.promoted.clear();
    syncer.auto.held.insert(web_id, super::Reason::Capacity);
    sync(&mut maps, &mut syncer, &p, 3);
    assert_eq!(
        web_port(&syncer).unwrap_err().to_string(),
        "auto: hot, fast path full"
    );
    assert_eq!(
        entries(&maps, proxy_common::scope::POD)[0],
        "10.96.0.10:80/6 count"
    );
}

fn dual_stack() -> ServiceBuilder {
    ServiceBuilder::cluster_ip("default", "web", "10.96.0.10,fd00:96::10")
        .port("http", 80)
        .with_spec(|s| {
            s.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
            s.ip_family_policy = Some("RequireDualStack".into());
        })
}

fn slice6(endpoints: &[(&str, &str)]) -> EndpointSlice {
    let mut b = SliceBuilder::new("default", "web")
        .name("web-v6")
        .ipv6()
        .port("http", 8080);
    for (ip, node) in endpoints {
        b = b.endpoint(ip, node);
    }
    b.build()
}

fn vip6() -> proxy_common::ServiceKey6 {
    proxy_common::ServiceKey6 {
        addr: super::writes::v6_words("fd00:96::10".parse().unwrap()),
        port: 80u16.to_be(),
        proto: 6,
        scope: proxy_common::scope::POD,
    }
}

#[test]
fn an_ipv6_port_gets_its_own_entries_and_a_set_apart_from_its_ipv4_twin() {
    use proxy_common::set;
    let mut maps = FakeMaps::new();
    let mut syncer = Syncer::new(AccelerationMode::All);
    let v6_one = slice6(&[("fd00:244::5", "node-a")]);
    let p = plan_with(
        vec![dual_stack().affinity(Some(30)).build()],
        vec![both(), v6_one.clone()],
        false,
    );
    let text = sync(&mut maps, &mut syncer, &p, 1).writes.to_string();
    assert!(
        text.contains("put service [fd00:96::10]:80/tcp [pods]")
            && text.contains("/cluster/ipv6 rev 1: [[fd00:244::5]:8080]"),
        "{text}"
    );
    // One entry per family, in its family's map, each pointing at its family's set.
    assert_eq!(
        (maps.services.len(), maps.services6.len()),
        (1, 1),
        "{text}"
    );
    let v6 = maps.services6[&vip6()];
    let v4 = *maps.services.values().next().unwrap();
    assert_eq!(v6.id, v4.id, "one service port, two families");
    assert_eq!(v6.set, set::CLUSTER | set::IPV6);
    assert_eq!(v4.set, set::CLUSTER);
    assert_eq!((v6.backend_count, v6.affinity_timeout_s), (1, 30));
    assert_eq!(v6.counter, v4.counter, "the port's counter slot is shared");
    // The IPv6 backend is in HP_BACKENDS6 under the IPv6 set; the two Maglev tables differ.
    assert_eq!((maps.backends.len(), maps.backends6.len()), (2, 1));
    let (bkey, backend) = maps.backends6.iter().next().unwrap();
    assert_eq!(bkey.set, set::CLUSTER | set::IPV6);
    assert_eq!(
        super::writes::backend_addr(&Endpoint::V6(*backend)),
        ("fd00:244::5".parse().unwrap(), 8080)
    );
    let sets: Vec<u8> = maps.maglev.keys().map(|k| k.set).collect();
    assert_eq!(sets, vec![set::CLUSTER, set::CLUSTER | set::IPV6]);

    // Read back by a new agent: nothing to write.
    let mut adopted = Syncer::new(AccelerationMode::All);
    assert!(sync(&mut maps, &mut adopted, &p, 2).writes.is_noop());

    // An IPv6 backend change flips the IPv6 set only.
    let v6_two = slice6(&[("fd00:244::5", "node-a"), ("fd00:244::6", "node-b")]);
    let p2 = plan_with(
        vec![dual_stack().affinity(Some(30)).build()],
        vec![both(), v6_two],
        false,
    );
    let writes = sync(&mut maps, &mut adopted, &p2, 3).writes;
    let sets_written: Vec<String> = writes
        .writes
        .iter()
        .filter_map(|w| match w {
            super::writes::MapWrite::PutSet { set, revision, .. } => {
                Some(format!("{set} rev {revision}"))
            }
            _ => None,
        })
        .collect();
    assert_eq!(sets_written.len(), 1, "{writes}");
    assert!(sets_written[0].ends_with("/cluster/ipv6 rev 2"), "{writes}");
    assert_eq!(maps.services6[&vip6()].revision, 2);
    assert_eq!(maps.services6[&vip6()].backend_count, 2);
    assert_eq!(maps.backends6.len(), 3, "previous revision kept one sync");

    // Removing the IPv6 backend purges the IPv6 affinity entries that pointed at it, and
    // none of the IPv4 ones.
    let gone = match backend_of("fd00:244::6".parse().unwrap(), 8080) {
        Endpoint::V6(b) => b,
        Endpoint::V4(_) => unreachable!(),
    };
    let akey = proxy_common::AffinityKey6 {
        id: v6.id,
        client: super::writes::v6_words("fd00:244:1::20".parse().unwrap()),
        set: set::CLUSTER | set::IPV6,
        _pad: [0; 7],
    };
    maps.affinity6.insert(
        akey,
        proxy_common::AffinityValue6 {
            last_used_ns: 1,
            backend: gone,
            _pad: 0,
        },
    );
    let text = sync(&mut maps, &mut adopted, &p, 4).writes.to_string();
    assert!(text.contains("purge affinity of set"), "{text}");
    assert!(maps.affinity6.is_empty(), "{text}");

    // Demotion leaves a counting entry in the IPv6 map; mode off removes it all.
    adopted.mode = AccelerationMode::Annotated;
    sync(&mut maps, &mut adopted, &p, 5);
    assert_eq!(
        maps.services6[&vip6()].flags,
        proxy_common::service_flags::COUNT_ONLY
    );
    assert!(maps.backends6.is_empty() && maps.maglev.is_empty());
    adopted.mode = AccelerationMode::Off;
    sync(&mut maps, &mut adopted, &p, 6);
    assert!(maps.services6.is_empty() && maps.services.is_empty());
}

#[test]
fn a_udp_ipv6_flow_nftables_started_is_marked_before_promotion() {
    let mut maps = FakeMaps::new();
    let mut syncer = Syncer::new(AccelerationMode::All);
    let udp = ServiceBuilder::cluster_ip("default", "web", "10.96.0.10,fd00:96::10")
        .port("http", 80)
        .protocol("UDP")
        .with_spec(|s| {
            s.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
            s.ip_family_policy = Some("RequireDualStack".into());
        });
    let v6_slice = SliceBuilder::new("default", "web")
        .name("web-v6")
        .ipv6()
        .port_with_protocol("http", 8080, "UDP")
        .endpoint("fd00:244::5", "node-a")
        .build();
    let v4_slice = SliceBuilder::new("default", "web")
        .port_with_protocol("http", 8080, "UDP")
        .endpoint("10.244.1.5", "node-a")
        .build();
    let p = plan_with(vec![udp.build()], vec![v4_slice, v6_slice], false);
    let client = super::writes::v6_words("fd00:244:1::20".parse().unwrap());
    let tuple = |dst: &str| super::netlink::ConntrackTuple6 {
        src: client,
        dst: super::writes::v6_words(dst.parse().unwrap()),
        sport: 5000u16.to_be(),
        dport: 80u16.to_be(),
        proto: 17,
    };
    let mut ct = FakeConntrack {
        snapshots6: vec![vec![tuple("fd00:96::10"), tuple("fd00:96::99")]],
        ..FakeConntrack::default()
    };
    let report = syncer.sync(&mut maps, &mut ct, &p, 1).unwrap();
    assert_eq!(report.nftables_owned_marked, 1, "{report}");
    let marked: Vec<_> = maps.flows6.iter().collect();
    assert_eq!(marked.len(), 1);
    let (key, value) = marked[0];
    assert_eq!(key.dst, tuple("fd00:96::10").dst);
    assert_eq!((key.dir, value.owner), (dir::FORWARD, owner::NFTABLES));
    assert_ne!(value.counter, 0, "still counted");
    assert!(maps.flows.is_empty(), "no IPv4 flow was involved");
}

#[test]
fn garbage_collection_removes_idle_ipv6_flows_in_pairs() {
    let mut maps = FakeMaps::new();
    let sec = 1_000_000_000u64;
    let now = 10_000 * sec;
    let w = |s: &str| super::writes::v6_words(s.parse().unwrap());
    for (cport, idle) in [(1u16, 60u64), (2, 180)] {
        let fwd = proxy_common::FlowKey6 {
            src: w("fd00:244:1::20"),
            dst: w("fd00:96::10"),
            sport: cport.to_be(),
            dport: 53u16.to_be(),
            proto: 17,
            dir: dir::FORWARD,
            _pad: 0,
        };
        let rev = proxy_common::FlowKey6 {
            src: w("fd00:244::5"),
            dst: fwd.src,
            sport: 5353u16.to_be(),
            dport: fwd.sport,
            proto: 17,
            dir: dir::REPLY,
            _pad: 0,
        };
        let value = |addr, port| proxy_common::FlowValue6 {
            id: 7,
            last_seen_ns: now - idle * sec,
            nat: proxy_common::Backend6 {
                addr,
                port,
                _pad: 0,
            },
            owner: owner::FAST,
            counter: u32::from(cport),
            ..proxy_common::FlowValue6::default()
        };
        maps.flows6.insert(fwd, value(rev.src, rev.sport));
        maps.flows6.insert(rev, value(fwd.dst, fwd.dport));
    }
    let report = reconcile::collect_garbage(&mut maps, &FlowTimeouts::default(), now).unwrap();
    assert_eq!((report.entries, report.removed), (4, 2));
    assert_eq!(report.counters_in_use, [1].into_iter().collect());
    assert!(
        maps.flows6
            .keys()
            .all(|k| u16::from_be(k.sport) == 1 || u16::from_be(k.dport) == 1)
    );
}

#[test]
fn a_dual_stack_port_is_one_auto_candidate_needing_both_families_room() {
    let p = plan_with(
        vec![dual_stack().build()],
        vec![both(), slice6(&[("fd00:244::5", "node-a")])],
        false,
    );
    let candidates = reconcile::candidates(&p);
    assert_eq!(candidates.len(), 1, "{candidates:?}");
    assert_eq!(
        (candidates[0].sets, candidates[0].backend_entries),
        (2, 3),
        "an IPv4 set of 2 and an IPv6 set of 1"
    );
}
