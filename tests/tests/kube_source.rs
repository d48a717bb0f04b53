//! The agent's Kubernetes source (`KubeSource`) and event sink (`KubeEvents`) against the fake
//! API server over real HTTP: what reaches the sync loop for lists, changes, re-lists after
//! `410 Gone`, outages and slow responses, and what a Warning Event looks like on the server.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use hybrid_proxy_tests::fake_api::FakeApiServer;
use k8s_openapi::{
    Metadata,
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::Api;
use proxy_agent::{
    model::{
        InvalidReason, ObjectError, ObjectKind,
        fixtures::{NodeBuilder, ServiceBuilder, SliceBuilder},
    },
    source::{
        Kind, Object, Source, SourceError, SourceEvent,
        kube::{
            self as kube_source, HEADLESS_LABEL, KubeEvents, KubeSource, SERVICE_PROXY_NAME_LABEL,
        },
    },
    sync::EventSink,
};
use tokio::{sync::mpsc, task::JoinHandle};

/// Long enough for any step on a loaded 2-core machine (kube-runtime's backoff alone can wait
/// ~10 s after a few failed attempts), short enough that a hang fails the test.
const STEP: Duration = Duration::from_secs(45);

const NODE: &str = "node-a";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn with_label<T: Metadata<Ty = ObjectMeta>>(mut object: T, key: &str, value: &str) -> T {
    object
        .metadata_mut()
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
    object
}

fn service(name: &str, port: i32) -> Service {
    ServiceBuilder::cluster_ip("default", name, "10.96.0.10")
        .port("http", port)
        .build()
}

fn slice(service: &str, name: &str, ip: &str) -> EndpointSlice {
    SliceBuilder::new("default", service)
        .name(name)
        .port("http", 8080)
        .endpoint(ip, NODE)
        .build()
}

/// `(kind, namespace/name)` of an object.
fn key(object: &Object) -> (Kind, String) {
    let meta = match object {
        Object::Service(o) => &o.metadata,
        Object::Slice(o) => &o.metadata,
        Object::Node(o) => &o.metadata,
    };
    (
        object.kind(),
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ),
    )
}

fn resource_version(object: &Object) -> String {
    let meta = match object {
        Object::Service(o) => &o.metadata,
        Object::Slice(o) => &o.metadata,
        Object::Node(o) => &o.metadata,
    };
    meta.resource_version.clone().unwrap_or_default()
}

fn names(objects: &[Object]) -> Vec<String> {
    let mut names: Vec<String> = objects.iter().map(|o| key(o).1).collect();
    names.sort();
    names
}

/// Awaits `future`, failing the test with `what` if it takes longer than [`STEP`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?} waiting for {what}"))
}

/// What the sync loop would know after the events so far: the resourceVersion of every object
/// by kind and name, and how many `Replace`s of each kind came.
#[derive(Debug, Default)]
struct View {
    objects: BTreeMap<(Kind, String), String>,
    replaces: BTreeMap<Kind, usize>,
}

impl View {
    fn apply(&mut self, event: &SourceEvent) {
        match event {
            SourceEvent::Replace { kind, objects } => {
                self.objects.retain(|(k, _), _| k != kind);
                for object in objects {
                    self.objects.insert(key(object), resource_version(object));
                }
                *self.replaces.entry(*kind).or_default() += 1;
            }
            SourceEvent::Applied(object) => {
                self.objects.insert(key(object), resource_version(object));
            }
            SourceEvent::Deleted(object) => {
                self.objects.remove(&key(object));
            }
            SourceEvent::Problems(problems) => panic!("the kube source reported {problems:?}"),
        }
    }

    /// What the loop should know of the server's current objects: every Service and slice not
    /// excluded by kube-proxy's selector, and this node.
    fn expected(server: &FakeApiServer) -> BTreeMap<(Kind, String), String> {
        let selected = |meta: &ObjectMeta| {
            meta.labels.as_ref().is_none_or(|labels| {
                !labels.contains_key(SERVICE_PROXY_NAME_LABEL)
                    && !labels.contains_key(HEADLESS_LABEL)
            })
        };
        let services = server
            .list::<Service>()
            .into_iter()
            .filter(|s| selected(&s.metadata))
            .map(Object::Service);
        let slices = server
            .list::<EndpointSlice>()
            .into_iter()
            .filter(|s| selected(&s.metadata))
            .map(Object::Slice);
        let nodes = server.get::<Node>(None, NODE).map(Object::Node);
        services
            .chain(slices)
            .chain(nodes)
            .map(|o| (key(&o), resource_version(&o)))
            .collect()
    }
}

/// A `KubeSource` running against a fake API server, and the events it sent.
struct Watching {
    events: mpsc::Receiver<SourceEvent>,
    task: JoinHandle<Result<(), SourceError>>,
    view: View,
}

impl Watching {
    fn start(server: &FakeApiServer) -> Self {
        // A small channel, as the agent's is bounded too: the source must wait, not drop.
        let (tx, events) = mpsc::channel(4);
        let source: Box<dyn Source> = Box::new(KubeSource::new(server.client(), NODE));
        let task = tokio::spawn(source.run(tx));
        Self {
            events,
            task,
            view: View::default(),
        }
    }

    async fn next(&mut self, what: &str) -> SourceEvent {
        let event = within(what, self.events.recv())
            .await
            .unwrap_or_else(|| panic!("the source stopped while waiting for {what}"));
        self.view.apply(&event);
        event
    }

    /// The first `Replace` of every kind, by kind.
    async fn initial_lists(&mut self) -> BTreeMap<Kind, Vec<Object>> {
        let mut lists = BTreeMap::new();
        while lists.len() < Kind::ALL.len() {
            match self.next("the initial lists").await {
                SourceEvent::Replace { kind, objects } => {
                    assert!(
                        lists.insert(kind, objects).is_none(),
                        "two lists of {kind:?} in a row"
                    );
                }
                other => panic!("a change before every kind was listed: {other:?}"),
            }
        }
        lists
    }

    /// The next event about `kind`, skipping (but recording) others.
    async fn next_of(&mut self, kind: Kind) -> SourceEvent {
        loop {
            let event = self.next(&format!("an event about {kind:?}")).await;
            let of_kind = match &event {
                SourceEvent::Replace { kind: k, .. } => *k == kind,
                SourceEvent::Applied(o) | SourceEvent::Deleted(o) => o.kind() == kind,
                SourceEvent::Problems(_) => false,
            };
            if of_kind {
                return event;
            }
        }
    }

    /// The next event about each of `kinds`, which must be a `Replace`, by kind; events about
    /// other kinds are skipped (but recorded).
    async fn relists(&mut self, kinds: &[Kind]) -> BTreeMap<Kind, Vec<Object>> {
        let mut lists = BTreeMap::new();
        while lists.len() < kinds.len() {
            let event = self.next(&format!("re-lists of {kinds:?}")).await;
            let kind = match &event {
                SourceEvent::Replace { kind, .. } => *kind,
                SourceEvent::Applied(o) | SourceEvent::Deleted(o) => o.kind(),
                SourceEvent::Problems(_) => continue,
            };
            if !kinds.contains(&kind) || lists.contains_key(&kind) {
                continue;
            }
            let SourceEvent::Replace { objects, .. } = event else {
                panic!("the first event about {kind:?} after 410 is a re-list, not {event:?}");
            };
            lists.insert(kind, objects);
        }
        lists
    }

    /// Receives events until what they say matches the server's objects.
    async fn converge(&mut self, server: &FakeApiServer, what: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            let expected = View::expected(server);
            if self.view.objects == expected {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(event)) => self.view.apply(&event),
                Ok(None) => panic!("the source stopped before {what}"),
                Err(elapsed) => panic!(
                    "no convergence ({what}, {elapsed} after {STEP:?}): the source says {:#?}, \
                     the server has {expected:#?}",
                    self.view.objects
                ),
            }
        }
    }

    /// Fails if any event arrives within `quiet`.
    async fn expect_quiet(&mut self, quiet: Duration, why: &str) {
        if let Ok(event) = tokio::time::timeout(quiet, self.events.recv()).await {
            panic!("{why}, yet the source sent {event:?}");
        }
    }

    /// Drops the receiver; the source must notice and return `Ok`.
    async fn stop(self) {
        drop(self.events);
        let result = within(
            "the source to return after the receiver was dropped",
            self.task,
        )
        .await
        .expect("the source task does not panic");
        assert!(result.is_ok(), "the source failed: {result:?}");
    }
}

fn cluster() -> FakeApiServer {
    let server = FakeApiServer::start();
    server.apply(&service("web", 80));
    server.apply(&service("dns", 53));
    server.apply(&with_label(
        service("other-proxy", 81),
        SERVICE_PROXY_NAME_LABEL,
        "some-other-proxy",
    ));
    server.apply(&slice("web", "web-1", "10.244.1.5"));
    server.apply(&slice("dns", "dns-1", "10.244.1.6"));
    server.apply(&with_label(
        slice("headless", "headless-1", "10.244.1.7"),
        HEADLESS_LABEL,
        "",
    ));
    server.apply(&NodeBuilder::new(NODE).internal_ip("192.168.1.10").build());
    server.apply(
        &NodeBuilder::new("node-b")
            .internal_ip("192.168.1.11")
            .build(),
    );
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_lists_are_one_replace_per_kind_filtered_like_kube_proxy() {
    init_tracing();
    let server = cluster();
    let mut watching = Watching::start(&server);
    let lists = watching.initial_lists().await;
    assert_eq!(
        names(&lists[&Kind::Services]),
        ["default/dns", "default/web"],
        "Services owned by another proxy are not listed"
    );
    assert_eq!(
        names(&lists[&Kind::EndpointSlices]),
        ["default/dns-1", "default/web-1"],
        "slices of headless Services are not listed"
    );
    assert_eq!(names(&lists[&Kind::Node]), ["/node-a"], "only this node");
    // The objects are the server's, resourceVersion and uid included.
    let Object::Node(node) = &lists[&Kind::Node][0] else {
        panic!("a Node list holds Nodes");
    };
    assert_eq!(node, &server.get::<Node>(None, NODE).unwrap());
    // Kube-proxy's selector reached the server.
    let services: Api<Service> = Api::all(server.client());
    assert!(
        services
            .list(&kube::api::ListParams::default().labels(&kube_source::label_selector()))
            .await
            .unwrap()
            .items
            .iter()
            .all(|s| s.metadata.name.as_deref() != Some("other-proxy"))
    );
    watching.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arrive_as_applied_and_deleted_and_filters_hold() {
    init_tracing();
    let server = cluster();
    let mut watching = Watching::start(&server);
    watching.initial_lists().await;

    // A changed Service.
    let changed = server.apply(&service("web", 8080));
    assert_eq!(
        watching.next_of(Kind::Services).await,
        SourceEvent::Applied(Object::Service(changed))
    );

    // A Service of another proxy changes, then one of ours is created: only ours arrives.
    server.apply(&with_label(
        service("other-proxy", 82),
        SERVICE_PROXY_NAME_LABEL,
        "some-other-proxy",
    ));
    let created = server.apply(&service("api", 443));
    assert_eq!(
        watching.next_of(Kind::Services).await,
        SourceEvent::Applied(Object::Service(created))
    );

    // A Service handed to another proxy leaves the selection: for us it is deleted.
    server.apply(&with_label(
        service("dns", 53),
        SERVICE_PROXY_NAME_LABEL,
        "some-other-proxy",
    ));
    let event = watching.next_of(Kind::Services).await;
    assert!(
        matches!(&event, SourceEvent::Deleted(o) if key(o).1 == "default/dns"),
        "{event:?}"
    );

    // A deleted slice.
    let deleted = server
        .delete::<EndpointSlice>(Some("default"), "web-1")
        .unwrap();
    let event = watching.next_of(Kind::EndpointSlices).await;
    assert!(
        matches!(&event, SourceEvent::Deleted(Object::Slice(s)) if s.metadata.name == deleted.metadata.name),
        "{event:?}"
    );

    // Another node changes, then ours: only ours arrives.
    server.apply(
        &NodeBuilder::new("node-b")
            .internal_ip("192.168.1.21")
            .build(),
    );
    let ours = server.apply(&NodeBuilder::new(NODE).internal_ip("192.168.1.20").build());
    assert_eq!(
        watching.next_of(Kind::Node).await,
        SourceEvent::Applied(Object::Node(ours))
    );

    watching.converge(&server, "after the changes").await;
    assert_eq!(
        watching.view.replaces.values().sum::<usize>(),
        3,
        "no re-list without a reason"
    );
    watching.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_after_410_is_a_replace_without_what_was_deleted_meanwhile() {
    init_tracing();
    let server = cluster();
    let mut watching = Watching::start(&server);
    watching.initial_lists().await;
    let expired_before = server.requests::<Service>().expired_watches;

    // The watchers reconnect at once after a drop; a response delay holds their new watches
    // back until the changes are made and the history that would resume them is gone.
    server.set_response_delay(Duration::from_secs(1));
    server.drop_watches();
    server.delete::<Service>(Some("default"), "dns").unwrap();
    server
        .delete::<EndpointSlice>(Some("default"), "dns-1")
        .unwrap();
    server.apply(&service("api", 443));
    server.compact();
    server.set_response_delay(Duration::ZERO);

    // Each kind's watcher re-lists on its own, so the two lists may come in either order.
    let lists = watching
        .relists(&[Kind::Services, Kind::EndpointSlices])
        .await;
    assert_eq!(
        names(&lists[&Kind::Services]),
        ["default/api", "default/web"]
    );
    assert_eq!(names(&lists[&Kind::EndpointSlices]), ["default/web-1"]);
    assert!(
        server.requests::<Service>().expired_watches > expired_before,
        "the Service watch was answered with 410 Gone"
    );
    watching.converge(&server, "after the re-list").await;
    watching.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_removes_nothing_and_the_source_converges_after_it_slow_or_fresh() {
    init_tracing();
    let server = cluster();
    let mut watching = Watching::start(&server);
    watching.initial_lists().await;

    // Down: changes pile up on the server, and the source sends nothing meanwhile (in
    // particular no empty lists).
    server.stop();
    server.delete::<Service>(Some("default"), "dns").unwrap();
    server.apply(&service("web", 8080));
    server.apply(&slice("web", "web-2", "10.244.1.9"));
    watching
        .expect_quiet(Duration::from_secs(2), "the API server is down")
        .await;

    // Back with history intact, but slow: the watches resume and bring what was missed.
    server.set_response_delay(Duration::from_millis(400));
    server.restart();
    watching.converge(&server, "a restart with history").await;
    assert_eq!(
        watching.view.replaces.values().sum::<usize>(),
        3,
        "a watch that could resume does not list again"
    );

    // Down again, and back without history (a fresh API server): every kind is listed again.
    server.stop();
    server
        .delete::<EndpointSlice>(Some("default"), "dns-1")
        .unwrap();
    server.apply(&NodeBuilder::new(NODE).internal_ip("192.168.1.30").build());
    watching
        .expect_quiet(Duration::from_secs(1), "the API server is down again")
        .await;
    server.compact();
    server.restart();
    watching.converge(&server, "a fresh restart").await;
    // Every watch resumed from a version older than the compacted history: 410, then a list.
    assert_eq!(
        watching.view.replaces,
        Kind::ALL.into_iter().map(|kind| (kind, 2)).collect(),
        "every kind was listed again"
    );
    server.set_response_delay(Duration::ZERO);
    watching.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_returns_when_the_loop_hangs_up_even_while_the_api_is_down() {
    init_tracing();
    let server = cluster();
    let mut watching = Watching::start(&server);
    watching.initial_lists().await;
    server.stop();
    watching.stop().await;
}

fn problem(field: &str, reason: InvalidReason) -> ObjectError {
    ObjectError {
        kind: ObjectKind::Service,
        namespace: "default".into(),
        name: "web".into(),
        field: field.into(),
        reason,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_service_becomes_a_warning_event_on_it() {
    init_tracing();
    let server = FakeApiServer::start();
    let web = server.apply(&service("web", 80));
    let events = KubeEvents::new(server.client(), NODE);

    events.service_invalid(
        &web,
        &[problem(
            "spec.ports[0].protocol",
            InvalidReason::UnknownProtocol {
                value: "ICMP".into(),
            },
        )],
    );
    // No problems: nothing to warn about.
    events.service_invalid(&web, &[]);
    // The problems changed: a new Event that says what they are now.
    events.service_invalid(
        &web,
        &[problem(
            "spec.ports[0].port",
            InvalidReason::PortOutOfRange { value: 70000 },
        )],
    );

    within("two recorded events", async {
        while server.events().len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let recorded = server.events();
    assert_eq!(recorded.len(), 2, "{recorded:#?}");
    for event in &recorded {
        assert_eq!(event["apiVersion"], "events.k8s.io/v1");
        assert_eq!(event["metadata"]["namespace"], "default");
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "InvalidService");
        assert_eq!(event["reportingController"], "hybrid-proxy");
        assert_eq!(event["reportingInstance"], NODE);
        let regarding = &event["regarding"];
        assert_eq!(regarding["apiVersion"], "v1");
        assert_eq!(regarding["kind"], "Service");
        assert_eq!(regarding["namespace"], "default");
        assert_eq!(regarding["name"], "web");
        assert_eq!(
            regarding["uid"].as_str(),
            web.metadata.uid.as_deref(),
            "the Event names this Service, not a namesake"
        );
    }
    assert_eq!(
        recorded[0]["note"],
        "spec.ports[0].protocol: unknown protocol \"ICMP\" (want TCP, UDP or SCTP)"
    );
    assert_eq!(
        recorded[1]["note"],
        "spec.ports[0].port: 70000 is out of range 1-65535"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_is_logged_not_fatal() {
    init_tracing();
    let server = FakeApiServer::start();
    let web = server.apply(&service("web", 80));
    let events = KubeEvents::new(server.client(), NODE);
    server.stop();
    let bad = [problem("spec.ports[0].port", InvalidReason::Missing)];
    events.service_invalid(&web, &bad);
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    // The publisher is still there for the next report.
    events.service_invalid(&web, &bad);
    within("a recorded event after the outage", async {
        while server.events().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_an_explicit_kubeconfig_reaches_the_server() {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    init_tracing();
    let server = cluster();
    let path = std::env::temp_dir().join(format!(
        "kube-source-kubeconfig-{}-{}.yaml",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    server.write_kubeconfig(&path);
    let client = kube_source::client(Some(&path)).await;
    std::fs::remove_file(&path).unwrap();
    let client = client.unwrap();
    let (tx, mut rx) = mpsc::channel(8);
    let source: Box<dyn Source> = Box::new(KubeSource::new(client, NODE));
    let task = tokio::spawn(source.run(tx));
    let first = within("a first list", rx.recv()).await.unwrap();
    assert!(matches!(first, SourceEvent::Replace { .. }), "{first:?}");
    drop(rx);
    within("the source to stop", task).await.unwrap().unwrap();

    let missing = kube_source::client(Some(std::path::Path::new("/nonexistent/kubeconfig"))).await;
    let Err(error) = missing else {
        panic!("a client from a kubeconfig that does not exist");
    };
    assert!(
        error.to_string().contains("/nonexistent/kubeconfig"),
        "the error names the file: {error}"
    );
}
