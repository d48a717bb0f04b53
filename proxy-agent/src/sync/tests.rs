//! The loop against the fake nftables backend.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1 as core;

use super::{EventSink, Parts, SyncLoop, Timing};
use crate::{
    health::HealthState,
    metrics::Metrics,
    model::{
        ObjectError,
        fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder},
    },
    nft::{FakeNft, NftSyncer, SyncKind},
    plan::{PlanSettings, Planner},
    source::{Kind, Object, SourceEvent},
};

#[derive(Default)]
struct RecordedEvents(Mutex<Vec<(String, usize)>>);

impl EventSink for RecordedEvents {
    fn service_invalid(&self, service: &core::Service, errors: &[ObjectError]) {
        self.0.lock().unwrap().push((
            service.metadata.name.clone().unwrap_or_default(),
            errors.len(),
        ));
    }
}

fn sync_loop(events: Arc<RecordedEvents>) -> SyncLoop<FakeNft> {
    let settings = PlanSettings {
        node_name: "node-a".into(),
        ..PlanSettings::default()
    };
    SyncLoop::new(
        NftSyncer::new(FakeNft::new(), 0x4000),
        Parts {
            planner: Planner::new(settings),
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(HealthState::new(std::time::Duration::from_mins(1))),
            events,
            fast_path: None,
            udp_stale_entry_cleanup: false,
            timing: Timing::default(),
            drop_capabilities: false,
        },
    )
}

fn replace_all(l: &mut SyncLoop<FakeNft>, services: Vec<core::Service>) {
    l.handle(SourceEvent::Replace {
        kind: Kind::Services,
        objects: services.into_iter().map(Object::Service).collect(),
    });
    l.handle(SourceEvent::Replace {
        kind: Kind::EndpointSlices,
        objects: vec![Object::Slice(
            SliceBuilder::new("default", "web")
                .port("http", 8080)
                .endpoint("10.244.1.5", "node-a")
                .build(),
        )],
    });
    l.handle(SourceEvent::Replace {
        kind: Kind::Node,
        objects: vec![Object::Node(
            NodeBuilder::new("node-a")
                .internal_ip("192.168.1.10")
                .build(),
        )],
    });
}

#[test]
fn nothing_syncs_before_every_kind_was_listed() {
    let mut l = sync_loop(Arc::default());
    l.handle(SourceEvent::Replace {
        kind: Kind::Services,
        objects: vec![],
    });
    l.handle(SourceEvent::Replace {
        kind: Kind::EndpointSlices,
        objects: vec![],
    });
    assert!(!l.ready());
    l.handle(SourceEvent::Replace {
        kind: Kind::Node,
        objects: vec![],
    });
    assert!(l.ready());
}

#[test]
fn changes_sync_partially_and_relists_fully() {
    let mut l = sync_loop(Arc::default());
    replace_all(
        &mut l,
        vec![
            ServiceBuilder::cluster_ip("default", "web", "10.96.0.10")
                .port("http", 80)
                .build(),
        ],
    );
    assert_eq!(l.sync().unwrap(), SyncKind::Full);
    assert!(!l.has_changes());

    l.handle(SourceEvent::Applied(Object::Slice(
        SliceBuilder::new("default", "web")
            .port("http", 8080)
            .endpoint("10.244.1.6", "node-a")
            .build(),
    )));
    assert!(l.has_changes());
    assert_eq!(l.sync().unwrap(), SyncKind::Partial);
    let endpoints = l
        .nft()
        .backend()
        .elements(crate::nft::Family::Ip, "endpoints-tcp");
    assert_eq!(
        endpoints.values().flatten().cloned().collect::<Vec<_>>(),
        ["10.244.1.6 . 8080"]
    );

    // A re-list is a full sync.
    replace_all(
        &mut l,
        vec![
            ServiceBuilder::cluster_ip("default", "web", "10.96.0.10")
                .port("http", 80)
                .build(),
        ],
    );
    assert_eq!(l.sync().unwrap(), SyncKind::Full);
}

#[test]
fn a_failed_sync_keeps_the_rules_counts_and_retries_in_full() {
    let mut l = sync_loop(Arc::default());
    replace_all(
        &mut l,
        vec![
            ServiceBuilder::cluster_ip("default", "web", "10.96.0.10")
                .port("http", 80)
                .build(),
        ],
    );
    l.sync().unwrap();
    let before = l.nft().backend().dump();
    l.handle(SourceEvent::Deleted(Object::Service(
        ServiceBuilder::cluster_ip("default", "web", "10.96.0.10")
            .port("http", 80)
            .build(),
    )));
    l.nft.backend_mut().fail_next = Some("injected".into());
    assert!(l.sync().is_err());
    assert_eq!(l.nft().backend().dump(), before);
    assert!(
        l.parts
            .metrics
            .encode()
            .contains("kubeproxy_sync_proxy_rules_nftables_sync_failures_total 1")
    );
    assert!(l.has_changes());
    assert_eq!(l.sync().unwrap(), SyncKind::Full);
    assert!(l.plan().unwrap().services.is_empty());
}

#[test]
fn a_service_is_reported_once_per_change_of_its_problems() {
    let events = Arc::new(RecordedEvents::default());
    let mut l = sync_loop(events.clone());
    let bad = |ports: &[i32]| {
        let mut b = ServiceBuilder::cluster_ip("default", "web", "10.96.0.10");
        for (i, p) in ports.iter().enumerate() {
            b = b.port(&format!("p{i}"), *p);
        }
        b.build()
    };
    replace_all(&mut l, vec![bad(&[80, 0])]);
    l.sync().unwrap();
    l.handle(SourceEvent::Applied(Object::Node(
        NodeBuilder::new("node-a")
            .internal_ip("192.168.1.11")
            .build(),
    )));
    l.sync().unwrap();
    assert_eq!(*events.0.lock().unwrap(), [("web".to_owned(), 1)]);
    l.handle(SourceEvent::Applied(Object::Service(bad(&[80, 0, 70_000]))));
    l.sync().unwrap();
    assert_eq!(
        events.0.lock().unwrap().last(),
        Some(&("web".to_owned(), 2))
    );
    assert_eq!(events.0.lock().unwrap().len(), 2);
}

#[test]
fn a_reload_of_the_sync_timing_applies_to_the_next_decision_and_to_healthz() {
    use std::time::Duration;

    use tokio::time::Instant;

    let mut l = sync_loop(Arc::default());
    let reload = |sync_period: u64, min_sync_period: u64| super::Reload {
        settings: l_settings(),
        mark: 0x4000,
        fast_path: None,
        udp_stale_entry_cleanup: false,
        min_sync_period: Duration::from_secs(min_sync_period),
        sync_period: Duration::from_secs(sync_period),
    };
    assert_eq!(
        l.next_due(Instant::now(), None, None),
        None,
        "not listed yet"
    );
    replace_all(
        &mut l,
        vec![
            ServiceBuilder::cluster_ip("default", "web", "10.96.0.10")
                .port("http", 80)
                .build(),
        ],
    );
    l.sync().expect("first sync");
    let t0 = Instant::now();
    let default = Timing::default();
    assert_eq!(
        l.next_due(t0, Some(t0), None),
        Some(t0 + default.sync_period)
    );

    l.control(super::Control::Reload(Box::new(reload(5, 2))));
    assert_eq!(l.timing().sync_period, Duration::from_secs(5));
    assert_eq!(
        l.next_due(t0, Some(t0), None),
        Some(t0 + Duration::from_secs(5)),
        "the periodic sync follows the new syncPeriod"
    );
    l.handle(SourceEvent::Replace {
        kind: Kind::Services,
        objects: vec![],
    });
    assert_eq!(
        l.next_due(t0, Some(t0), None),
        Some(t0 + Duration::from_secs(2)),
        "a change waits the new minSyncPeriod"
    );
    assert_eq!(
        l.parts.health.timeout(),
        Duration::from_secs(10),
        "/healthz allows twice the new syncPeriod"
    );
}

fn l_settings() -> PlanSettings {
    PlanSettings {
        node_name: "node-a".into(),
        ..PlanSettings::default()
    }
}
