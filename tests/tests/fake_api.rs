//! The real kube-rs client (`Api`, `watcher`, `reflector`, event `Recorder`) against the fake
//! API server: what the proxy's Kubernetes source relies on, including how it recovers from
//! dropped watches, compaction (`410 Gone`) and outages.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    future::Future,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt as _};
use hybrid_proxy_tests::fake_api::{ApiObject, FakeApiServer};
use k8s_openapi::{
    api::{
        core::v1::{Node, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        events::{Event as RecordedEvent, EventType, Recorder, Reporter},
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::mpsc;

/// Long enough for any step on a loaded 2-core machine, short enough that a hang fails fast.
const STEP: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        ..ObjectMeta::default()
    }
}

fn service(name: &str, port: i32) -> Service {
    Service {
        metadata: meta(Some("default"), name),
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            ports: Some(vec![ServicePort {
                port,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn endpoint_slice(name: &str, addresses: &[&str]) -> EndpointSlice {
    let mut metadata = meta(Some("apps"), name);
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".into(),
        "web".into(),
    )]));
    EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: addresses
            .iter()
            .map(|a| Endpoint {
                addresses: vec![(*a).into()],
                ..Endpoint::default()
            })
            .collect(),
        ports: None,
    }
}

fn node(name: &str, zone: &str) -> Node {
    let mut metadata = meta(None, name);
    metadata.labels = Some(BTreeMap::from([(
        "topology.kubernetes.io/zone".into(),
        zone.into(),
    )]));
    Node {
        metadata,
        ..Node::default()
    }
}

fn port_of(service: &Service) -> i32 {
    service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port
}

/// Awaits `future`, failing the test with `what` if it takes longer than [`STEP`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?} waiting for {what}"))
}

/// Polls `condition` until it holds, failing the test after [`STEP`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// What a watcher stream produced, reduced to what the tests compare.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String),
    Delete(String),
    /// A `WatchEvent::Error` from the server, with its code.
    ServerError(u16),
    /// The connection failed or broke.
    Disconnected,
}

fn seen<K: Resource>(item: Result<watcher::Event<K>, watcher::Error>) -> Seen {
    match item {
        Ok(watcher::Event::Init) => Seen::Init,
        Ok(watcher::Event::InitApply(o)) => Seen::InitApply(o.name_any()),
        Ok(watcher::Event::InitDone) => Seen::InitDone,
        Ok(watcher::Event::Apply(o)) => Seen::Apply(o.name_any()),
        Ok(watcher::Event::Delete(o)) => Seen::Delete(o.name_any()),
        Err(watcher::Error::WatchError(status)) => Seen::ServerError(status.code),
        Err(
            watcher::Error::WatchFailed(_)
            | watcher::Error::WatchStartFailed(_)
            | watcher::Error::InitialListFailed(_),
        ) => Seen::Disconnected,
        Err(other) => panic!("unexpected watcher error: {other}"),
    }
}

async fn next_seen<K: Resource>(
    stream: &mut (impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin),
) -> Seen {
    let item = within("the next watcher event", stream.next()).await;
    seen(item.expect("the watcher stream never ends"))
}

/// Reads the next events and checks them against `expected`.
async fn expect_seen<K: Resource>(
    stream: &mut (impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin),
    expected: &[Seen],
) {
    let mut got = Vec::new();
    for _ in expected {
        got.push(next_seen(stream).await);
    }
    assert_eq!(got, expected);
}

/// A reflector over every object of `K`, driven in the background with kube-rs's default
/// backoff, as the agent runs it. Returns the store and what the watcher produced.
fn reflect<K>(api: Api<K>) -> (Store<K>, mpsc::UnboundedReceiver<Seen>)
where
    K: ApiObject + Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if seen_tx.send(seen(item)).is_err() {
                break;
            }
        }
    });
    (reader, seen_rx)
}

/// Waits until the watcher reports `wanted`, returning everything it reported before.
async fn wait_for(seen: &mut mpsc::UnboundedReceiver<Seen>, wanted: &Seen) -> Vec<Seen> {
    let mut before = Vec::new();
    within(&format!("the watcher to report {wanted:?}"), async {
        loop {
            let next = seen.recv().await.expect("the reflector task runs");
            if next == *wanted {
                return;
            }
            before.push(next);
        }
    })
    .await;
    before
}

/// Names and ports in a Service store, sorted, for comparing with what the server holds.
fn service_ports(store: &Store<Service>) -> Vec<(String, i32)> {
    let mut state: Vec<_> = store
        .state()
        .iter()
        .map(|s| (s.name_any(), port_of(s)))
        .collect();
    state.sort();
    state
}

fn server_service_ports(server: &FakeApiServer) -> Vec<(String, i32)> {
    server
        .list::<Service>()
        .iter()
        .map(|s| (s.name_any(), port_of(s)))
        .collect()
}

#[tokio::test]
async fn watchers_see_creates_updates_and_deletes_of_every_served_kind() {
    init_tracing();
    let server = FakeApiServer::start();
    let client = server.client();

    // Services, across namespaces.
    server.apply(&service("dns", 53));
    let mut services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .boxed();
    expect_seen(
        &mut services,
        &[Seen::Init, Seen::InitApply("dns".into()), Seen::InitDone],
    )
    .await;
    server.apply(&service("web", 80));
    server.apply(&service("dns", 5353));
    server.delete::<Service>(Some("default"), "web");
    expect_seen(
        &mut services,
        &[
            Seen::Apply("web".into()),
            Seen::Apply("dns".into()),
            Seen::Delete("web".into()),
        ],
    )
    .await;

    // EndpointSlices, in one namespace: a slice elsewhere stays invisible.
    let mut elsewhere = endpoint_slice("other-abc", &["10.0.9.9"]);
    elsewhere.metadata.namespace = Some("other".into());
    server.apply(&elsewhere);
    let mut slices = watcher(
        Api::<EndpointSlice>::namespaced(client.clone(), "apps"),
        watcher::Config::default(),
    )
    .boxed();
    expect_seen(&mut slices, &[Seen::Init, Seen::InitDone]).await;
    server.apply(&endpoint_slice("web-abc", &["10.0.1.1"]));
    elsewhere.endpoints.clear();
    server.apply(&elsewhere);
    let updated = server.apply(&endpoint_slice("web-abc", &["10.0.1.1", "10.0.1.2"]));
    server.delete::<EndpointSlice>(Some("apps"), "web-abc");
    expect_seen(
        &mut slices,
        &[
            Seen::Apply("web-abc".into()),
            Seen::Apply("web-abc".into()),
            Seen::Delete("web-abc".into()),
        ],
    )
    .await;
    assert_eq!(updated.endpoints.len(), 2);

    // This node only, as the agent watches it: other nodes' changes never show up, and the
    // next event after one of them is this node's.
    server.apply(&node("node-a", "zone-1"));
    server.apply(&node("node-b", "zone-1"));
    let mut nodes = watcher(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().fields("metadata.name=node-a"),
    )
    .boxed();
    expect_seen(
        &mut nodes,
        &[Seen::Init, Seen::InitApply("node-a".into()), Seen::InitDone],
    )
    .await;
    server.apply(&node("node-b", "zone-2"));
    server.apply(&node("node-a", "zone-2"));
    server.delete::<Node>(None, "node-b");
    server.delete::<Node>(None, "node-a");
    expect_seen(
        &mut nodes,
        &[Seen::Apply("node-a".into()), Seen::Delete("node-a".into())],
    )
    .await;
}

#[tokio::test]
async fn lists_report_the_store_version_and_honour_selectors() {
    init_tracing();
    let server = FakeApiServer::start();
    let nodes = Api::<Node>::all(server.client());
    server.apply(&node("node-b", "zone-2"));
    let stored = server.apply(&node("node-a", "zone-1"));
    server.apply(&service("dns", 53));

    let list = nodes.list(&ListParams::default().limit(1)).await.unwrap();
    let names: Vec<_> = list.items.iter().map(ResourceExt::name_any).collect();
    assert_eq!(names, ["node-a", "node-b"], "one page, in name order");
    assert_eq!(
        list.metadata.resource_version,
        Some(server.resource_version().to_string()),
        "the list is current at the last write of any kind"
    );
    assert_eq!(list.metadata.continue_, None);

    let zone_1 = nodes
        .list(&ListParams::default().labels("topology.kubernetes.io/zone=zone-1"))
        .await
        .unwrap();
    assert_eq!(zone_1.items.len(), 1);
    assert_eq!(zone_1.items[0].metadata.uid, stored.metadata.uid);
    assert!(stored.metadata.creation_timestamp.is_some());

    let got = nodes.get("node-a").await.unwrap();
    assert_eq!(
        got.metadata.resource_version,
        stored.metadata.resource_version
    );
    let missing = nodes.get("node-z").await.unwrap_err();
    assert!(
        matches!(&missing, kube::Error::Api(status) if status.code == 404),
        "{missing:?}"
    );
    let unsupported = nodes
        .list(&ListParams::default().fields("spec.unschedulable=true"))
        .await
        .unwrap_err();
    assert!(
        matches!(&unsupported, kube::Error::Api(status) if status.code == 400),
        "{unsupported:?}"
    );
    assert_eq!(server.requests::<Node>().lists, 3);
}

#[tokio::test]
async fn watches_send_bookmarks_expire_old_versions_and_end_at_their_timeout() {
    init_tracing();
    let server = FakeApiServer::start();
    server.set_bookmark_interval(Duration::from_millis(100));
    let services = Api::<Service>::all(server.client());
    let first = server.apply(&service("dns", 53));
    let first_rv = first.metadata.resource_version.clone().unwrap();

    // Bookmarks carry the version the watch has caught up to, across kinds.
    let mut watch = services
        .watch(&WatchParams::default(), &first_rv)
        .await
        .unwrap()
        .boxed();
    server.apply(&node("node-a", "zone-1"));
    let node_rv = server.resource_version().to_string();
    within("a bookmark at the node's version", async {
        loop {
            match watch.next().await.unwrap().unwrap() {
                WatchEvent::Bookmark(b) if b.metadata.resource_version == node_rv => break,
                WatchEvent::Bookmark(_) => {}
                other => panic!("unexpected watch event {other:?}"),
            }
        }
    })
    .await;

    // History is replayed from any version still held.
    let mut replay = services
        .watch(&WatchParams::default().disable_bookmarks(), "1")
        .await
        .unwrap()
        .boxed();
    let added = within("the replayed ADDED", replay.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(added, WatchEvent::Added(s) if s.name_any() == "dns"));

    // After compaction an old version gets 410 Expired inside a 200 response, as from a real
    // API server, and the stream ends.
    server.apply(&service("dns", 5353));
    server.compact();
    let mut expired = services
        .watch(&WatchParams::default(), &first_rv)
        .await
        .expect("a compacted version is still a successful watch response")
        .boxed();
    match within("the 410", expired.next()).await.unwrap().unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(
        within("the end of the expired watch", expired.next())
            .await
            .is_none()
    );
    assert_eq!(server.requests::<Service>().expired_watches, 1);

    // timeoutSeconds ends the watch cleanly.
    let started = Instant::now();
    let mut short = services
        .watch(
            &WatchParams::default().timeout(1),
            &server.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    within("the watch timeout", async {
        while let Some(event) = short.next().await {
            assert!(matches!(event, Ok(WatchEvent::Bookmark(_))), "{event:?}");
        }
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn slow_responses_are_delayed() {
    init_tracing();
    let server = FakeApiServer::start();
    let nodes = Api::<Node>::all(server.client());
    server.set_response_delay(Duration::from_millis(300));
    let started = Instant::now();
    within("a slow list", nodes.list(&ListParams::default()))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_reflector_relists_after_410_and_converges_on_what_it_missed() {
    init_tracing();
    let server = FakeApiServer::start();
    for (name, port) in [("a", 80), ("b", 80), ("c", 80)] {
        server.apply(&service(name, port));
    }
    let (store, mut seen) = reflect(Api::<Service>::all(server.client()));
    wait_for(&mut seen, &Seen::InitDone).await;
    assert_eq!(service_ports(&store), server_service_ports(&server));
    let before = server.requests::<Service>();

    // Hold the client's reconnect long enough for the writes and the compaction to land
    // first: it then resumes from a version the server no longer has.
    server.set_response_delay(Duration::from_secs(1));
    server.drop_watches();
    server.delete::<Service>(Some("default"), "b");
    server.apply(&service("a", 8080));
    server.apply(&service("d", 80));
    server.compact();
    server.set_response_delay(Duration::ZERO);

    // kube-client ends a watch whose chunked body breaks as if it had ended cleanly, so the
    // drop itself shows no error: the first sign is the 410 on the resumed watch. (A resumed
    // watch sent on a pooled connection the drop closed fails first and is retried: a
    // transport error, not an event.)
    let reported = wait_for(&mut seen, &Seen::Init).await;
    let events: Vec<&Seen> = reported
        .iter()
        .filter(|s| **s != Seen::Disconnected)
        .collect();
    assert_eq!(
        events,
        [&Seen::ServerError(410)],
        "the broken watch must deliver nothing written after the drop: {reported:?}"
    );
    wait_for(&mut seen, &Seen::InitDone).await;
    assert_eq!(
        service_ports(&store),
        [("a".into(), 8080), ("c".into(), 80), ("d".into(), 80)]
    );
    let after = server.requests::<Service>();
    assert_eq!(after.lists, before.lists + 1, "exactly one re-list");
    assert!(after.expired_watches > before.expired_watches);
}

#[tokio::test]
async fn a_reflector_resumes_after_an_outage_and_gets_what_changed_meanwhile() {
    init_tracing();
    let server = FakeApiServer::start();
    for name in ["a", "b", "c"] {
        server.apply(&service(name, 80));
    }
    let (store, mut seen) = reflect(Api::<Service>::all(server.client()));
    wait_for(&mut seen, &Seen::InitDone).await;
    let before = server.requests::<Service>();

    server.stop();
    // Make sure the client has found the server gone before anything changes.
    wait_for(&mut seen, &Seen::Disconnected).await;
    server.delete::<Service>(Some("default"), "a");
    server.apply(&service("b", 8080));
    server.apply(&service("d", 80));
    server.restart();

    eventually("the store to converge after the outage", || {
        service_ports(&store) == server_service_ports(&server)
    })
    .await;
    assert_eq!(
        service_ports(&store),
        [("b".into(), 8080), ("c".into(), 80), ("d".into(), 80)]
    );
    let after = server.requests::<Service>();
    assert_eq!(
        after.lists, before.lists,
        "history covered the outage: no re-list"
    );
    assert!(after.watches > before.watches);
}

#[tokio::test]
async fn a_reflector_relists_after_the_api_server_restarts_without_history() {
    init_tracing();
    let server = FakeApiServer::start();
    for name in ["a", "b", "c"] {
        server.apply(&service(name, 80));
    }
    let (store, mut seen) = reflect(Api::<Service>::all(server.client()));
    wait_for(&mut seen, &Seen::InitDone).await;
    let before = server.requests::<Service>();

    server.stop();
    wait_for(&mut seen, &Seen::Disconnected).await;
    server.delete::<Service>(Some("default"), "a");
    server.apply(&service("b", 8080));
    server.apply(&service("d", 80));
    server.restart_fresh();

    let reported = wait_for(&mut seen, &Seen::Init).await;
    assert!(reported.contains(&Seen::ServerError(410)), "{reported:?}");
    wait_for(&mut seen, &Seen::InitDone).await;
    assert_eq!(
        service_ports(&store),
        [("b".into(), 8080), ("c".into(), 80), ("d".into(), 80)]
    );
    assert_eq!(server.requests::<Service>().lists, before.lists + 1);
}

#[tokio::test]
async fn recorded_events_reach_the_server_and_repeats_become_a_series() {
    init_tracing();
    let server = FakeApiServer::start();
    let web = server.apply(&service("web", 80));
    let recorder = Recorder::new(
        server.client(),
        Reporter {
            controller: "hybrid-proxy".into(),
            instance: Some("node-a".into()),
        },
    );
    let event = RecordedEvent {
        type_: EventType::Warning,
        reason: "InvalidService".into(),
        note: Some("port 80 has no protocol".into()),
        action: "Sync".into(),
        secondary: None,
    };
    // The first publish creates the Event; the second patches it into a series.
    for _ in 0..2 {
        within(
            "publishing an event",
            recorder.publish(&event, &web.object_ref(&())),
        )
        .await
        .unwrap();
    }
    let events = server.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let stored = &events[0];
    assert_eq!(stored["apiVersion"], "events.k8s.io/v1");
    assert_eq!(stored["metadata"]["namespace"], "default");
    assert_eq!(stored["reason"], "InvalidService");
    assert_eq!(stored["type"], "Warning");
    assert_eq!(stored["note"], "port 80 has no protocol");
    assert_eq!(stored["reportingController"], "hybrid-proxy");
    assert_eq!(stored["regarding"]["kind"], "Service");
    assert_eq!(stored["regarding"]["name"], "web");
    assert_eq!(stored["regarding"]["uid"], web.metadata.uid.unwrap());
    assert_eq!(stored["series"]["count"], 2);
}

#[tokio::test]
async fn a_client_built_from_the_written_kubeconfig_reaches_the_server() {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    init_tracing();
    let server = FakeApiServer::start();
    server.apply(&node("node-a", "zone-1"));
    let path = std::env::temp_dir().join(format!(
        "fake-api-kubeconfig-{}-{}.yaml",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    server.write_kubeconfig(&path);
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = Client::try_from(config).unwrap();
    let nodes = within(
        "a list",
        Api::<Node>::all(client).list(&ListParams::default()),
    )
    .await
    .unwrap();
    assert_eq!(nodes.items.len(), 1);
}

#[test]
fn controls_work_without_an_async_runtime() {
    init_tracing();
    let server = FakeApiServer::start();
    let stored = server.apply(&service("dns", 53));
    assert_eq!(server.get::<Service>(Some("default"), "dns"), Some(stored));
    server.stop();
    server.apply(&service("dns", 5353));
    server.restart_fresh();
    let deleted = server.delete::<Service>(Some("default"), "dns").unwrap();
    assert_eq!(port_of(&deleted), 5353);
    assert!(server.list::<Service>().is_empty());
    assert_eq!(server.events(), Vec::<serde_json::Value>::new());
}
