//! Cluster state from a directory of manifests.

use std::path::Path;

use super::manifest::{self, ManifestError, Manifests, ReadError};
use crate::model::{ClusterState, ObjectError};

/// Problems met while loading manifests: documents that could not be read, and objects
/// that could not even be identified.
#[derive(Debug, Default)]
pub struct LoadProblems {
    pub documents: Vec<ManifestError>,
    pub objects: Vec<ObjectError>,
}

impl LoadProblems {
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty() && self.objects.is_empty()
    }

    /// One line per problem.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.documents
            .iter()
            .map(ToString::to_string)
            .chain(self.objects.iter().map(ToString::to_string))
    }
}

/// Builds the state from parsed manifests: every Service and EndpointSlice, and the Node
/// named `node_name` if one is there.
pub fn state_from(manifests: Manifests, node_name: &str) -> (ClusterState, LoadProblems) {
    let mut state = ClusterState::new();
    let mut problems = LoadProblems {
        documents: manifests.errors,
        objects: Vec::new(),
    };
    for svc in manifests.services {
        if let Err(e) = state.upsert_service(svc) {
            problems.objects.push(*e);
        }
    }
    for slice in manifests.slices {
        if let Err(e) = state.upsert_slice(slice) {
            problems.objects.push(*e);
        }
    }
    state.set_node(
        manifests
            .nodes
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(node_name)),
    );
    (state, problems)
}

/// Reads a directory of manifests into a state.
pub fn load_dir(dir: &Path, node_name: &str) -> Result<(ClusterState, LoadProblems), ReadError> {
    Ok(state_from(manifest::read_dir(dir)?, node_name))
}

/// Watches a directory of manifests: the first read is sent whole (one `Replace` per kind),
/// every later one as the objects that changed (`Applied`/`Deleted`), so that an edit is a
/// partial sync, as a watch event from the API would be.
#[derive(Clone, Debug)]
pub struct FilesSource {
    pub dir: std::path::PathBuf,
    pub node: String,
}

#[cfg(feature = "agent")]
/// How long the directory must stay quiet before it is re-read: an editor's save, or a
/// `kubectl get -o yaml > file`, is several events.
const QUIET: std::time::Duration = std::time::Duration::from_millis(100);

#[cfg(feature = "agent")]
/// The longest a change waits for the directory to go quiet: a directory rewritten more
/// often than [`QUIET`] is still re-read this often, instead of never.
const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Identifies an object across reads of the directory.
type ObjectKey = (super::Kind, String, String);

/// The objects of one read, by key (objects without a name get a key of their own, so the
/// loop still sees, and reports, them).
fn index(manifests: Manifests, node: &str) -> std::collections::BTreeMap<ObjectKey, super::Object> {
    use super::{Kind, Object};
    let mut out = std::collections::BTreeMap::new();
    let key = |kind: Kind,
               meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
               i: usize| {
        (
            kind,
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_else(|| format!("#unnamed-{i}")),
        )
    };
    for (i, s) in manifests.services.into_iter().enumerate() {
        out.insert(key(Kind::Services, &s.metadata, i), Object::Service(s));
    }
    for (i, s) in manifests.slices.into_iter().enumerate() {
        out.insert(key(Kind::EndpointSlices, &s.metadata, i), Object::Slice(s));
    }
    for (i, n) in manifests.nodes.into_iter().enumerate() {
        if n.metadata.name.as_deref() == Some(node) {
            out.insert(key(Kind::Node, &n.metadata, i), Object::Node(n));
        }
    }
    out
}

/// The events that turn `previous` into `current`.
fn diff(
    previous: &std::collections::BTreeMap<ObjectKey, super::Object>,
    current: &std::collections::BTreeMap<ObjectKey, super::Object>,
) -> Vec<super::SourceEvent> {
    let mut events = Vec::new();
    for (key, object) in current {
        if previous.get(key) != Some(object) {
            events.push(super::SourceEvent::Applied(object.clone()));
        }
    }
    for (key, object) in previous {
        if !current.contains_key(key) {
            events.push(super::SourceEvent::Deleted(object.clone()));
        }
    }
    events
}

/// The first read as one `Replace` per kind.
fn replace_all(
    current: &std::collections::BTreeMap<ObjectKey, super::Object>,
) -> Vec<super::SourceEvent> {
    super::Kind::ALL
        .into_iter()
        .map(|kind| super::SourceEvent::Replace {
            kind,
            objects: current
                .iter()
                .filter(|((k, _, _), _)| *k == kind)
                .map(|(_, o)| o.clone())
                .collect(),
        })
        .collect()
}

#[cfg(feature = "agent")]
impl super::Source for FilesSource {
    fn run(
        self: Box<Self>,
        events: tokio::sync::mpsc::Sender<super::SourceEvent>,
    ) -> futures::future::BoxFuture<'static, Result<(), super::SourceError>> {
        Box::pin(async move {
            use notify::Watcher as _;
            let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<()>();
            let watch_error = |source| super::SourceError::Watch {
                path: self.dir.clone(),
                source,
            };
            let mut watcher =
                notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
                    let _ = changed_tx.send(());
                })
                .map_err(watch_error)?;
            watcher
                .watch(&self.dir, notify::RecursiveMode::NonRecursive)
                .map_err(watch_error)?;
            let mut previous: Option<std::collections::BTreeMap<ObjectKey, super::Object>> = None;
            loop {
                let dir = self.dir.clone();
                let read = tokio::task::spawn_blocking(move || manifest::read_dir(&dir))
                    .await
                    .expect("manifest reader panicked");
                match read {
                    Ok(manifests) => {
                        let problems: Vec<String> =
                            manifests.errors.iter().map(ToString::to_string).collect();
                        let current = index(manifests, &self.node);
                        let mut batch = vec![super::SourceEvent::Problems(problems)];
                        batch.extend(match &previous {
                            None => replace_all(&current),
                            Some(previous) => diff(previous, &current),
                        });
                        previous = Some(current);
                        for event in batch {
                            if events.send(event).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    // A directory that cannot be read keeps what was programmed; the next
                    // change triggers another attempt.
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the manifests; keeping the current rules");
                    }
                }
                if changed.recv().await.is_none() {
                    return Ok(());
                }
                let latest = tokio::time::Instant::now() + MAX_DELAY;
                while let Ok(Some(())) = tokio::time::timeout_at(
                    (tokio::time::Instant::now() + QUIET).min(latest),
                    changed.recv(),
                )
                .await
                {}
                tracing::debug!(dir = %self.dir.display(), "manifests changed");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::fixtures::{ServiceBuilder, SliceBuilder},
        source::{Kind, SourceEvent},
    };

    #[test]
    fn later_reads_become_the_objects_that_changed() {
        let read = |ports: &[i32], with_slice: bool| {
            let mut m = Manifests::default();
            for (i, p) in ports.iter().enumerate() {
                m.services.push(
                    ServiceBuilder::cluster_ip("ns", &format!("s{i}"), "10.96.0.1")
                        .port("http", *p)
                        .build(),
                );
            }
            if with_slice {
                m.slices.push(
                    SliceBuilder::new("ns", "s0")
                        .port("http", 8080)
                        .endpoint("10.244.1.5", "n")
                        .build(),
                );
            }
            index(m, "node-a")
        };
        let first = read(&[80, 81], true);
        let replace = replace_all(&first);
        assert_eq!(replace.len(), 3);
        assert!(
            matches!(&replace[0], SourceEvent::Replace { kind: Kind::Services, objects } if objects.len() == 2)
        );

        // s1 changes port, s0's slice goes away: one Applied, one Deleted.
        let second = read(&[80, 90], false);
        let events = diff(&first, &second);
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(
            matches!(&events[0], SourceEvent::Applied(crate::source::Object::Service(s)) if s.metadata.name.as_deref() == Some("s1"))
        );
        assert!(matches!(
            &events[1],
            SourceEvent::Deleted(crate::source::Object::Slice(_))
        ));
        assert!(diff(&second, &second).is_empty());
    }
}
