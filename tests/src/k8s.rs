//! A stand-in Kubernetes API server for EndpointSlices, for machines
//! without a cluster.
//!
//! It serves the documented list and watch responses of
//! `/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices` (label
//! selectors, `resourceVersion`, bookmarks, `410 Gone` for a compacted
//! version), and get, server-side apply (`PATCH`) and delete of single
//! slices (with the resource-version and UID preconditions of a delete).
//! Fault modes: compaction (next watch from an old version gets 410),
//! dropping every open watch connection, and list and watch answering 500.
//!
//! It is not Kubernetes: tests run against a real cluster when `KUBECONFIG`
//! is set (see the README).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::broadcast};

const PREFIX: &str = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices";

#[derive(Clone, Debug)]
struct Change {
    version: u64,
    kind: &'static str,
    object: Value,
}

struct ApiState {
    /// (namespace, name) → object
    objects: BTreeMap<(String, String), Value>,
    version: u64,
    /// Changes kept for watches; older versions answer 410.
    history: Vec<Change>,
    oldest: u64,
    changes: broadcast::Sender<Change>,
    generation: u64,
    expire_next_watch: bool,
    unavailable: bool,
    lists: u64,
}

type Shared = Arc<Mutex<ApiState>>;

/// The stand-in API server on a free loopback port, until dropped.
pub struct K8sStandIn {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl K8sStandIn {
    /// Starts the stand-in.
    pub async fn start() -> anyhow::Result<Self> {
        let (changes, _) = broadcast::channel(1024);
        let state = Arc::new(Mutex::new(ApiState {
            objects: BTreeMap::new(),
            version: 100,
            history: Vec::new(),
            oldest: 100,
            changes,
            generation: 0,
            expire_next_watch: false,
            unavailable: false,
            lists: 0,
        }));
        let app = Router::new()
            .route(PREFIX, get(list_or_watch))
            .route(
                &format!("{PREFIX}/{{name}}"),
                get(get_one).patch(apply).delete(delete),
            )
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

    /// Creates or replaces a slice, as the endpoints controller would.
    pub fn put(&self, namespace: &str, slice: Value) {
        upsert(&self.state, namespace, slice);
    }

    /// Deletes a slice.
    pub fn remove(&self, namespace: &str, name: &str) {
        remove(&self.state, namespace, name);
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
        };
        let _ = self.state.lock().unwrap().changes.send(change);
    }
}

impl Drop for K8sStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(state: &mut ApiState, kind: &'static str, object: Value) {
    let change = Change {
        version: state.version,
        kind,
        object,
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
    let kind = if state.objects.contains_key(&key) {
        "MODIFIED"
    } else {
        "ADDED"
    };
    state.objects.insert(key, slice.clone());
    record(&mut state, kind, slice.clone());
    slice
}

fn remove(state: &Shared, namespace: &str, name: &str) -> Option<Value> {
    let mut state = state.lock().unwrap();
    let mut object = state
        .objects
        .remove(&(namespace.to_owned(), name.to_owned()))?;
    state.version += 1;
    object["metadata"]["resourceVersion"] = json!(state.version.to_string());
    record(&mut state, "DELETED", object.clone());
    Some(object)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn matches(object: &Value, namespace: &str, selector: &[(String, String)]) -> bool {
    object["metadata"]["namespace"] == namespace
        && selector
            .iter()
            .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
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
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(status(500, "InternalError", "stand-in: unavailable")),
        )
            .into_response();
    }
    if !query.watch.unwrap_or(false) {
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
        for change in backlog {
            if matches(&change.object, &namespace, &selector) {
                yield Ok::<_, Infallible>(line(change.kind, &change.object));
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
                    Ok(change) if change.version > from && matches(&change.object, &namespace, &selector) => {
                        yield Ok(line(change.kind, &change.object));
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
    let state = state.lock().unwrap();
    match state.objects.get(&(namespace, name.clone())) {
        Some(object) => Json(object.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(status(
                404,
                "NotFound",
                &format!("endpointslices {name:?} not found"),
            )),
        )
            .into_response(),
    }
}

async fn apply(
    State(state): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    // Server-side apply sends the object as YAML; JSON is valid YAML, and
    // kube sends JSON.
    let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(status(400, "BadRequest", "body is not JSON")),
        )
            .into_response();
    };
    object["metadata"]["name"] = json!(name);
    Json(upsert(&state, &namespace, object)).into_response()
}

async fn delete(
    State(state): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
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
        return (
            StatusCode::CONFLICT,
            Json(status(
                409,
                "Conflict",
                &format!("Precondition failed for endpointslices {name:?}"),
            )),
        )
            .into_response();
    }
    match remove(&state, &namespace, &name) {
        Some(object) => Json(object).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(status(
                404,
                "NotFound",
                &format!("endpointslices {name:?} not found"),
            )),
        )
            .into_response(),
    }
}
