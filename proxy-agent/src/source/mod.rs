//! Where the cluster state comes from: a directory of manifests, or the Kubernetes API.
//!
//! Both implement [`Source`]: they run as a task and send [`SourceEvent`]s to the sync loop,
//! which keeps the [`ClusterState`](crate::model::ClusterState). A source only ever adds to
//! what the loop knows; losing contact with the API removes nothing, so traffic keeps
//! flowing on what was programmed.

pub mod files;
#[cfg(feature = "agent")]
pub mod kube;
pub mod manifest;

#[cfg(feature = "agent")]
use futures::future::BoxFuture;
use k8s_openapi::api::{core::v1 as core, discovery::v1::EndpointSlice};
#[cfg(feature = "agent")]
use thiserror::Error;
#[cfg(feature = "agent")]
use tokio::sync::mpsc;

/// The kinds of object the agent watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Services,
    EndpointSlices,
    /// This node's Node object only.
    Node,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Services, Kind::EndpointSlices, Kind::Node];

    pub fn name(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::EndpointSlices => "endpointslices",
            Self::Node => "node",
        }
    }
}

/// One object from a source.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "objects are moved into the state right away; boxing would add an allocation per event"
)]
pub enum Object {
    Service(core::Service),
    Slice(EndpointSlice),
    Node(core::Node),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Service(_) => Kind::Services,
            Self::Slice(_) => Kind::EndpointSlices,
            Self::Node(_) => Kind::Node,
        }
    }
}

/// What a source tells the sync loop.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    /// Every object of a kind, replacing what was known of it: the initial list, a re-list
    /// after the watch could not resume, or a re-read of the manifest directory. The first
    /// `Replace` of every kind makes the loop ready for its first sync.
    Replace { kind: Kind, objects: Vec<Object> },
    /// An object was created or changed.
    Applied(Object),
    /// An object was deleted.
    Deleted(Object),
    /// Manifest documents or objects that could not be read, one line each (files only).
    Problems(Vec<String>),
}

/// Why a source stopped.
#[cfg(feature = "agent")]
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("watching {path}")]
    Watch {
        path: std::path::PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error(transparent)]
    Read(#[from] manifest::ReadError),
    #[error("connecting to the Kubernetes API")]
    Kube(#[source] ::kube::Error),
    #[error("loading Kubernetes client configuration")]
    KubeConfig(#[source] ::kube::config::InferConfigError),
}

/// A producer of cluster state. `run` returns when the loop hangs up (or on a fatal error).
#[cfg(feature = "agent")]
pub trait Source: Send {
    fn run(
        self: Box<Self>,
        events: mpsc::Sender<SourceEvent>,
    ) -> BoxFuture<'static, Result<(), SourceError>>;
}
