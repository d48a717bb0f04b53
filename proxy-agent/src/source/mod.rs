//! Where the cluster state comes from: files of manifests or the Kubernetes API.

pub mod files;
pub mod manifest;
