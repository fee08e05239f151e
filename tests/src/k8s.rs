//! A stand-in Kubernetes API server for EndpointSlices, Leases and
//! Services, for machines without a cluster.
//!
//! EndpointSlices (`/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices`)
//! and Leases (`/apis/coordination.k8s.io/v1/namespaces/{ns}/leases`) are
//! served as the API documents them: list and watch (label selectors,
//! `resourceVersion`, bookmarks, `410 Gone` for a compacted version, and —
//! as a real watch does — `ADDED`/`DELETED` when an object starts or stops
//! matching the label selector), get, create (`POST`, 409 `AlreadyExists`),
//! replace (`PUT`: 409 `Conflict` when the body's `resourceVersion` or UID
//! is not the stored one; a Lease update must carry its version, and a PUT
//! of a missing Lease without one creates it, as the Lease strategy allows),
//! server-side apply (`PATCH`) and delete (with the resource-version and UID
//! preconditions of a delete). Every object gets a new UID when created,
//! kept by updates. Services are read-only
//! (`/api/v1/namespaces/{ns}/services/{name}`).
//!
//! As a real API server it refuses what a cluster refuses: requests the
//! configured Role does not allow (`403 Forbidden`, see
//! [`K8sStandIn::allow_only`]), names that are not DNS subdomains of at most
//! 253 characters, invalid labels, and Leases with a duration that is not
//! positive or negative transitions (`422 Invalid`), and server-side apply
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

mod collection;
mod controller;
mod object;
mod rbac;
mod resource;
mod store;
mod validation;

use std::{collections::BTreeSet, net::SocketAddr, time::Instant};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
pub use controller::{pod_endpoint, service, slice_of, Pod};
pub use rbac::USER;
use resource::{Resource, LEASES, SLICES};
use serde_json::{json, Value};
use store::{ApiState, Shared};
use tokio::net::TcpListener;

const SERVICES: &str = "/api/v1/namespaces/{ns}/services";

/// What a handler of one resource's routes has: the store and which
/// resource the routes serve.
#[derive(Clone)]
struct Ctx {
    state: Shared,
    resource: Resource,
}

/// The stand-in API server on a free loopback port, until dropped.
pub struct K8sStandIn {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

/// A kube client for the API server at `url` (`http://127.0.0.1:<port>`),
/// default namespace `default`: what [`K8sStandIn::client`] returns, for a
/// process that has only the stand-in's address.
pub fn client_for(url: &str) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::new(url.parse()?);
    config.default_namespace = "default".into();
    Ok(kube::Client::try_from(config)?)
}

/// The routes of `resource`: its collection and its objects.
fn routes(state: &Shared, resource: Resource) -> Router {
    let collection = resource.collection_route();
    Router::new()
        .route(
            &collection,
            get(collection::list_or_watch).post(collection::create),
        )
        .route(
            &format!("{collection}/{{name}}"),
            get(object::get_one)
                .put(object::replace)
                .patch(object::apply)
                .delete(object::delete),
        )
        .with_state(Ctx {
            state: state.clone(),
            resource,
        })
}

impl K8sStandIn {
    /// Starts the stand-in. Every request is allowed until
    /// [`Self::allow_only`] sets a Role.
    pub async fn start() -> anyhow::Result<Self> {
        let state = ApiState::shared();
        let app = routes(&state, SLICES).merge(routes(&state, LEASES)).merge(
            Router::new()
                .route(&format!("{SERVICES}/{{name}}"), get(get_service))
                .with_state(state.clone()),
        );
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
        client_for(&self.url())
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
        self.state.lock().unwrap().upsert(SLICES, namespace, slice);
    }

    /// Deletes a slice.
    pub fn remove(&self, namespace: &str, name: &str) {
        self.state.lock().unwrap().remove(SLICES, namespace, name);
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
        self.state
            .lock()
            .unwrap()
            .get(SLICES, namespace, name)
            .cloned()
    }

    /// The names of the slices stored in `namespace`.
    pub fn names(&self, namespace: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.names(SLICES, namespace).into_iter().collect()
    }

    /// Creates or replaces a Lease, as another client would.
    pub fn put_lease(&self, namespace: &str, lease: Value) {
        self.state.lock().unwrap().upsert(LEASES, namespace, lease);
    }

    /// The Lease stored under `namespace`/`name`.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .get(LEASES, namespace, name)
            .cloned()
    }

    /// The names of the Leases stored in `namespace`.
    pub fn lease_names(&self, namespace: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.names(LEASES, namespace).into_iter().collect()
    }

    /// Deletes a Lease.
    pub fn remove_lease(&self, namespace: &str, name: &str) {
        self.state.lock().unwrap().remove(LEASES, namespace, name);
    }

    /// When the stand-in stored each version of the Lease (creations and
    /// updates, by any client, across deletions), oldest first.
    pub fn lease_writes(&self, namespace: &str, name: &str) -> Vec<Instant> {
        let state = self.state.lock().unwrap();
        let writes = state.writes(LEASES, namespace, name);
        writes.into_iter().map(|(at, _)| at).collect()
    }

    /// Every version of the Lease the stand-in stored, as stored, oldest
    /// first (same order as [`Self::lease_writes`]).
    pub fn lease_versions(&self, namespace: &str, name: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        let writes = state.writes(LEASES, namespace, name);
        writes.into_iter().map(|(_, version)| version).collect()
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

    /// The next EndpointSlice watch request gets `410 Gone`, as when a
    /// watcher comes back after its resource version was compacted away.
    pub fn expire_next_watch(&self) {
        self.state.lock().unwrap().expire_next_slice_watch = true;
    }

    /// How many EndpointSlice list requests were served.
    pub fn list_requests(&self) -> u64 {
        self.state.lock().unwrap().slice_lists
    }

    /// Ends every open watch connection.
    pub fn drop_watches(&self) {
        self.state.lock().unwrap().drop_watches();
    }
}

impl Drop for K8sStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
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

/// The 403 to answer if the configured Role does not allow `verb` on the
/// handler's resource.
fn forbidden(ctx: &Ctx, verb: &str, namespace: &str, name: Option<&str>) -> Option<Response> {
    authorize(
        &ctx.state,
        verb,
        ctx.resource.plural,
        ctx.resource.group,
        namespace,
        name,
    )
}

fn authorize(
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

async fn get_service(
    State(state): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    if let Some(forbidden) = authorize(&state, "get", "services", "", &namespace, Some(&name)) {
        return forbidden;
    }
    let state = state.lock().unwrap();
    match state.services.get(&(namespace, name.clone())) {
        Some(service) => Json(service.clone()).into_response(),
        None => not_found("services", &name),
    }
}
