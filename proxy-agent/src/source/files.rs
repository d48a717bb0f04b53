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

/// Watches a directory of manifests and sends its whole content after every change.
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

#[cfg(feature = "agent")]
impl FilesSource {
    /// Reads the directory and turns it into events: one `Replace` per kind, and the
    /// problems.
    async fn snapshot(&self) -> Result<Vec<super::SourceEvent>, ReadError> {
        let dir = self.dir.clone();
        let manifests = tokio::task::spawn_blocking(move || manifest::read_dir(&dir))
            .await
            .expect("manifest reader panicked")?;
        let problems: Vec<String> = manifests.errors.iter().map(ToString::to_string).collect();
        let node: Vec<super::Object> = manifests
            .nodes
            .into_iter()
            .filter(|n| n.metadata.name.as_deref() == Some(self.node.as_str()))
            .map(super::Object::Node)
            .collect();
        Ok(vec![
            super::SourceEvent::Problems(problems),
            super::SourceEvent::Replace {
                kind: super::Kind::Services,
                objects: manifests
                    .services
                    .into_iter()
                    .map(super::Object::Service)
                    .collect(),
            },
            super::SourceEvent::Replace {
                kind: super::Kind::EndpointSlices,
                objects: manifests
                    .slices
                    .into_iter()
                    .map(super::Object::Slice)
                    .collect(),
            },
            super::SourceEvent::Replace {
                kind: super::Kind::Node,
                objects: node,
            },
        ])
    }
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
            loop {
                match self.snapshot().await {
                    Ok(batch) => {
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
