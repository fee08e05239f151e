//! A stand-in Kubernetes API server for EndpointSlices and Services, for
//! machines without a cluster.
//!
//! It serves the documented list and watch responses of
//! `/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices` (label
//! selectors, `resourceVersion`, bookmarks, `410 Gone` for a compacted
//! version, and — as a real watch does — `ADDED`/`DELETED` when an object
//! starts or stops matching the label selector), get, server-side apply
//! (`PATCH`) and delete of single slices (with the resource-version and UID
//! preconditions of a delete), and get of Services
//! (`/api/v1/namespaces/{ns}/services/{name}`).
//!
//! As a real API server it refuses what a cluster refuses: requests the
//! configured Role does not allow (`403 Forbidden`, see
//! [`K8sStandIn::allow_only`]), names that are not DNS subdomains of at most
//! 253 characters and invalid labels (`422 Invalid`), and server-side apply
//! without a `fieldManager` (`422`). [`Pod`], [`service`], [`slice_of`] and
//! [`pod_endpoint`] build the objects as the endpointslice controller does
//! (conditions of ready, draining and not-ready pods; slice ports that carry
//! the Service port's name with the target port's number).
//!
//! Fault modes: compaction (next watch from an old version gets 410),
//! dropping every open watch connection, and list and watch answering 500.
//!
//! It is not Kubernetes: tests run against a real cluster when `KUBECONFIG`
//! is set (see the README).

mod controller;
mod rbac;
mod validation;

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{header::CONTENT_TYPE, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
pub use controller::{pod_endpoint, service, slice_of, Pod};
pub use rbac::USER;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::broadcast};

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices";
const SERVICES: &str = "/api/v1/namespaces/{ns}/services";
const SLICE_GROUP: &str = "discovery.k8s.io";

#[derive(Clone, Debug)]
struct Change {
    version: u64,
    kind: &'static str,
    object: Value,
    /// The object before this change (`None` when it was created), so that
    /// each watch can tell whether it started or stopped matching its
    /// label selector.
    previous: Option<Value>,
}

struct ApiState {
    /// (namespace, name) → EndpointSlice
    objects: BTreeMap<(String, String), Value>,
    /// (namespace, name) → Service
    services: BTreeMap<(String, String), Value>,
    version: u64,
    /// Changes kept for watches; older versions answer 410.
    history: Vec<Change>,
    oldest: u64,
    changes: broadcast::Sender<Change>,
    generation: u64,
    expire_next_watch: bool,
    unavailable: bool,
    lists: u64,
    role: rbac::Role,
}

type Shared = Arc<Mutex<ApiState>>;

/// The stand-in API server on a free loopback port, until dropped.
pub struct K8sStandIn {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl K8sStandIn {
    /// Starts the stand-in. Every request is allowed until
    /// [`Self::allow_only`] sets a Role.
    pub async fn start() -> anyhow::Result<Self> {
        let (changes, _) = broadcast::channel(1024);
        let state = Arc::new(Mutex::new(ApiState {
            objects: BTreeMap::new(),
            services: BTreeMap::new(),
            version: 100,
            history: Vec::new(),
            oldest: 100,
            changes,
            generation: 0,
            expire_next_watch: false,
            unavailable: false,
            lists: 0,
            role: None,
        }));
        let app = Router::new()
            .route(SLICES, get(list_or_watch))
            .route(
                &format!("{SLICES}/{{name}}"),
                get(get_one).patch(apply).delete(delete),
            )
            .route(&format!("{SERVICES}/{{name}}"), get(get_service))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client talking to the stand-in, default namespace `default`.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let mut config = kube::Config::new(self.url().parse()?);
        config.default_namespace = "default".into();
        Ok(kube::Client::try_from(config)?)
    }

    /// From now on only these `(verb, resource)` pairs are allowed, as for a
    /// service account bound to a Role with these rules; everything else
    /// gets `403 Forbidden`. Resources are plurals qualified with their API
    /// group: `("list", "endpointslices.discovery.k8s.io")`, `("get",
    /// "services")`.
    pub fn allow_only(&self, rules: &[(&str, &str)]) {
        let rules: BTreeSet<(String, String)> = rules
            .iter()
            .map(|(verb, resource)| ((*verb).to_owned(), (*resource).to_owned()))
            .collect();
        self.state.lock().unwrap().role = Some(rules);
    }

    /// Creates or replaces a slice, as the endpoints controller would.
    pub fn put(&self, namespace: &str, slice: Value) {
        upsert(&self.state, namespace, slice);
    }

    /// Deletes a slice.
    pub fn remove(&self, namespace: &str, name: &str) {
        remove(&self.state, namespace, name);
    }

    /// Creates or replaces a Service (build one with [`service`]).
    pub fn put_service(&self, namespace: &str, mut service: Value) {
        let name = service["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        service["metadata"]["namespace"] = json!(namespace);
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        service["metadata"]["resourceVersion"] = json!(state.version.to_string());
        state.services.insert((namespace.to_owned(), name), service);
    }

    /// The slice stored under `namespace`/`name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The names of the slices stored in `namespace`.
    pub fn names(&self, namespace: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// While `on`, list and watch requests answer `500`, as an API server
    /// that is briefly unavailable; combine with [`Self::drop_watches`] so
    /// that open watches must reconnect.
    pub fn set_unavailable(&self, on: bool) {
        self.state.lock().unwrap().unavailable = on;
    }

    /// Forgets the change history: watches resuming from before now get 410.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.history.clear();
        state.oldest = state.version;
    }

    /// The next watch request gets `410 Gone`, as when a watcher comes back
    /// after its resource version was compacted away.
    pub fn expire_next_watch(&self) {
        self.state.lock().unwrap().expire_next_watch = true;
    }

    /// How many list requests were served.
    pub fn list_requests(&self) -> u64 {
        self.state.lock().unwrap().lists
    }

    /// Ends every open watch connection.
    pub fn drop_watches(&self) {
        self.state.lock().unwrap().generation += 1;
        // Wake the streams so they notice.
        let change = Change {
            version: 0,
            kind: "NOOP",
            object: Value::Null,
            previous: None,
        };
        let _ = self.state.lock().unwrap().changes.send(change);
    }
}

impl Drop for K8sStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(state: &mut ApiState, kind: &'static str, object: Value, previous: Option<Value>) {
    let change = Change {
        version: state.version,
        kind,
        object,
        previous,
    };
    state.history.push(change.clone());
    let _ = state.changes.send(change);
}

fn upsert(state: &Shared, namespace: &str, mut slice: Value) -> Value {
    let mut state = state.lock().unwrap();
    state.version += 1;
    let name = slice["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    slice["apiVersion"] = json!("discovery.k8s.io/v1");
    slice["kind"] = json!("EndpointSlice");
    slice["metadata"]["namespace"] = json!(namespace);
    slice["metadata"]["resourceVersion"] = json!(state.version.to_string());
    slice["metadata"]["uid"] = json!(format!("uid-{namespace}-{name}"));
    let key = (namespace.to_owned(), name);
    let previous = state.objects.insert(key, slice.clone());
    let kind = if previous.is_some() {
        "MODIFIED"
    } else {
        "ADDED"
    };
    record(&mut state, kind, slice.clone(), previous);
    slice
}

fn remove(state: &Shared, namespace: &str, name: &str) -> Option<Value> {
    let mut state = state.lock().unwrap();
    let mut object = state
        .objects
        .remove(&(namespace.to_owned(), name.to_owned()))?;
    let previous = object.clone();
    state.version += 1;
    object["metadata"]["resourceVersion"] = json!(state.version.to_string());
    record(&mut state, "DELETED", object.clone(), Some(previous));
    Some(object)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn failure(body: Value) -> Response {
    let code = body["code"]
        .as_u64()
        .and_then(|code| u16::try_from(code).ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(body)).into_response()
}

fn not_found(resource: &str, name: &str) -> Response {
    failure(status(
        404,
        "NotFound",
        &format!("{resource} {name:?} not found"),
    ))
}

/// The 403 to answer if the configured Role does not allow the request.
fn forbidden(
    state: &Shared,
    verb: &str,
    resource: &str,
    group: &str,
    namespace: &str,
    name: Option<&str>,
) -> Option<Response> {
    let request = rbac::Request {
        verb,
        resource,
        group,
        namespace,
        name,
    };
    request
        .authorize(&state.lock().unwrap().role)
        .err()
        .map(failure)
}

fn matches(object: &Value, namespace: &str, selector: &[(String, String)]) -> bool {
    object["metadata"]["namespace"] == namespace
        && selector
            .iter()
            .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

/// The event a watch with this selector sees for `change`, if any. As the
/// API server's watch cache does, an update that makes an object match
/// arrives as `ADDED` and one that makes it stop matching (its labels
/// changed) as `DELETED`, carrying the object's new state.
fn event_for<'a>(
    change: &'a Change,
    namespace: &str,
    selector: &[(String, String)],
) -> Option<(&'static str, &'a Value)> {
    let now = matches(&change.object, namespace, selector);
    let before = change
        .previous
        .as_ref()
        .is_some_and(|previous| matches(previous, namespace, selector));
    let kind = match (change.kind, before, now) {
        ("DELETED", true, _) => "DELETED",
        ("DELETED", false, _) => return None,
        (_, true, true) => "MODIFIED",
        (_, false, true) => "ADDED",
        (_, true, false) => "DELETED",
        (_, false, false) => return None,
    };
    Some((kind, &change.object))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    label_selector: Option<String>,
    watch: Option<bool>,
    resource_version: Option<String>,
    allow_watch_bookmarks: Option<bool>,
    timeout_seconds: Option<u64>,
}

async fn list_or_watch(
    State(state): State<Shared>,
    Path(namespace): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let selector: Vec<(String, String)> = query
        .label_selector
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter_map(|term| term.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    if state.lock().unwrap().unavailable {
        return failure(status(500, "InternalError", "stand-in: unavailable"));
    }
    let watching = query.watch.unwrap_or(false);
    let verb = if watching { "watch" } else { "list" };
    if let Some(forbidden) = forbidden(
        &state,
        verb,
        "endpointslices",
        SLICE_GROUP,
        &namespace,
        None,
    ) {
        return forbidden;
    }
    if !watching {
        let mut state = state.lock().unwrap();
        state.lists += 1;
        let items: Vec<Value> = state
            .objects
            .values()
            .filter(|o| matches(o, &namespace, &selector))
            .cloned()
            .collect();
        return Json(json!({
            "kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"resourceVersion": state.version.to_string()}, "items": items,
        }))
        .into_response();
    }
    let from: u64 = query
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (backlog, mut live, generation, gone) = {
        let mut state = state.lock().unwrap();
        let gone = from < state.oldest || std::mem::take(&mut state.expire_next_watch);
        let backlog: Vec<Change> = state
            .history
            .iter()
            .filter(|c| c.version > from)
            .cloned()
            .collect();
        (backlog, state.changes.subscribe(), state.generation, gone)
    };
    let line = |kind: &str, object: &Value| {
        Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
    };
    if gone {
        let body = line("ERROR", &status(410, "Expired", "too old resource version"));
        return Response::new(Body::from(body));
    }
    let bookmarks = query.allow_watch_bookmarks.unwrap_or(false);
    let timeout = Duration::from_secs(query.timeout_seconds.unwrap_or(290).min(290));
    let stream = async_stream::stream! {
        for change in &backlog {
            if let Some((kind, object)) = event_for(change, &namespace, &selector) {
                yield Ok::<_, Infallible>(line(kind, object));
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                _ = tick.tick(), if bookmarks => {
                    let version = state.lock().unwrap().version;
                    let bookmark = json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                        "metadata": {"resourceVersion": version.to_string()}});
                    yield Ok(line("BOOKMARK", &bookmark));
                }
                change = live.recv() => match change {
                    Ok(change) if change.kind == "NOOP" => {
                        if state.lock().unwrap().generation != generation { break; }
                    }
                    Ok(change) if change.version > from => {
                        if let Some((kind, object)) = event_for(&change, &namespace, &selector) {
                            yield Ok(line(kind, object));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
            }
        }
    };
    Response::new(Body::from_stream(stream))
}

async fn get_one(
    State(state): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    if let Some(forbidden) = forbidden(
        &state,
        "get",
        "endpointslices",
        SLICE_GROUP,
        &namespace,
        Some(&name),
    ) {
        return forbidden;
    }
    let state = state.lock().unwrap();
    match state.objects.get(&(namespace, name.clone())) {
        Some(object) => Json(object.clone()).into_response(),
        None => not_found("endpointslices.discovery.k8s.io", &name),
    }
}

async fn get_service(
    State(state): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    if let Some(forbidden) = forbidden(&state, "get", "services", "", &namespace, Some(&name)) {
        return forbidden;
    }
    let state = state.lock().unwrap();
    match state.services.get(&(namespace, name.clone())) {
        Some(service) => Json(service.clone()).into_response(),
        None => not_found("services", &name),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PatchQuery {
    field_manager: Option<String>,
}

/// Server-side apply, the only patch the stand-in takes: the body is the
/// whole object (YAML, of which kube's JSON is a part).
async fn apply(
    State(state): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<PatchQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(forbidden) = forbidden(
        &state,
        "patch",
        "endpointslices",
        SLICE_GROUP,
        &namespace,
        Some(&name),
    ) {
        return forbidden;
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/apply-patch+yaml") {
        return failure(status(
            415,
            "UnsupportedMediaType",
            &format!("stand-in: only server-side apply is served, not {content_type:?}"),
        ));
    }
    const KIND: &str = "EndpointSlice.discovery.k8s.io";
    if query.field_manager.as_deref().is_none_or(str::is_empty) {
        return failure(validation::missing_field_manager().status("PatchOptions.meta.k8s.io", ""));
    }
    let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
        return failure(status(400, "BadRequest", "body is not JSON"));
    };
    match object["metadata"]["name"].as_str() {
        None => object["metadata"]["name"] = json!(name),
        Some(inner) if inner != name => {
            return failure(status(
                400,
                "BadRequest",
                &format!(
                    "the name of the object ({inner}) does not match the name on the URL ({name})"
                ),
            ))
        }
        Some(_) => {}
    }
    if let Err(invalid) = validation::check_object(&object) {
        return failure(invalid.status(KIND, &name));
    }
    // An apply that creates the object is authorized as a create too, as
    // the API server's patch handler does.
    let exists = {
        let state = state.lock().unwrap();
        state
            .objects
            .contains_key(&(namespace.clone(), name.clone()))
    };
    if !exists {
        if let Some(forbidden) = forbidden(
            &state,
            "create",
            "endpointslices",
            SLICE_GROUP,
            &namespace,
            Some(&name),
        ) {
            return forbidden;
        }
    }
    Json(upsert(&state, &namespace, object)).into_response()
}

async fn delete(
    State(state): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(forbidden) = forbidden(
        &state,
        "delete",
        "endpointslices",
        SLICE_GROUP,
        &namespace,
        Some(&name),
    ) {
        return forbidden;
    }
    // DeleteOptions preconditions: the object must still have this
    // resource version and UID, else 409 Conflict.
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let preconditions = &options["preconditions"];
    let conflict = {
        let state = state.lock().unwrap();
        state
            .objects
            .get(&(namespace.clone(), name.clone()))
            .is_some_and(|object| {
                ["resourceVersion", "uid"].iter().any(|key| {
                    preconditions[key]
                        .as_str()
                        .is_some_and(|want| object["metadata"][key].as_str() != Some(want))
                })
            })
    };
    if conflict {
        return failure(status(
            409,
            "Conflict",
            &format!("Precondition failed for endpointslices {name:?}"),
        ));
    }
    match remove(&state, &namespace, &name) {
        Some(object) => Json(object).into_response(),
        None => not_found("endpointslices.discovery.k8s.io", &name),
    }
}
