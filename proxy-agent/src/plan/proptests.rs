//! Arbitrary Services and EndpointSlices: planning never panics and does not depend on the
//! order objects arrived in.

use k8s_openapi::api::{core::v1 as core, discovery::v1::EndpointSlice};
use proptest::{prelude::*, sample::select};

use super::{DetectLocal, NodePortAddresses, PlanSettings, compute};
use crate::model::{
    ClusterState,
    fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder},
};

fn ip_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..4, 0u8..4).prop_map(|(a, b)| format!("10.96.{a}.{b}")),
        (0u8..4, 0u8..8).prop_map(|(a, b)| format!("10.244.{a}.{b}")),
        (0u16..4).prop_map(|a| format!("fd00:96::{a}")),
        (0u16..4).prop_map(|a| format!("fd00:244::{a}")),
        select(vec![
            "",
            "None",
            "1.2.3",
            "010.096.000.001",
            "::ffff:10.96.0.1",
            "300.1.1.1",
            "fe80::1%eth0",
            " 10.96.0.1"
        ])
        .prop_map(str::to_owned),
    ]
}

fn protocol() -> impl Strategy<Value = String> {
    select(vec!["TCP", "UDP", "SCTP", "ICMP", "tcp"]).prop_map(str::to_owned)
}

fn port_number() -> impl Strategy<Value = i32> {
    prop_oneof![4 => 1i32..100, 1 => select(vec![0, -1, 65_535, 65_536, i32::MAX, i32::MIN])]
}

fn port_name() -> impl Strategy<Value = String> {
    select(vec!["", "http", "dns", "metrics"]).prop_map(str::to_owned)
}

fn service() -> impl Strategy<Value = core::Service> {
    (
        select(vec!["default", "team", ""]),
        select(vec!["a", "b", "c", "d"]),
        prop::collection::vec(ip_text(), 1..3),
        prop::collection::vec(
            (
                port_name(),
                port_number(),
                protocol(),
                prop::option::of(port_number()),
            ),
            0..4,
        ),
        prop::collection::vec(ip_text(), 0..2),
        prop::collection::vec(ip_text(), 0..2),
        prop::option::of(prop::collection::vec(
            select(vec!["10.0.0.0/8", "bad", "fd00::/8", "1.2.3.4/33"]),
            0..3,
        )),
        (
            any::<bool>(),
            any::<bool>(),
            prop::option::of(prop::option::of(-5i32..100_000)),
        ),
        select(vec![
            "ClusterIP",
            "NodePort",
            "LoadBalancer",
            "ExternalName",
            "Weird",
        ]),
    )
        .prop_map(
            |(ns, name, cluster_ips, ports, externals, lbs, ranges, (etp, itp, affinity), kind)| {
                let mut b = ServiceBuilder::cluster_ip(ns, name, &cluster_ips.join(","));
                for (pname, port, proto, node_port) in ports {
                    b = b.port(&pname, port).protocol(&proto);
                    if let Some(np) = node_port {
                        b = b.node_port(np);
                    }
                }
                let ext: Vec<&str> = externals.iter().map(String::as_str).collect();
                let lb: Vec<&str> = lbs.iter().map(String::as_str).collect();
                b = b.external_ips(&ext).load_balancer(&lb);
                if let Some(ranges) = ranges {
                    b = b.source_ranges(&ranges);
                }
                if etp {
                    b = b.external_policy_local().health_check_node_port(32_000);
                }
                if itp {
                    b = b.internal_policy_local();
                }
                if let Some(timeout) = affinity {
                    b = b.affinity(timeout);
                }
                b.with_spec(|s| s.type_ = Some(kind.to_owned())).build()
            },
        )
}

fn slice() -> impl Strategy<Value = EndpointSlice> {
    (
        select(vec!["default", "team"]),
        select(vec!["a", "b", "c", "d"]),
        select(vec!["1", "2", "3"]),
        select(vec!["IPv4", "IPv6", "FQDN", "Other"]),
        prop::collection::vec((port_name(), port_number(), protocol()), 0..3),
        prop::collection::vec(
            (
                ip_text(),
                select(vec!["node-a", "node-b", ""]),
                any::<(bool, bool, bool)>(),
                prop::option::of(select(vec!["z1", "z2"])),
                prop::option::of(select(vec!["node-a", "node-b"])),
            ),
            0..6,
        ),
    )
        .prop_map(|(ns, svc, suffix, family, ports, endpoints)| {
            let mut b = SliceBuilder::new(ns, svc)
                .name(&format!("{svc}-{suffix}"))
                .address_type(family);
            for (name, port, proto) in ports {
                b = b.port_with_protocol(&name, port, &proto);
            }
            for (ip, node, (ready, serving, terminating), zone, node_hint) in endpoints {
                b = b
                    .endpoint(&ip, node)
                    .conditions(ready, serving, terminating);
                if let Some(z) = zone {
                    b = b.hint_zones(&[z]);
                }
                if let Some(n) = node_hint {
                    b = b.hint_nodes(&[n]);
                }
            }
            b.build()
        })
}

fn settings() -> PlanSettings {
    PlanSettings {
        node_name: "node-a".into(),
        detect_local: DetectLocal::ClusterCidr,
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        node_port_addresses: NodePortAddresses::Primary,
        local_addresses: Vec::new(),
        masquerade_all: false,
    }
}

fn state(services: &[core::Service], slices: &[EndpointSlice]) -> ClusterState {
    let mut state = ClusterState::new();
    state.set_node(Some(
        NodeBuilder::new("node-a")
            .internal_ip("192.168.1.10")
            .zone("z1")
            .build(),
    ));
    for s in services {
        let _ = state.upsert_service(s.clone());
    }
    for s in slices {
        let _ = state.upsert_slice(s.clone());
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn planning_never_panics_and_ignores_arrival_order(
        services in prop::collection::vec(service(), 0..8),
        slices in prop::collection::vec(slice(), 0..8),
        seed in any::<u64>(),
    ) {
        let forward = compute(&state(&services, &slices), &settings());
        // The same objects, arriving in another order: the last write of a name still wins,
        // so shuffle only among distinct names by reversing within a rotation.
        let mut services_rev = services.clone();
        let mut slices_rev = slices.clone();
        let shift = usize::try_from(seed % 7).unwrap();
        dedup_last_wins(&mut services_rev, |s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
        dedup_last_wins(&mut slices_rev, |s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
        if !services_rev.is_empty() { let n = services_rev.len(); services_rev.rotate_left(shift % n); }
        if !slices_rev.is_empty() { let n = slices_rev.len(); slices_rev.rotate_left(shift % n); }
        services_rev.reverse();
        slices_rev.reverse();
        let shuffled = compute(&state(&services_rev, &slices_rev), &settings());
        prop_assert_eq!(&forward, &shuffled);
        // And the same input twice gives the same plan.
        prop_assert_eq!(&forward, &compute(&state(&services, &slices), &settings()));
    }
}

/// Keeps only the last object of each name, as a store would after those writes.
fn dedup_last_wins<T, K: PartialEq>(items: &mut Vec<T>, key: impl Fn(&T) -> K) {
    let mut kept: Vec<T> = Vec::new();
    for item in items.drain(..) {
        let k = key(&item);
        kept.retain(|other| key(other) != k);
        kept.push(item);
    }
    *items = kept;
}
