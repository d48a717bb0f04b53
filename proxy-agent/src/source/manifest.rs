//! Kubernetes objects from YAML or JSON files, as `kubectl get -o yaml` prints them.
//!
//! Multi-document files, `List` objects and JSON (a subset of YAML) are accepted. Only
//! Services, EndpointSlices and Nodes are kept; other kinds are ignored, so a directory of
//! ordinary manifests can be pointed at as is. A document that cannot be read is reported
//! with its file and position and skipped.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{core::v1 as core, discovery::v1::EndpointSlice};
use serde::Deserialize as _;
use serde_yaml::Value;
use thiserror::Error;

/// The objects found in some manifests.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub services: Vec<core::Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<core::Node>,
    pub errors: Vec<ManifestError>,
}

impl Manifests {
    fn extend(&mut self, other: Manifests) {
        self.services.extend(other.services);
        self.slices.extend(other.slices);
        self.nodes.extend(other.nodes);
        self.errors.extend(other.errors);
    }
}

/// A document that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub struct ManifestError {
    pub file: String,
    /// 1-based document number within the file.
    pub document: usize,
    /// `Kind namespace/name` when the document got that far.
    pub object: Option<String>,
    pub problem: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.file, self.document)?;
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// A directory that could not be read.
#[derive(Debug, Error)]
#[error("reading manifests in {path}")]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn describe(kind: &str, v: &Value) -> String {
    let meta = v.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn set_default_namespace(v: &mut Value) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_mapping_mut) {
        let key = Value::String("namespace".into());
        if meta.get(&key).is_none_or(Value::is_null) {
            meta.insert(key, Value::String("default".into()));
        }
    }
}

fn add_object(out: &mut Manifests, mut v: Value, file: &str, document: usize) {
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if kind == "List" || kind.ends_with("List") {
        if let Some(Value::Sequence(items)) = v.get_mut("items").map(std::mem::take) {
            // `kubectl get -o yaml` lists omit each item's kind when the list is typed.
            let item_kind = kind
                .strip_suffix("List")
                .filter(|k| !k.is_empty())
                .map(str::to_owned);
            for mut item in items {
                if let (Some(k), Some(map)) = (&item_kind, item.as_mapping_mut()) {
                    map.entry("kind".into())
                        .or_insert_with(|| Value::String(k.clone()));
                }
                add_object(out, item, file, document);
            }
        }
        return;
    }
    if !matches!(kind.as_str(), "Service" | "EndpointSlice" | "Node") {
        return;
    }
    if kind != "Node" {
        set_default_namespace(&mut v);
    }
    let object = describe(&kind, &v);
    // Through serde_path_to_error, so that a field of the wrong type is named
    // (`spec.ports: invalid type: ...`), as every other problem with an object is.
    let result = match kind.as_str() {
        "Service" => serde_path_to_error::deserialize(v).map(|s| out.services.push(s)),
        "EndpointSlice" => serde_path_to_error::deserialize(v).map(|s| out.slices.push(s)),
        _ => serde_path_to_error::deserialize(v).map(|n| out.nodes.push(n)),
    };
    if let Err(e) = result {
        let path = e.path().to_string();
        let problem = if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        };
        out.errors.push(ManifestError {
            file: file.to_owned(),
            document,
            object: Some(object),
            problem,
        });
    }
}

/// Parses every document of one file's text.
pub fn parse_str(text: &str, file: &str) -> Manifests {
    let mut out = Manifests::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(v) => add_object(&mut out, v, file, i + 1),
            Err(e) => {
                out.errors.push(ManifestError {
                    file: file.to_owned(),
                    document: i + 1,
                    object: None,
                    problem: e.to_string(),
                });
                // A syntax error leaves the parser unable to find the next document.
                break;
            }
        }
    }
    out
}

/// The manifest files of a directory (`*.yaml`, `*.yml`, `*.json`), sorted by name.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let read_error = |source| ReadError {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_error)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads and parses every manifest file of a directory, files in parallel.
pub fn read_dir(dir: &Path) -> Result<Manifests, ReadError> {
    let files = manifest_files(dir)?;
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(files.len().max(1));
    let mut results: Vec<Result<Manifests, ReadError>> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let files = &files;
                s.spawn(move || {
                    let mut out = Manifests::default();
                    for path in files.iter().skip(t).step_by(threads) {
                        let bytes = std::fs::read(path).map_err(|source| ReadError {
                            path: path.clone(),
                            source,
                        })?;
                        // Invalid UTF-8 (a stray byte in an annotation) must not cost every
                        // object in the file: replace it and let the document be judged.
                        let text = String::from_utf8_lossy(&bytes);
                        out.extend(parse_str(&text, &path.display().to_string()));
                    }
                    Ok(out)
                })
            })
            .collect();
        results = handles
            .into_iter()
            .map(|h| h.join().expect("manifest parser panicked"))
            .collect();
    });
    let mut all = Manifests::default();
    for r in results {
        all.extend(r?);
    }
    all.errors
        .sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_lists_and_json() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
---
apiVersion: v1
kind: EndpointSliceList
items:
- metadata: {name: web-1, namespace: team, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.5]}]
---
{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}]}
"#;
        let m = parse_str(text, "x.yaml");
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.services[0].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(m.slices.len(), 1);
        assert_eq!(m.slices[0].metadata.namespace.as_deref(), Some("team"));
        assert_eq!(m.nodes.len(), 1);
    }

    #[test]
    fn bad_documents_are_reported_with_file_position_and_object() {
        let text = "kind: Service\nmetadata: {name: web, namespace: a}\nspec: {ports: 7}\n---\nkind: Service\nmetadata: {name: ok}\n";
        let m = parse_str(text, "svc.yaml");
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.errors.len(), 1);
        let e = m.errors[0].to_string();
        assert!(
            e.starts_with("svc.yaml document 1 (Service a/web): spec.ports: "),
            "{e}"
        );

        let m = parse_str("kind: Service\n  bad: [indent", "broken.yaml");
        assert_eq!(m.errors.len(), 1);
        assert_eq!(m.errors[0].object, None);
    }
}
