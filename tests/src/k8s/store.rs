//! The stand-in's storage: objects by resource, namespace and name, one
//! resource-version counter for all of them (as etcd's revision), and the
//! history of changes that watches replay.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Instant,
};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::{rbac, resource::Resource};

/// One change, as watches see it.
#[derive(Clone, Debug)]
pub(super) struct Change {
    pub version: u64,
    /// `ADDED`, `MODIFIED`, `DELETED`, or `NOOP` (wakes watches so they
    /// notice [`ApiState::generation`] changed).
    pub kind: &'static str,
    /// The resource changed; `None` for `NOOP`.
    pub resource: Option<Resource>,
    pub object: Value,
    /// The object before this change (`None` when it was created), so that
    /// each watch can tell whether it started or stopped matching its
    /// label selector.
    pub previous: Option<Value>,
}

type Key = (Resource, String, String);

pub(super) struct ApiState {
    objects: BTreeMap<Key, Value>,
    /// (namespace, name) → Service (read-only through the API).
    pub services: BTreeMap<(String, String), Value>,
    pub version: u64,
    /// Changes kept for watches; older versions answer 410.
    pub history: Vec<Change>,
    pub oldest: u64,
    pub changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch connection.
    pub generation: u64,
    /// The next EndpointSlice watch answers 410.
    pub expire_next_slice_watch: bool,
    /// List and watch requests answer 500.
    pub unavailable: bool,
    /// EndpointSlice list requests served.
    pub slice_lists: u64,
    pub role: rbac::Role,
    /// Every version of each object written (created, updated), with when,
    /// for tests that check who wrote what and measure from the moment a
    /// write reached the API server.
    writes: BTreeMap<Key, Vec<(Instant, Value)>>,
}

pub(super) type Shared = Arc<Mutex<ApiState>>;

impl ApiState {
    pub fn shared() -> Shared {
        let (changes, _) = broadcast::channel(1024);
        Arc::new(Mutex::new(Self {
            objects: BTreeMap::new(),
            services: BTreeMap::new(),
            version: 100,
            history: Vec::new(),
            oldest: 100,
            changes,
            generation: 0,
            expire_next_slice_watch: false,
            unavailable: false,
            slice_lists: 0,
            role: None,
            writes: BTreeMap::new(),
        }))
    }

    fn key(resource: Resource, namespace: &str, name: &str) -> Key {
        (resource, namespace.to_owned(), name.to_owned())
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&Self::key(resource, namespace, name))
    }

    /// The stored objects of `resource` in `namespace`, in name order.
    pub fn list<'a>(
        &'a self,
        resource: Resource,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |((r, ns, _), _)| *r == resource && ns == namespace)
            .map(|(_, object)| object)
    }

    /// Every version of the object stored, with when, oldest first.
    pub fn writes(&self, resource: Resource, namespace: &str, name: &str) -> Vec<(Instant, Value)> {
        self.writes
            .get(&Self::key(resource, namespace, name))
            .cloned()
            .unwrap_or_default()
    }

    /// Stores `object` under its `metadata.name`: created (a new UID) if
    /// absent, else updated (UID kept). Returns what was stored.
    pub fn upsert(&mut self, resource: Resource, namespace: &str, mut object: Value) -> Value {
        self.version += 1;
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = Self::key(resource, namespace, &name);
        let previous = self.objects.get(&key).cloned();
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        object["metadata"]["namespace"] = json!(namespace);
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        // A UID names one incarnation of an object: kept by updates, new
        // for each creation, so that a delete precondition on the UID
        // refuses to delete a re-created object.
        object["metadata"]["uid"] = match &previous {
            Some(previous) => previous["metadata"]["uid"].clone(),
            None => json!(format!("uid-{}-{}", resource.plural, self.version)),
        };
        self.objects.insert(key.clone(), object.clone());
        self.writes
            .entry(key)
            .or_default()
            .push((Instant::now(), object.clone()));
        let kind = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(kind, resource, object.clone(), previous);
        object
    }

    pub fn remove(&mut self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let mut object = self.objects.remove(&Self::key(resource, namespace, name))?;
        let previous = object.clone();
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.record("DELETED", resource, object.clone(), Some(previous));
        Some(object)
    }

    fn record(
        &mut self,
        kind: &'static str,
        resource: Resource,
        object: Value,
        previous: Option<Value>,
    ) {
        let change = Change {
            version: self.version,
            kind,
            resource: Some(resource),
            object,
            previous,
        };
        self.history.push(change.clone());
        let _ = self.changes.send(change);
    }

    /// Ends every open watch connection.
    pub fn drop_watches(&mut self) {
        self.generation += 1;
        let _ = self.changes.send(Change {
            version: 0,
            kind: "NOOP",
            resource: None,
            object: Value::Null,
            previous: None,
        });
    }

    /// The names of the stored objects of `resource` in `namespace`.
    pub fn names(&self, resource: Resource, namespace: &str) -> BTreeSet<String> {
        self.list(resource, namespace)
            .filter_map(|object| object["metadata"]["name"].as_str())
            .map(str::to_owned)
            .collect()
    }
}
