//! The fake's etcd: objects, one resourceVersion counter for every kind, and the change history
//! that watches replay. Plain data, no I/O, so that its semantics are tested on their own.

use std::collections::{BTreeMap, HashMap, VecDeque};

use k8s_openapi::{
    api::{
        core::v1::{Event as CoreEvent, Node, Service},
        discovery::v1::EndpointSlice,
        events::v1::Event,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use serde_json::{Map, Value, json};

use super::{
    RequestCounts,
    selector::{FieldSelector, LabelSelector},
};

/// Changes kept for watches to replay. Beyond this the oldest are compacted away, as the API
/// server's watch cache forgets old revisions, so a very slow watcher gets `410 Gone`.
const HISTORY_LIMIT: usize = 100_000;

/// Identifies a collection the way its URL does: `/apis/{group}/{version}/.../{plural}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ResourceKey {
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) plural: String,
}

impl ResourceKey {
    pub(crate) fn of<K: k8s_openapi::Resource>() -> Self {
        Self {
            group: K::GROUP.to_owned(),
            version: K::VERSION.to_owned(),
            plural: K::URL_PATH_SEGMENT.to_owned(),
        }
    }
}

/// What the server knows about a kind it serves.
#[derive(Debug, Clone)]
pub(crate) struct ResourceType {
    pub(crate) key: ResourceKey,
    pub(crate) kind: String,
    pub(crate) namespaced: bool,
}

impl ResourceType {
    pub(crate) fn of<K: k8s_openapi::Resource>(namespaced: bool) -> Self {
        Self {
            key: ResourceKey::of::<K>(),
            kind: K::KIND.to_owned(),
            namespaced,
        }
    }

    pub(crate) fn api_version(&self) -> String {
        if self.key.group.is_empty() {
            self.key.version.clone()
        } else {
            format!("{}/{}", self.key.group, self.key.version)
        }
    }
}

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects. Its order is the
/// order lists come back in, as etcd's key order makes it for the API server.
pub(crate) type ObjectKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as a watch replays it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) resource: ResourceKey,
    pub(crate) kind: ChangeKind,
    pub(crate) object: Value,
    /// The object before a modification: a watch with a selector needs it to turn a change that
    /// moves an object into or out of the selection into `ADDED` or `DELETED`.
    pub(crate) previous: Option<Value>,
}

/// Which objects of a collection a request sees.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    pub(crate) namespace: Option<String>,
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

impl Selection {
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                == Some(ns)
        }) && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The watch event type this change has for a watcher of this selection, if any.
    pub(crate) fn event_type(&self, change: &Change) -> Option<&'static str> {
        let now = self.matches(&change.object);
        match change.kind {
            ChangeKind::Added => now.then_some("ADDED"),
            ChangeKind::Deleted => now.then_some("DELETED"),
            ChangeKind::Modified => {
                let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum StoreError {
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: String, name: String },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    #[error(
        "operation cannot be fulfilled on {kind} {name:?}: the object has been modified \
         (resourceVersion {given} given, {current} stored)"
    )]
    Conflict {
        kind: String,
        name: String,
        given: String,
        current: u64,
    },
    #[error("{kind} object has no metadata.name")]
    MissingName { kind: String },
    #[error("{kind} is namespaced but the object has no namespace")]
    MissingNamespace { kind: String },
    #[error("{kind} is cluster-scoped but the object has namespace {namespace:?}")]
    UnexpectedNamespace { kind: String, namespace: String },
    #[error("{kind} object is not a JSON object")]
    NotAnObject { kind: String },
}

/// A watch's starting point is older than the history the server still has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub(crate) struct Expired {
    pub(crate) requested: u64,
    pub(crate) oldest: u64,
}

#[derive(Debug)]
struct StoredObject {
    /// The resourceVersion that created it, to return events in the order they were posted.
    created: u64,
    value: Value,
}

#[derive(Debug)]
pub(crate) struct Store {
    rv: u64,
    /// Every change with an RV above this is in `history`; a watch from an older RV has missed
    /// changes the server can no longer replay.
    compacted: u64,
    history: VecDeque<Change>,
    types: HashMap<ResourceKey, ResourceType>,
    objects: HashMap<ResourceKey, BTreeMap<ObjectKey, StoredObject>>,
    counts: HashMap<ResourceKey, RequestCounts>,
    next_uid: u64,
}

impl Default for Store {
    fn default() -> Self {
        let mut store = Self {
            // A fresh etcd is never at revision 0, and "0" means "any version" to a watch.
            rv: 1,
            compacted: 1,
            history: VecDeque::new(),
            types: HashMap::new(),
            objects: HashMap::new(),
            counts: HashMap::new(),
            next_uid: 1,
        };
        for resource in [
            ResourceType::of::<Service>(true),
            ResourceType::of::<EndpointSlice>(true),
            ResourceType::of::<Node>(false),
            ResourceType::of::<Event>(true),
            ResourceType::of::<CoreEvent>(true),
        ] {
            store.register(resource);
        }
        store
    }
}

impl Store {
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn register(&mut self, resource: ResourceType) {
        self.types.entry(resource.key.clone()).or_insert(resource);
    }

    pub(crate) fn resource(&self, key: &ResourceKey) -> Option<&ResourceType> {
        self.types.get(key)
    }

    pub(crate) fn counts(&self, key: &ResourceKey) -> RequestCounts {
        self.counts.get(key).copied().unwrap_or_default()
    }

    pub(crate) fn counts_mut(&mut self, key: &ResourceKey) -> &mut RequestCounts {
        self.counts.entry(key.clone()).or_default()
    }

    /// Works out an object's key and checks its namespace against the kind's scope. A
    /// namespaced object without a namespace goes to `default_namespace` (the URL's, or
    /// "default" as kubectl would use).
    fn object_key(
        resource: &ResourceType,
        object: &mut Value,
        default_namespace: Option<&str>,
    ) -> Result<ObjectKey, StoreError> {
        let kind = || resource.kind.clone();
        let metadata = object
            .as_object_mut()
            .ok_or_else(|| StoreError::NotAnObject { kind: kind() })?
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| StoreError::NotAnObject { kind: kind() })?;
        let name = metadata
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| StoreError::MissingName { kind: kind() })?
            .to_owned();
        let namespace = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let namespace = match (resource.namespaced, namespace) {
            (true, Some(ns)) => ns,
            (true, None) => {
                let ns = default_namespace
                    .ok_or_else(|| StoreError::MissingNamespace { kind: kind() })?
                    .to_owned();
                metadata.insert("namespace".into(), Value::String(ns.clone()));
                ns
            }
            (false, None) => String::new(),
            (false, Some(namespace)) => {
                return Err(StoreError::UnexpectedNamespace {
                    kind: kind(),
                    namespace,
                });
            }
        };
        Ok((namespace, name))
    }

    /// Creates the object, or replaces it if it exists. A write that changes nothing keeps the
    /// stored object and its resourceVersion, as the API server skips no-op updates.
    pub(crate) fn upsert(
        &mut self,
        resource: &ResourceKey,
        object: Value,
        default_namespace: Option<&str>,
    ) -> Result<Value, StoreError> {
        self.write(resource, object, default_namespace, WriteMode::Upsert)
    }

    pub(crate) fn create(
        &mut self,
        resource: &ResourceKey,
        object: Value,
        namespace: Option<&str>,
    ) -> Result<Value, StoreError> {
        self.write(resource, object, namespace, WriteMode::Create)
    }

    /// Replaces an existing object; a resourceVersion in the body must match the stored one
    /// (optimistic concurrency, as for a PUT).
    pub(crate) fn replace(
        &mut self,
        resource: &ResourceKey,
        object: Value,
        namespace: Option<&str>,
    ) -> Result<Value, StoreError> {
        self.write(resource, object, namespace, WriteMode::Replace)
    }

    fn write(
        &mut self,
        key: &ResourceKey,
        mut object: Value,
        default_namespace: Option<&str>,
        mode: WriteMode,
    ) -> Result<Value, StoreError> {
        let resource = self.types[key].clone();
        let object_key = Self::object_key(&resource, &mut object, default_namespace)?;
        let given_rv = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let fields = object.as_object_mut().expect("checked by object_key");
        fields.insert("apiVersion".into(), Value::String(resource.api_version()));
        fields.insert("kind".into(), Value::String(resource.kind.clone()));

        let objects = self.objects.entry(key.clone()).or_default();
        let existing = objects.get(&object_key);
        let name = || object_key.1.clone();
        match (mode, existing) {
            (WriteMode::Create, Some(_)) => {
                return Err(StoreError::AlreadyExists {
                    kind: resource.kind,
                    name: name(),
                });
            }
            (WriteMode::Replace, None) => {
                return Err(StoreError::NotFound {
                    kind: resource.kind,
                    name: name(),
                });
            }
            (WriteMode::Replace, Some(stored)) => {
                let current = stored_rv(&stored.value);
                if let Some(given) = given_rv.filter(|g| *g != current.to_string()) {
                    return Err(StoreError::Conflict {
                        kind: resource.kind,
                        name: name(),
                        given,
                        current,
                    });
                }
            }
            _ => {}
        }

        if let Some(stored) = existing {
            // The server owns identity and history; whatever the writer sent for them is ignored.
            for field in ["uid", "creationTimestamp", "resourceVersion"] {
                set_metadata(&mut object, field, stored.value["metadata"][field].clone());
            }
            if object == stored.value {
                return Ok(object);
            }
            let previous = stored.value.clone();
            let created = stored.created;
            let rv = self.bump();
            set_metadata(
                &mut object,
                "resourceVersion",
                Value::String(rv.to_string()),
            );
            self.objects.get_mut(key).expect("entry made above").insert(
                object_key,
                StoredObject {
                    created,
                    value: object.clone(),
                },
            );
            self.record(rv, key, ChangeKind::Modified, &object, Some(previous));
        } else {
            let rv = self.bump();
            let uid = format!("00000000-0000-4000-8000-{:012x}", self.next_uid);
            self.next_uid += 1;
            set_metadata(&mut object, "uid", Value::String(uid));
            set_metadata(
                &mut object,
                "creationTimestamp",
                json!(Time(Timestamp::now())),
            );
            set_metadata(
                &mut object,
                "resourceVersion",
                Value::String(rv.to_string()),
            );
            self.objects.get_mut(key).expect("entry made above").insert(
                object_key,
                StoredObject {
                    created: rv,
                    value: object.clone(),
                },
            );
            self.record(rv, key, ChangeKind::Added, &object, None);
        }
        Ok(object)
    }

    /// Applies a JSON merge patch (RFC 7386) to a stored object.
    pub(crate) fn merge_patch(
        &mut self,
        key: &ResourceKey,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, StoreError> {
        let mut object = self
            .get(key, namespace, name)
            .ok_or_else(|| StoreError::NotFound {
                kind: self.types[key].kind.clone(),
                name: name.to_owned(),
            })?;
        apply_merge_patch(&mut object, patch);
        self.write(key, object, namespace, WriteMode::Upsert)
    }

    pub(crate) fn delete(
        &mut self,
        key: &ResourceKey,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let object_key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
        let mut object = self.objects.get_mut(key)?.remove(&object_key)?.value;
        let rv = self.bump();
        // The API server reports a deletion with the deleting revision, so a watcher that saw it
        // resumes after it.
        set_metadata(
            &mut object,
            "resourceVersion",
            Value::String(rv.to_string()),
        );
        self.record(rv, key, ChangeKind::Deleted, &object, None);
        Some(object)
    }

    pub(crate) fn get(
        &self,
        key: &ResourceKey,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let object_key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
        Some(self.objects.get(key)?.get(&object_key)?.value.clone())
    }

    /// The selected objects in key order, with the resourceVersion they are current at.
    pub(crate) fn list(&self, key: &ResourceKey, selection: &Selection) -> (u64, Vec<Value>) {
        let items = self
            .objects
            .get(key)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter(|o| selection.matches(&o.value))
            .map(|o| o.value.clone())
            .collect();
        (self.rv, items)
    }

    /// Objects of several collections in the order they were created.
    pub(crate) fn in_creation_order(&self, keys: &[ResourceKey]) -> Vec<Value> {
        let mut objects: Vec<&StoredObject> = keys
            .iter()
            .filter_map(|k| self.objects.get(k))
            .flat_map(BTreeMap::values)
            .collect();
        objects.sort_by_key(|o| o.created);
        objects.into_iter().map(|o| o.value.clone()).collect()
    }

    /// The changes to one collection after `from`, or [`Expired`] if some of them are gone.
    pub(crate) fn changes_since(
        &self,
        key: &ResourceKey,
        from: u64,
    ) -> Result<Vec<Change>, Expired> {
        if from < self.compacted {
            return Err(Expired {
                requested: from,
                oldest: self.compacted,
            });
        }
        // History is in RV order; skip what the watcher has already seen.
        let start = self.history.partition_point(|c| c.rv <= from);
        Ok(self
            .history
            .range(start..)
            .filter(|c| c.resource == *key)
            .cloned()
            .collect())
    }

    /// Forgets all history, as an etcd compaction (or a restarted API server's empty watch
    /// cache) does: a watch from any RV older than the current one gets `410 Gone`.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(
        &mut self,
        rv: u64,
        key: &ResourceKey,
        kind: ChangeKind,
        object: &Value,
        previous: Option<Value>,
    ) {
        self.history.push_back(Change {
            rv,
            resource: key.clone(),
            kind,
            object: object.clone(),
            previous,
        });
        if self.history.len() > HISTORY_LIMIT
            && let Some(oldest) = self.history.pop_front()
        {
            self.compacted = oldest.rv;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum WriteMode {
    Upsert,
    Create,
    Replace,
}

fn stored_rv(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok())
        .unwrap_or_default()
}

fn set_metadata(object: &mut Value, field: &str, value: Value) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if value.is_null() {
            metadata.remove(field);
        } else {
            metadata.insert(field.to_owned(), value);
        }
    }
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
fn apply_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            apply_merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> ResourceKey {
        ResourceKey::of::<Service>()
    }

    fn nodes() -> ResourceKey {
        ResourceKey::of::<Node>()
    }

    fn service(name: &str, port: u16) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"ports": [{"port": port}]}})
    }

    fn rv_of(object: &Value) -> u64 {
        stored_rv(object)
    }

    #[test]
    fn every_write_of_any_kind_bumps_one_counter() {
        let mut store = Store::default();
        let start = store.rv();
        let a = store.upsert(&services(), service("a", 80), None).unwrap();
        let n = store
            .upsert(&nodes(), json!({"metadata": {"name": "n"}}), None)
            .unwrap();
        let a2 = store.upsert(&services(), service("a", 81), None).unwrap();
        assert_eq!(
            [rv_of(&a), rv_of(&n), rv_of(&a2)],
            [start + 1, start + 2, start + 3]
        );
        assert_eq!(a["metadata"]["uid"], a2["metadata"]["uid"]);
        assert_eq!(a2["kind"], "Service");
        assert_eq!(a2["apiVersion"], "v1");
        let deleted = store.delete(&services(), Some("ns"), "a").unwrap();
        assert_eq!(rv_of(&deleted), start + 4);
        assert_eq!(
            store.list(&services(), &Selection::default()),
            (start + 4, vec![])
        );
    }

    #[test]
    fn a_no_op_write_keeps_the_resource_version() {
        let mut store = Store::default();
        let first = store.upsert(&services(), service("a", 80), None).unwrap();
        let again = store.upsert(&services(), service("a", 80), None).unwrap();
        assert_eq!(first, again);
        assert_eq!(store.rv(), rv_of(&first));
    }

    #[test]
    fn history_replays_one_collection_after_a_version() {
        let mut store = Store::default();
        let a = store.upsert(&services(), service("a", 80), None).unwrap();
        store
            .upsert(&nodes(), json!({"metadata": {"name": "n"}}), None)
            .unwrap();
        store.upsert(&services(), service("b", 80), None).unwrap();
        store.delete(&services(), Some("ns"), "a");
        let kinds: Vec<_> = store
            .changes_since(&services(), rv_of(&a))
            .unwrap()
            .iter()
            .map(|c| (c.kind, c.object["metadata"]["name"].clone()))
            .collect();
        assert_eq!(
            kinds,
            [
                (ChangeKind::Added, json!("b")),
                (ChangeKind::Deleted, json!("a"))
            ]
        );
    }

    #[test]
    fn compaction_expires_older_versions_only() {
        let mut store = Store::default();
        let a = store.upsert(&services(), service("a", 80), None).unwrap();
        store.upsert(&services(), service("a", 81), None).unwrap();
        store.compact();
        assert_eq!(
            store.changes_since(&services(), rv_of(&a)).unwrap_err(),
            Expired {
                requested: rv_of(&a),
                oldest: store.rv()
            }
        );
        assert!(
            store
                .changes_since(&services(), store.rv())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn scope_and_concurrency_errors_name_the_object() {
        let mut store = Store::default();
        assert_eq!(
            store.upsert(
                &nodes(),
                json!({"metadata": {"name": "n", "namespace": "x"}}),
                None
            ),
            Err(StoreError::UnexpectedNamespace {
                kind: "Node".into(),
                namespace: "x".into()
            })
        );
        assert_eq!(
            store.upsert(&services(), json!({"metadata": {"name": "a"}}), None),
            Err(StoreError::MissingNamespace {
                kind: "Service".into()
            })
        );
        store.create(&services(), service("a", 80), None).unwrap();
        assert!(matches!(
            store.create(&services(), service("a", 80), None),
            Err(StoreError::AlreadyExists { .. })
        ));
        let mut stale = service("a", 81);
        stale["metadata"]["resourceVersion"] = json!("1");
        assert!(matches!(
            store.replace(&services(), stale, None),
            Err(StoreError::Conflict { .. })
        ));
    }

    #[test]
    fn a_selector_turns_moves_across_it_into_adds_and_deletes() {
        let selection = Selection {
            labels: LabelSelector::parse("app=web").unwrap(),
            ..Selection::default()
        };
        let labelled = |app: &str| json!({"metadata": {"name": "a", "labels": {"app": app}}});
        let change = |previous: &str, now: &str| Change {
            rv: 2,
            resource: services(),
            kind: ChangeKind::Modified,
            object: labelled(now),
            previous: Some(labelled(previous)),
        };
        assert_eq!(
            selection.event_type(&change("web", "web")),
            Some("MODIFIED")
        );
        assert_eq!(selection.event_type(&change("db", "web")), Some("ADDED"));
        assert_eq!(selection.event_type(&change("web", "db")), Some("DELETED"));
        assert_eq!(selection.event_type(&change("db", "db")), None);
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]});
        apply_merge_patch(&mut target, &json!({"a": null, "b": {"c": 4}, "e": [3]}));
        assert_eq!(target, json!({"b": {"c": 4, "d": 3}, "e": [3]}));
    }
}
