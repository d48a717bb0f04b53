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
