//! The syncer against the fake backend: partial syncs end where a full sync of the same plan
//! ends, touch only what changed, and recover from failures with a full sync.

use std::time::Duration;

use k8s_openapi::api::{core::v1 as core, discovery::v1::EndpointSlice};

use super::{FakeNft, Family, NftBackend as _, NftSyncer, SyncKind};
use crate::{
    model::{
        ClusterState, ServiceName,
        fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder},
    },
    plan::{DetectLocal, NodePortAddresses, PlanSettings, Planner, ProxyPlan},
};

const MARK: u32 = 0x4000;

fn settings() -> PlanSettings {
    PlanSettings {
        node_name: "node-a".into(),
        detect_local: DetectLocal::ClusterCidr,
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/56".parse().unwrap(),
        ],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        node_port_addresses: NodePortAddresses::Primary,
        local_addresses: Vec::new(),
        masquerade_all: false,
    }
}

/// A cluster with one Service of every kind the layout treats differently.
fn cluster() -> (Vec<core::Service>, Vec<EndpointSlice>) {
    let services = vec![
        ServiceBuilder::cluster_ip("default", "web", "10.96.0.10")
            .port("http", 80)
            .build(),
        ServiceBuilder::cluster_ip("default", "dns", "10.96.0.53")
            .port("dns", 53)
            .protocol("UDP")
            .port("dns-tcp", 53)
            .build(),
        ServiceBuilder::cluster_ip("default", "np", "10.96.0.20")
            .port("http", 80)
            .node_port(30080)
            .external_policy_local()
            .build(),
        ServiceBuilder::cluster_ip("default", "lb", "10.96.0.30")
            .port("http", 80)
            .node_port(30090)
            .load_balancer(&["198.51.100.7"])
            .source_ranges(&["172.16.0.0/16", "172.16.5.0/24"])
            .build(),
        ServiceBuilder::cluster_ip("default", "sticky", "10.96.0.40")
            .port("http", 80)
            .affinity(Some(60))
            .external_ips(&["203.0.113.9"])
            .build(),
        ServiceBuilder::cluster_ip("default", "dual", "10.96.0.50,fd00:96::50")
            .port("http", 80)
            .build(),
        ServiceBuilder::cluster_ip("default", "empty", "10.96.0.60")
            .port("http", 80)
            .node_port(30100)
            .build(),
    ];
    let slice = |svc: &str, eps: &[(&str, &str)]| {
        let mut b = SliceBuilder::new("default", svc).port("http", 8080);
        for (ip, node) in eps {
            b = b.endpoint(ip, node);
        }
        b.build()
    };
    let slices = vec![
        slice("web", &[("10.244.1.5", "node-a"), ("10.244.2.5", "node-b")]),
        SliceBuilder::new("default", "dns")
            .port_with_protocol("dns", 5353, "UDP")
            .port_with_protocol("dns-tcp", 5353, "TCP")
            .endpoint("10.244.1.7", "node-a")
            .build(),
        slice("np", &[("10.244.1.8", "node-a"), ("10.244.2.8", "node-b")]),
        slice("lb", &[("10.244.2.9", "node-b")]),
        slice(
            "sticky",
            &[("10.244.1.10", "node-a"), ("10.244.2.10", "node-b")],
        ),
        slice("dual", &[("10.244.1.11", "node-a")]),
        SliceBuilder::new("default", "dual")
            .name("dual-v6")
            .ipv6()
            .port("http", 8080)
            .endpoint("fd00:244:0:1::11", "node-a")
            .build(),
    ];
    (services, slices)
}

fn state_of(services: &[core::Service], slices: &[EndpointSlice]) -> ClusterState {
    let mut state = ClusterState::new();
    state.set_node(Some(
        NodeBuilder::new("node-a")
            .internal_ip("192.168.1.10")
            .pod_cidr("10.244.1.0/24")
            .build(),
    ));
    for s in services {
        state.upsert_service(s.clone()).unwrap();
    }
    for s in slices {
        state.upsert_slice(s.clone()).unwrap();
    }
    state
}

/// One edit of the cluster; returns the Services it affects.
type Change = dyn Fn(&mut ClusterState, &mut Vec<EndpointSlice>) -> Vec<ServiceName>;

fn fresh_full_dump(plan: &ProxyPlan) -> String {
    let mut syncer = NftSyncer::new(FakeNft::new(), MARK);
    let report = syncer.sync(plan).unwrap();
    assert_eq!(report.kind, SyncKind::Full);
    syncer.backend().dump()
}

fn syncer() -> NftSyncer<FakeNft> {
    let mut s = NftSyncer::new(FakeNft::new(), MARK);
    s.stale_delay = Duration::ZERO;
    s
}

#[test]
fn partial_syncs_end_where_a_full_sync_ends() {
    let (services, mut slices) = cluster();
    let mut state = state_of(&services, &slices);
    let mut planner = Planner::new(settings());
    let mut syncer = syncer();
    let plan = planner.full(&state);
    assert_eq!(syncer.sync(&plan).unwrap().kind, SyncKind::Full);
    assert_eq!(syncer.backend().dump(), fresh_full_dump(&plan));

    // A sequence of changes, each written as a partial sync.
    let changes: Vec<Box<Change>> = vec![
        // One more endpoint (2 -> 3: a new shared chain).
        Box::new(|st, sl| {
            sl[0] = SliceBuilder::new("default", "web")
                .port("http", 8080)
                .endpoint("10.244.1.5", "node-a")
                .endpoint("10.244.2.5", "node-b")
                .endpoint("10.244.3.5", "node-c")
                .build();
            st.upsert_slice(sl[0].clone()).unwrap()
        }),
        // The affinity Service loses its local endpoint (an affinity set goes stale).
        Box::new(|st, sl| {
            sl[4] = SliceBuilder::new("default", "sticky")
                .port("http", 8080)
                .endpoint("10.244.2.10", "node-b")
                .build();
            st.upsert_slice(sl[4].clone()).unwrap()
        }),
        // eTP Local Service loses its local endpoint: external traffic now dropped.
        Box::new(|st, sl| {
            sl[2] = SliceBuilder::new("default", "np")
                .port("http", 8080)
                .endpoint("10.244.2.8", "node-b")
                .build();
            st.upsert_slice(sl[2].clone()).unwrap()
        }),
        // The empty Service gets endpoints; the dual-stack one is deleted.
        Box::new(|st, sl| {
            let s = SliceBuilder::new("default", "empty")
                .port("http", 8080)
                .endpoint("10.244.1.5", "node-a")
                .build();
            sl.push(s.clone());
            let mut changed = st.upsert_slice(s).unwrap();
            st.remove_service(&ServiceName::new("default", "dual"));
            changed.push(ServiceName::new("default", "dual"));
            changed
        }),
        // Back to two endpoints: cluster-3 becomes unused and is deleted later.
        Box::new(|st, sl| {
            sl[0] = SliceBuilder::new("default", "web")
                .port("http", 8080)
                .endpoint("10.244.1.5", "node-a")
                .endpoint("10.244.2.5", "node-b")
                .build();
            st.upsert_slice(sl[0].clone()).unwrap()
        }),
    ];
    for (i, change) in changes.iter().enumerate() {
        let affected = change(&mut state, &mut slices);
        let plan = planner.update(&state, &affected);
        let report = syncer.sync(&plan).unwrap();
        assert_eq!(report.kind, SyncKind::Partial, "change {i}");
        // One more (empty) sync deletes what went stale.
        syncer.sync(&plan).unwrap();
        assert_eq!(
            syncer.backend().dump(),
            fresh_full_dump(&plan),
            "after change {i}"
        );
    }
}

#[test]
fn one_endpoint_change_writes_a_handful_of_elements() {
    let (services, mut slices) = cluster();
    let mut state = state_of(&services, &slices);
    let mut planner = Planner::new(settings());
    let mut syncer = syncer();
    syncer.sync(&planner.full(&state)).unwrap();
    slices[0] = SliceBuilder::new("default", "web")
        .port("http", 8080)
        .endpoint("10.244.1.5", "node-a")
        .endpoint("10.244.2.6", "node-b")
        .build();
    let changed = state.upsert_slice(slices[0].clone()).unwrap();
    let report = syncer.sync(&planner.update(&state, &changed)).unwrap();
    assert_eq!(report.kind, SyncKind::Partial);
    assert_eq!(report.services, 1);
    // The replaced endpoint's element is deleted and re-added with its new address.
    assert_eq!(
        (report.elements_added, report.elements_deleted),
        (1, 1),
        "{report:?}"
    );
    let endpoints = syncer.backend().elements(Family::Ip, "endpoints-tcp");
    assert_eq!(
        endpoints.get("10.96.0.10 . tcp . 80 . 1"),
        Some(&Some("10.244.2.6 . 8080".to_owned()))
    );
}

#[test]
fn an_unchanged_plan_writes_nothing() {
    let (services, slices) = cluster();
    let state = state_of(&services, &slices);
    let mut planner = Planner::new(settings());
    let mut syncer = syncer();
    syncer.sync(&planner.full(&state)).unwrap();
    let before = syncer.backend().applied.len();
    let report = syncer.sync(&planner.update(&state, &[])).unwrap();
    assert_eq!((report.kind, report.services), (SyncKind::Partial, 0));
    assert_eq!(syncer.backend().applied.len(), before);
}

#[test]
fn a_replan_with_nothing_changed_writes_nothing_and_then_changes_are_one_service_each() {
    let (services, mut slices) = cluster();
    let mut state = state_of(&services, &slices);
    let mut planner = Planner::new(settings());
    let mut syncer = syncer();
    syncer.sync(&planner.full(&state)).unwrap();
    let before = syncer.backend().applied.len();
    // Planned anew: every Service is a new copy with the same content.
    let report = syncer.sync(&planner.full(&state)).unwrap();
    assert_eq!((report.kind, report.services), (SyncKind::Partial, 0));
    assert_eq!(syncer.backend().applied.len(), before);
    slices[0] = SliceBuilder::new("default", "web")
        .port("http", 8080)
        .endpoint("10.244.1.5", "node-a")
        .build();
    let changed = state.upsert_slice(slices[0].clone()).unwrap();
    let plan = planner.update(&state, &changed);
    let report = syncer.sync(&plan).unwrap();
    assert_eq!((report.kind, report.services), (SyncKind::Partial, 1));
    syncer.sync(&plan).unwrap();
    assert_eq!(syncer.backend().dump(), fresh_full_dump(&plan));
}

#[test]
fn a_failed_apply_keeps_the_old_rules_and_forces_a_full_sync() {
    let (services, mut slices) = cluster();
    let mut state = state_of(&services, &slices);
    let mut planner = Planner::new(settings());
    let mut syncer = syncer();
    let first = planner.full(&state);
    syncer.sync(&first).unwrap();
    let before = syncer.backend().dump();

    slices[0] = SliceBuilder::new("default", "web")
        .port("http", 8080)
        .endpoint("10.244.1.99", "node-a")
        .build();
    let changed = state.upsert_slice(slices[0].clone()).unwrap();
    let plan = planner.update(&state, &changed);
    syncer.backend_mut().fail_next = Some("injected".into());
    assert!(syncer.sync(&plan).is_err());
    assert_eq!(
        syncer.backend().dump(),
        before,
        "a failed transaction changes nothing"
    );
    assert!(syncer.needs_full(&plan));
    assert_eq!(syncer.sync(&plan).unwrap().kind, SyncKind::Full);
    assert_eq!(syncer.backend().dump(), fresh_full_dump(&plan));
}

#[test]
fn adopting_a_table_with_leftovers() {
    let (services, slices) = cluster();
    let plan = Planner::new(settings()).full(&state_of(&services, &slices));
    let mut syncer = syncer();
    syncer.sync(&plan).unwrap();
    // A chain nobody wants any more, created behind our back; deleting a set still in use
    // is refused, as the kernel refuses it.
    let backend = syncer.backend_mut();
    backend
        .tamper(&super::Command::AddChain {
            family: Family::Ip,
            name: "leftover".into(),
            base: None,
        })
        .unwrap();
    backend
        .tamper(&super::Command::DeleteSet {
            family: Family::Ip,
            name: "hairpin".into(),
            map: false,
        })
        .unwrap_err();

    // A new agent adopts the table: the full sync flushes the leftover, and deletes it later.
    let mut adopter = syncer_with(syncer.backend().clone());
    assert_eq!(adopter.sync(&plan).unwrap().kind, SyncKind::Full);
    adopter.sync(&plan).unwrap();
    assert_eq!(adopter.backend().dump(), fresh_full_dump(&plan));
}

fn syncer_with(backend: FakeNft) -> NftSyncer<FakeNft> {
    let mut s = NftSyncer::new(backend, MARK);
    s.stale_delay = Duration::ZERO;
    s
}

#[test]
fn a_conflicting_declaration_is_replaced_atomically() {
    let (services, slices) = cluster();
    let plan = Planner::new(settings()).full(&state_of(&services, &slices));
    let mut backend = FakeNft::new();
    // An older layout declared `service-ips` with another type.
    backend
        .apply(&super::Transaction {
            commands: vec![
                super::Command::AddTable { family: Family::Ip },
                super::Command::AddSet {
                    family: Family::Ip,
                    name: "service-ips".into(),
                    map: true,
                    spec: "type ipv4_addr : verdict ;".into(),
                },
            ],
        })
        .unwrap();
    let mut syncer = syncer_with(backend);
    assert_eq!(syncer.sync(&plan).unwrap().kind, SyncKind::Full);
    assert_eq!(syncer.backend().dump(), fresh_full_dump(&plan));
}

#[test]
fn cleanup_removes_both_tables_and_is_idempotent() {
    let (services, slices) = cluster();
    let plan = Planner::new(settings()).full(&state_of(&services, &slices));
    let mut syncer = syncer();
    syncer.sync(&plan).unwrap();
    syncer.cleanup().unwrap();
    assert_eq!(syncer.backend().dump(), "");
    syncer.cleanup().unwrap();
    assert!(syncer.needs_full(&plan));
}
