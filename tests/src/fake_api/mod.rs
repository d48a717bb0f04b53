//! A fake Kubernetes API server that speaks real HTTP, for testing kube-rs clients.
//!
//! It behaves like an API server backed by etcd where a proxy's watchers can tell: one
//! resourceVersion counter across every kind; lists that report the version they are current
//! at; watches that replay history after a version, follow live writes and send bookmarks;
//! `410 Gone` (as an `ERROR` watch event) once that history has been compacted away. Tests
//! change objects directly through [`FakeApiServer::apply`] and [`FakeApiServer::delete`] and
//! inject faults: dropped watches, compaction, slow responses, outages.
//!
//! Served out of the box: `Service`, `EndpointSlice` and `Node` (list, watch, get), and `Event`
//! of both `events.k8s.io/v1` and core `v1` (create, merge patch) so that an event recorder's
//! output can be checked with [`FakeApiServer::events`]. Any other k8s-openapi kind is served
//! once a test has applied (or listed) an object of it.
//!
//! The server runs on its own thread with its own runtime, so the controls work the same from
//! plain `#[test]` functions and from async tests, whichever runtime those use.

mod http;
mod selector;
mod serve;
mod store;
mod watch;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use k8s_openapi::{
    ClusterResourceScope, NamespaceResourceScope, Resource, ResourceScope,
    api::{core::v1::Event as CoreEvent, events::v1::Event},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch as signal};
use tracing::info;

use self::{
    serve::Command,
    store::{ResourceKey, ResourceType, Selection, Store},
};

/// Requests the server has answered for one kind, so a test can tell that a client re-listed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// List requests (`GET` on the collection without `watch`), answered or refused.
    pub lists: u64,
    /// Watch requests, answered or refused, including those answered with `410 Gone`.
    pub watches: u64,
    /// Watches answered with `410 Gone` because their resourceVersion had been compacted.
    pub expired_watches: u64,
}

/// Whether a k8s-openapi scope puts objects under `namespaces/<ns>/` in URLs.
pub trait ObjectScope: ResourceScope {
    const NAMESPACED: bool;
}

impl ObjectScope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl ObjectScope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// A k8s-openapi type the fake can store: `Service`, `EndpointSlice`, `Node`, ...
pub trait ApiObject: Resource<Scope: ObjectScope> + Serialize + DeserializeOwned {}

impl<K> ApiObject for K where K: Resource<Scope: ObjectScope> + Serialize + DeserializeOwned {}

/// State shared between the server thread and the test's controls.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Signalled after each write; open watches wake on it and read the store, so a value
    /// overtaken by a concurrent write does no harm.
    writes: signal::Sender<u64>,
    /// Bumped by [`FakeApiServer::drop_watches`]; open watches break on it.
    drops: signal::Sender<u64>,
    response_delay: Mutex<Duration>,
    bookmark_interval: Mutex<Duration>,
}

impl Shared {
    /// The store, even if a panicking test thread poisoned the lock: the fake must keep serving
    /// so that the failure is reported, not a hang.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the store and wakes the watches if it wrote anything.
    pub(crate) fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (result, rv) = {
            let mut store = self.store();
            let before = store.rv();
            let result = f(&mut store);
            (result, (store.rv() != before).then(|| store.rv()))
        };
        if let Some(rv) = rv {
            self.writes.send_replace(rv);
        }
        result
    }

    pub(crate) fn response_delay(&self) -> Duration {
        *self
            .response_delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn bookmark_interval(&self) -> Duration {
        *self
            .bookmark_interval
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake API server; stopped and joined on drop.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeApiServer {
    /// How often watches that allow bookmarks get one, unless changed with
    /// [`Self::set_bookmark_interval`]. The API server sends them about once a minute; a second
    /// keeps tests short while still being rarer than the writes a test makes.
    pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

    /// Starts a server on an ephemeral port of 127.0.0.1 in the current network namespace.
    ///
    /// # Panics
    /// When the port cannot be bound.
    pub fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("binding the fake API server on 127.0.0.1: {e}"));
        Self::start_on(listener)
    }

    /// Starts a server on a listener the caller bound, e.g. inside a network namespace.
    ///
    /// The server thread is spawned from the calling thread and so starts in its network
    /// namespace; [`Self::restart`] rebinds there too. Call this from the thread that bound
    /// the listener.
    ///
    /// # Panics
    /// When the listener is unusable or the thread cannot be spawned.
    pub fn start_on(listener: TcpListener) -> Self {
        listener
            .set_nonblocking(true)
            .expect("making the fake API server's listener non-blocking");
        let addr = listener.local_addr().expect("the listener has an address");
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            writes: signal::Sender::new(0),
            drops: signal::Sender::new(0),
            response_delay: Mutex::new(Duration::ZERO),
            bookmark_interval: Mutex::new(Self::DEFAULT_BOOKMARK_INTERVAL),
        });
        let (commands, receiver) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("fake-api-server".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || serve::run(listener, shared, receiver)
            })
            .expect("spawning the fake API server thread");
        Self {
            addr,
            shared,
            commands,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the server URL for a kubeconfig.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server: plain HTTP, no credentials, namespace `default`.
    pub fn kubeconfig(&self) -> kube::config::Kubeconfig {
        kube::config::Kubeconfig::from_yaml(&self.kubeconfig_json().to_string())
            .expect("the fake's kubeconfig parses")
    }

    /// Writes [`Self::kubeconfig`] to `path`, for code that reads `KUBECONFIG`.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) {
        // JSON is YAML, and kube-rs reads kubeconfigs as YAML.
        let text = serde_json::to_string_pretty(&self.kubeconfig_json()).expect("JSON serialises");
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("writing kubeconfig {}: {e}", path.display()));
    }

    fn kubeconfig_json(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url()}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{
                "name": "fake",
                "context": {"cluster": "fake", "user": "fake", "namespace": "default"},
            }],
            "current-context": "fake",
        })
    }

    /// A kube-rs client for this server.
    ///
    /// # Panics
    /// Outside a tokio runtime: the client spawns its request buffer on the current one.
    pub fn client(&self) -> kube::Client {
        let url = self.url().parse().expect("the server URL is a valid URI");
        kube::Client::try_from(kube::Config::new(url)).expect("building a kube client")
    }

    /// Creates the object or replaces the stored one, and returns it as stored (with
    /// resourceVersion, uid and creationTimestamp). A namespaced object without a namespace
    /// goes to `default`. A write that changes nothing is not an update, as on a real server.
    ///
    /// # Panics
    /// When the object has no name or its namespace does not fit its kind.
    pub fn apply<K: ApiObject>(&self, object: &K) -> K {
        let key = self.register::<K>();
        let value = serde_json::to_value(object).expect("k8s-openapi objects serialise");
        let stored = self
            .shared
            .with_store(|store| store.upsert(&key, value, Some("default")))
            .unwrap_or_else(|e| panic!("applying {}: {e}", K::KIND));
        typed(stored)
    }

    /// Deletes an object and returns it, or `None` if there was none. `namespace` is `None`
    /// for cluster-scoped kinds.
    pub fn delete<K: ApiObject>(&self, namespace: Option<&str>, name: &str) -> Option<K> {
        let key = self.register::<K>();
        self.shared
            .with_store(|store| store.delete(&key, namespace, name))
            .map(typed)
    }

    pub fn get<K: ApiObject>(&self, namespace: Option<&str>, name: &str) -> Option<K> {
        let key = self.register::<K>();
        self.shared.store().get(&key, namespace, name).map(typed)
    }

    /// Every stored object of a kind, ordered by namespace and name.
    pub fn list<K: ApiObject>(&self) -> Vec<K> {
        let key = self.register::<K>();
        let (_, items) = self.shared.store().list(&key, &Selection::default());
        items.into_iter().map(typed).collect()
    }

    /// The current resourceVersion of the whole store.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv()
    }

    /// Every Event clients have created (through either Events API), oldest first, as stored:
    /// a repeated event that a recorder patched shows its latest `series`.
    pub fn events(&self) -> Vec<Value> {
        self.shared
            .store()
            .in_creation_order(&[ResourceKey::of::<Event>(), ResourceKey::of::<CoreEvent>()])
    }

    pub fn requests<K: Resource>(&self) -> RequestCounts {
        self.shared.store().counts(&ResourceKey::of::<K>())
    }

    /// Breaks every open watch connection mid-stream, as a load balancer or a dying API server
    /// does. Writes made after this returns are not delivered on the broken watches.
    pub fn drop_watches(&self) {
        info!("dropping every open watch");
        self.shared.drops.send_modify(|generation| *generation += 1);
    }

    /// Forgets the change history: a watch from any version older than the current one gets
    /// `410 Gone` and its client must list again.
    pub fn compact(&self) {
        info!(rv = self.resource_version(), "compacting history");
        self.shared.with_store(Store::compact);
    }

    /// Delays every response (watches and errors included) by `delay`, for slow-server tests.
    pub fn set_response_delay(&self, delay: Duration) {
        *self
            .shared
            .response_delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// How often watches opened from now on get a bookmark; zero sends none.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *self
            .shared
            .bookmark_interval
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = interval;
    }

    /// An outage: stops accepting connections and closes every open one. Objects can still be
    /// changed through the controls while the server is down. Returns once all is closed.
    pub fn stop(&self) {
        let (ack, done) = std::sync::mpsc::channel();
        self.command(Command::Stop(ack));
        done.recv().expect("the fake API server acknowledges stop");
    }

    /// Serves again on the same address, with history intact: a client that kept its
    /// resourceVersion resumes its watch and is sent what it missed.
    ///
    /// # Panics
    /// When the address cannot be bound again.
    pub fn restart(&self) {
        let (ack, done) = std::sync::mpsc::channel();
        self.command(Command::Restart(ack));
        done.recv()
            .expect("the fake API server acknowledges restart")
            .unwrap_or_else(|e| panic!("rebinding the fake API server on {}: {e}", self.addr));
    }

    /// A restarted API server: down, then up with no history (its watch cache starts empty),
    /// so a client resuming from an older version gets `410 Gone` and lists again.
    pub fn restart_fresh(&self) {
        self.stop();
        self.compact();
        self.restart();
    }

    fn command(&self, command: Command) {
        self.commands
            .send(command)
            .expect("the fake API server thread is running");
    }

    fn register<K: ApiObject>(&self) -> ResourceKey {
        let resource = ResourceType::of::<K>(<K::Scope as ObjectScope>::NAMESPACED);
        let key = resource.key.clone();
        self.shared.store().register(resource);
        key
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread has already been printed; the test's own outcome is
            // what matters here.
            let _ = thread.join();
        }
    }
}

fn typed<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("stored objects deserialise as their kind")
}
