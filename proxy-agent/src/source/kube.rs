//! Cluster state from the Kubernetes API: kube-rs watchers on Services, EndpointSlices and this
//! node's Node, and Kubernetes Events about Services the agent cannot program.
//!
//! Each kind has its own watcher, which lists, then watches from the list's resourceVersion,
//! resumes a broken watch from the last version it saw, and lists again when that version has
//! been compacted away (`410 Gone`). A list, first or later, reaches the sync loop as one
//! [`SourceEvent::Replace`], which the loop treats as a full-resync trigger; changes in between
//! are [`SourceEvent::Applied`] and [`SourceEvent::Deleted`]. While the API cannot be reached
//! the watchers retry with backoff and send nothing, so the loop keeps what it has.

use std::{fmt, path::Path};

use futures::{StreamExt, future, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Node, ObjectReference, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        utils::Backoff as _,
        watcher,
    },
};
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{Kind, Object, Source, SourceError, SourceEvent};
use crate::{
    model::{ObjectError, ObjectKind},
    sync::EventSink,
};

/// Services and EndpointSlices carrying this label belong to another service proxy
/// (kube-proxy's `LabelServiceProxyName`); kube-proxy leaves them alone, and so do we.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// Set by the EndpointSlice controller on the slices of headless Services, which a proxy has
/// nothing to program for (kube-proxy's `v1.IsHeadlessService`).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The name Events are reported under.
pub const REPORTER: &str = "hybrid-proxy";

/// The label selector kube-proxy watches Services and EndpointSlices with: neither owned by
/// another proxy nor headless. kube-proxy uses one selector for both kinds; the headless label
/// only ever appears on slices, and the proxy-name label is copied from a Service to its slices.
pub fn label_selector() -> String {
    format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}")
}

/// Why no client could be built.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("finding a kubeconfig or an in-cluster service account")]
    Infer(#[source] InferConfigError),
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("building a Kubernetes client")]
    Client(#[source] kube::Error),
}

/// A client for the API server: from the kubeconfig at `kubeconfig` (its current context) if
/// given, otherwise as kube-rs infers it (`KUBECONFIG`, `~/.kube/config`, then the in-cluster
/// service account, which is what a DaemonSet pod uses).
///
/// Must run inside a tokio runtime: the client spawns its request buffer on it.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| ClientError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => kube::Config::infer().await.map_err(ClientError::Infer)?,
    };
    Client::try_from(config).map_err(ClientError::Client)
}

/// Services and EndpointSlices of every namespace, and the Node named `node`, from the API.
#[derive(Clone)]
pub struct KubeSource {
    client: Client,
    node: String,
}

impl fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeSource")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    pub fn new(client: Client, node: impl Into<String>) -> Self {
        Self {
            client,
            node: node.into(),
        }
    }

    /// Every kind's events, merged. The streams never end: errors are logged and retried (see
    /// [`kind_events`]).
    fn events(&self) -> BoxStream<'static, SourceEvent> {
        let selected = watcher::Config::default().labels(&label_selector());
        futures::stream::select_all([
            kind_events(
                Api::<Service>::all(self.client.clone()),
                selected.clone(),
                Kind::Services,
                Object::Service,
            ),
            kind_events(
                Api::<EndpointSlice>::all(self.client.clone()),
                selected,
                Kind::EndpointSlices,
                Object::Slice,
            ),
            kind_events(
                Api::<Node>::all(self.client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={}", self.node)),
                Kind::Node,
                Object::Node,
            ),
        ])
        .boxed()
    }
}

impl Source for KubeSource {
    /// Runs until `events` is closed, then returns `Ok`; the API being unreachable is never
    /// an error here, only a reason to retry.
    fn run(
        self: Box<Self>,
        events: mpsc::Sender<SourceEvent>,
    ) -> future::BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move {
            info!(node = %self.node, selector = %label_selector(), "watching the Kubernetes API");
            let mut stream = self.events();
            loop {
                let event = tokio::select! {
                    () = events.closed() => break,
                    event = stream.next() => event,
                };
                // `select_all` over never-ending streams never ends; stop cleanly if it does.
                let Some(event) = event else { break };
                log_event(&event);
                if events.send(event).await.is_err() {
                    break;
                }
            }
            debug!("the sync loop hung up; Kubernetes watchers stopped");
            Ok(())
        })
    }
}

fn log_event(event: &SourceEvent) {
    match event {
        SourceEvent::Replace { kind, objects } => {
            info!(kind = kind.name(), objects = objects.len(), "listed");
        }
        SourceEvent::Applied(object) => debug!(object = %ObjectName(object), "applied"),
        SourceEvent::Deleted(object) => debug!(object = %ObjectName(object), "deleted"),
        SourceEvent::Problems(_) => {}
    }
}

/// `kind namespace/name` of an object, for logs.
struct ObjectName<'a>(&'a Object);

impl fmt::Display for ObjectName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let meta = match self.0 {
            Object::Service(o) => &o.metadata,
            Object::Slice(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
        };
        let name = meta.name.as_deref().unwrap_or_default();
        match &meta.namespace {
            Some(namespace) => write!(f, "{} {namespace}/{name}", self.0.kind().name()),
            None => write!(f, "{} {name}", self.0.kind().name()),
        }
    }
}

/// One kind's watcher, as source events.
///
/// Failed requests are retried with kube-runtime's default backoff, which is client-go's
/// reflector's: 0.8 s doubling to 30 s with jitter, forgotten after any event or two quiet
/// minutes. A `410 Gone` is not a failure but the server asking for a re-list: it proves the
/// server is up, so the backoff starts over, and only its first, jittered step (0.8-1.6 s) is
/// waited, so that every node of a cluster does not re-list at the same instant after an API
/// server restart.
fn kind_events<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Object,
) -> BoxStream<'static, SourceEvent>
where
    K: kube::Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
{
    let state = KindWatch {
        kind,
        wrap,
        watcher: watcher(api, config).boxed(),
        backoff: watcher::DefaultBackoff::default(),
        lists: ListGatherer::default(),
    };
    futures::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((event, state))
    })
    .boxed()
}

struct KindWatch<K> {
    kind: Kind,
    wrap: fn(K) -> Object,
    watcher: BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>,
    backoff: watcher::DefaultBackoff,
    lists: ListGatherer,
}

impl<K> KindWatch<K> {
    /// The next source event; `None` only if the watcher ends, which it never does.
    async fn next(&mut self) -> Option<SourceEvent> {
        loop {
            match self.watcher.next().await? {
                Ok(event) => {
                    self.backoff.reset();
                    if let Some(event) =
                        self.lists.translate(self.kind, map_event(event, self.wrap))
                    {
                        return Some(event);
                    }
                }
                Err(error) => {
                    log_watch_error(self.kind, &error);
                    if is_gone(&error) {
                        self.backoff.reset();
                    }
                    if let Some(delay) = self.backoff.next() {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }
}

fn is_gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

fn map_event<K>(event: watcher::Event<K>, wrap: fn(K) -> Object) -> watcher::Event<Object> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(wrap(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(wrap(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(wrap(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

fn log_watch_error(kind: Kind, error: &watcher::Error) {
    // Expected after a long disconnect or an API server restart: the watcher lists again.
    if is_gone(error) {
        info!(
            kind = kind.name(),
            "watch history expired (410 Gone); listing again"
        );
    } else {
        warn!(
            kind = kind.name(),
            error = %ErrorChain(error),
            "Kubernetes watch failed; retrying with backoff, keeping what is programmed"
        );
    }
}

/// An error and its sources, `: `-separated.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// Gathers the objects of a list (`Init`, `InitApply`..., `InitDone`) into one `Replace`, and
/// passes changes through.
#[derive(Debug, Default)]
struct ListGatherer {
    listing: Vec<Object>,
}

impl ListGatherer {
    fn translate(&mut self, kind: Kind, event: watcher::Event<Object>) -> Option<SourceEvent> {
        match event {
            // A list that failed halfway starts over with a new `Init`: drop the partial one.
            watcher::Event::Init => {
                self.listing.clear();
                None
            }
            watcher::Event::InitApply(object) => {
                self.listing.push(object);
                None
            }
            watcher::Event::InitDone => Some(SourceEvent::Replace {
                kind,
                objects: std::mem::take(&mut self.listing),
            }),
            watcher::Event::Apply(object) => Some(SourceEvent::Applied(object)),
            watcher::Event::Delete(object) => Some(SourceEvent::Deleted(object)),
        }
    }
}

/// The API limits an Event's note to 1 KiB.
pub const MAX_NOTE_BYTES: usize = 1024;

/// How many Events may wait to be published; beyond that they are dropped (and logged), so a
/// burst of invalid Services cannot grow memory while the API is slow or away.
const EVENT_QUEUE: usize = 256;

/// Reports Services the agent cannot program as Warning Events `InvalidService` on the Service,
/// reported by `hybrid-proxy` with this node's name as the instance.
#[derive(Clone, Debug)]
pub struct KubeEvents {
    queue: mpsc::Sender<(ObjectReference, String)>,
}

impl KubeEvents {
    /// Starts the publishing task on the current tokio runtime; it ends when the last clone of
    /// the returned value is dropped.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(client: Client, node: impl Into<String>) -> Self {
        let reporter = Reporter {
            controller: REPORTER.to_owned(),
            instance: Some(node.into()),
        };
        let (queue, mut pending) = mpsc::channel::<(ObjectReference, String)>(EVENT_QUEUE);
        tokio::spawn(async move {
            while let Some((reference, note)) = pending.recv().await {
                // A recorder per Event: kube-rs's recorder folds a repeat of the same reason on
                // the same object into the first Event's series *without its new note*, and the
                // sync loop already calls us only when a Service's problems change, so every
                // call deserves an Event of its own that says what the problems are now.
                let recorder = Recorder::new(client.clone(), reporter.clone());
                let event = KubeEvent {
                    type_: EventType::Warning,
                    reason: "InvalidService".to_owned(),
                    note: Some(note),
                    action: "Programming".to_owned(),
                    secondary: None,
                };
                match recorder.publish(&event, &reference).await {
                    Ok(()) => debug!(
                        service = %ReferenceName(&reference),
                        "published an InvalidService event"
                    ),
                    Err(error) => warn!(
                        service = %ReferenceName(&reference),
                        error = %ErrorChain(&error),
                        "could not publish an InvalidService event"
                    ),
                }
            }
        });
        Self { queue }
    }
}

impl EventSink for KubeEvents {
    fn service_invalid(&self, service: &Service, errors: &[ObjectError]) {
        if errors.is_empty() {
            return;
        }
        let reference = service_reference(service);
        let note = problems_note(service, errors);
        if let Err(error) = self.queue.try_send((reference, note)) {
            let (reference, _) = match &error {
                mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item) => {
                    item
                }
            };
            warn!(
                service = %ReferenceName(reference),
                reason = %error,
                "dropping an InvalidService event"
            );
        }
    }
}

/// `namespace/name` of a referenced object, for logs.
struct ReferenceName<'a>(&'a ObjectReference);

impl fmt::Display for ReferenceName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.0.namespace.as_deref().unwrap_or_default(),
            self.0.name.as_deref().unwrap_or_default()
        )
    }
}

/// The Service as an Event's `regarding` object.
pub fn service_reference(service: &Service) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Service".to_owned()),
        namespace: service.metadata.namespace.clone(),
        name: service.metadata.name.clone(),
        uid: service.metadata.uid.clone(),
        resource_version: service.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// The problems of a Service as an Event note of at most [`MAX_NOTE_BYTES`]: `; `-separated,
/// each as `field: reason` (with the object named when it is not the Service itself); problems
/// that do not fit are counted at the end.
pub fn problems_note(service: &Service, errors: &[ObjectError]) -> String {
    let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let items: Vec<String> = errors
        .iter()
        .map(|e| {
            if e.kind == ObjectKind::Service && e.namespace == namespace && e.name == name {
                format!("{}: {}", e.field, e.reason)
            } else {
                e.to_string()
            }
        })
        .collect();

    let mut note = String::new();
    for (i, item) in items.iter().enumerate() {
        let separator = if note.is_empty() { "" } else { "; " };
        let remaining = items.len() - i - 1;
        // Room for this item, and for saying how many are left if this is not the last.
        let tail = if remaining == 0 {
            0
        } else {
            more_suffix(remaining).len()
        };
        if note.len() + separator.len() + item.len() + tail <= MAX_NOTE_BYTES {
            note.push_str(separator);
            note.push_str(item);
            continue;
        }
        let left_out = items.len() - i;
        if note.is_empty() {
            // Not even the first problem fits: cut it, keep the count of the others.
            let suffix = if left_out > 1 {
                more_suffix(left_out - 1)
            } else {
                String::new()
            };
            let budget = MAX_NOTE_BYTES - suffix.len() - "…".len();
            note.push_str(truncate_at_char(item, budget));
            note.push('…');
            note.push_str(&suffix);
        } else {
            note.push_str(&more_suffix(left_out));
        }
        break;
    }
    note
}

fn more_suffix(count: usize) -> String {
    format!("; and {count} more")
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::model::InvalidReason;

    fn service(name: &str) -> Object {
        Object::Service(Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        })
    }

    #[test]
    fn a_list_becomes_one_replace_and_changes_pass_through() {
        let mut lists = ListGatherer::default();
        let kind = Kind::Services;
        assert_eq!(lists.translate(kind, watcher::Event::Init), None);
        assert_eq!(
            lists.translate(kind, watcher::Event::InitApply(service("a"))),
            None
        );
        assert_eq!(
            lists.translate(kind, watcher::Event::InitApply(service("b"))),
            None
        );
        assert_eq!(
            lists.translate(kind, watcher::Event::InitDone),
            Some(SourceEvent::Replace {
                kind,
                objects: vec![service("a"), service("b")]
            })
        );
        assert_eq!(
            lists.translate(kind, watcher::Event::Apply(service("c"))),
            Some(SourceEvent::Applied(service("c")))
        );
        assert_eq!(
            lists.translate(kind, watcher::Event::Delete(service("a"))),
            Some(SourceEvent::Deleted(service("a")))
        );
    }

    #[test]
    fn a_list_cut_short_is_forgotten_when_the_next_one_starts() {
        let mut lists = ListGatherer::default();
        let kind = Kind::Services;
        lists.translate(kind, watcher::Event::Init);
        lists.translate(kind, watcher::Event::InitApply(service("stale")));
        lists.translate(kind, watcher::Event::Init);
        lists.translate(kind, watcher::Event::InitApply(service("fresh")));
        assert_eq!(
            lists.translate(kind, watcher::Event::InitDone),
            Some(SourceEvent::Replace {
                kind,
                objects: vec![service("fresh")]
            })
        );
        // A re-list of an empty cluster is an empty Replace, not nothing.
        lists.translate(kind, watcher::Event::Init);
        assert_eq!(
            lists.translate(kind, watcher::Event::InitDone),
            Some(SourceEvent::Replace {
                kind,
                objects: vec![]
            })
        );
    }

    #[test]
    fn the_selector_is_kube_proxys() {
        assert_eq!(
            label_selector(),
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
        );
    }

    fn problem(field: &str, value: i64) -> ObjectError {
        ObjectError {
            kind: ObjectKind::Service,
            namespace: "default".into(),
            name: "web".into(),
            field: field.into(),
            reason: InvalidReason::PortOutOfRange { value },
        }
    }

    fn web() -> Service {
        let Object::Service(svc) = service("web") else {
            unreachable!()
        };
        svc
    }

    #[test]
    fn a_note_lists_the_problems_by_field() {
        let note = problems_note(
            &web(),
            &[
                problem("spec.ports[0].port", 0),
                ObjectError {
                    kind: ObjectKind::EndpointSlice,
                    namespace: "default".into(),
                    name: "web-abc".into(),
                    field: "endpoints[0].addresses[0]".into(),
                    reason: InvalidReason::BadIp { value: "x".into() },
                },
            ],
        );
        assert_eq!(
            note,
            "spec.ports[0].port: 0 is out of range 1-65535; EndpointSlice default/web-abc: \
             endpoints[0].addresses[0]: \"x\" is not an IP address"
        );
    }

    #[test]
    fn a_long_note_is_cut_to_1_kib_and_counts_what_it_left_out() {
        let errors: Vec<_> = (0..100)
            .map(|i| problem(&format!("spec.ports[{i}].port"), 70000 + i))
            .collect();
        let note = problems_note(&web(), &errors);
        assert!(note.len() <= MAX_NOTE_BYTES, "{} bytes", note.len());
        assert!(note.starts_with("spec.ports[0].port: 70000 is out of range"));
        let shown = note.matches("is out of range").count();
        assert!(
            note.ends_with(&format!("; and {} more", 100 - shown)),
            "{note}"
        );

        // One problem longer than the limit on its own, with multi-byte characters.
        let huge = ObjectError {
            reason: InvalidReason::TooLong {
                len: 5000,
                limit: 63,
            },
            ..problem(&"é".repeat(700), 0)
        };
        let note = problems_note(&web(), &[huge, problem("spec.ports[1].port", 0)]);
        assert!(note.len() <= MAX_NOTE_BYTES, "{} bytes", note.len());
        assert!(note.ends_with("…; and 1 more"), "{note}");
    }
}
