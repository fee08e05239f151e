//! Kubernetes backend (feature `k8s`).
//!
//! The resolver follows the EndpointSlices of a Service (label
//! `kubernetes.io/service-name`) with kube's runtime watcher: additions,
//! removals and condition changes are pushed as they happen; when the watch
//! expires (410 Gone) the watcher lists again and the current set stays in
//! place until the new list is complete. Endpoints are chosen as kube-proxy
//! chooses them: the ready ones; when none of the Service's endpoints is
//! ready, the terminating ones that are still serving (so that a
//! one-replica rollout does not empty the set while the new pod starts);
//! never the others. An address listed in several slices is used once.
//! Zone, node and hostname become tags.
//!
//! Services running in the cluster behind a Kubernetes Service need no
//! registration: the cluster's endpoints controller maintains their slices.
//! [`K8sRegistry`] is for instances outside that controller (a VM, another
//! cluster): it manages one EndpointSlice per instance, labelled
//! `endpointslice.kubernetes.io/managed-by: registry-ext`, created on
//! register and deleted on deregister. The Service itself should have no
//! selector, so the endpoints controller leaves those slices alone.
//!
//! Targets name a Service, its namespace and one of the Service's ports, by
//! name or number: `k8s://echo.default:grpc`, `echo.default:80`, or
//! `echo:grpc` (the client's default namespace). Slices carry each Service
//! port's name with the *target* port the pods listen on, so a name is
//! matched in the slices directly, while a number (`port` in the Service's
//! spec, not its `targetPort`) is first mapped to the port's name by reading
//! the Service — when the watch starts, and again every minute — and needs
//! `get` on `services`. Prefer names: they need no Service read.
//!
//! Configuration comes from the usual places via `kube::Client::try_default()`
//! (in-cluster service account, then `KUBECONFIG`/`~/.kube/config`), or from
//! an explicit `kube::Client`.
//!
//! ```no_run
//! use rpc_ext_registry::{k8s::K8sResolver, Resolver};
//!
//! # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
//! let resolver = K8sResolver::try_default().await?;
//! let instances = resolver.resolve("k8s://echo.default:grpc").await?;
//! # let _ = instances; Ok(()) }
//! ```
//!
//! # Kubernetes version
//!
//! This crate does not pick a Kubernetes API version: k8s-openapi wants
//! exactly one of its version features (`latest`, `v1_33`...) enabled in
//! the whole build, chosen by the final binary, and refuses to build with
//! none or two. A binary using the `k8s` feature depends on k8s-openapi
//! itself and picks one, e.g. `k8s-openapi = { version = "0.29", features =
//! ["latest"] }` (the oldest API server it must work with, or `latest`).
//! This crate compiles against every version k8s-openapi 0.29 offers (1.33
//! to 1.37).
//!
//! # Permissions
//!
//! The resolver needs `list` and `watch` on
//! `endpointslices.discovery.k8s.io` (and `get` on `services` for numeric
//! targets); the registry `get`, `create`, `patch` and `delete` on
//! `endpointslices.discovery.k8s.io`. `deploy/kubernetes/rbac.yaml` in the
//! repository has the Roles, a ServiceAccount and the bindings. A request
//! the API server refuses (403) is reported as
//! [`Error::PermissionDenied`](crate::Error::PermissionDenied), whose
//! `operation` names the missing permission (`watch
//! endpointslices.discovery.k8s.io in namespace "prod"`); the resolver keeps
//! retrying meanwhile, so granting the permission is enough to recover.
//!
//! # Ownership
//!
//! A slice is named after the instance's service, IP and port (readable
//! prefix plus a hash of the three, so long names with IPv6 addresses do not
//! collide), and labelled [`REGISTRATION_LABEL`] with a random id per
//! registration. A process that registers the same instance again (a
//! restart) takes the slice over; the process it replaced, deregistering
//! later, sees another id and leaves the slice alone.
//!
//! # Liveness
//!
//! Kubernetes keeps an EndpointSlice until someone deletes it, and nothing
//! in it expires: unlike Consul's TTL check or an etcd lease, there is no
//! heartbeat. A process that deregisters deletes its slice (dropping the
//! [`Registration`] does it in the background, if the runtime lives on long
//! enough), but one that dies without running that code — SIGKILL, an OOM
//! kill, a lost host — leaves its slice in place, endpoint `ready: true`,
//! and clients keep resolving it. The slice goes away only when the same
//! instance registers again and later deregisters, or when an operator or a
//! controller deletes it (select
//! `endpointslice.kubernetes.io/managed-by=registry-ext`). Where stale
//! endpoints matter, run such a controller (for example one that probes the
//! endpoints, or one that ties each slice to a `coordination.k8s.io` Lease
//! the process renews), or let clients eject endpoints that fail, as load
//! balancers with outlier detection do. This crate does not implement a
//! heartbeat.
//!
//! [`Registration`]: crate::Registration

mod api_versions;
mod registry;
mod resolver;
mod slice;
mod target;

pub use registry::K8sRegistry;
pub use resolver::K8sResolver;
pub use target::{PortSpec, Target};
// For the fuzz targets only (see the `fuzzing` feature).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use slice::usable_instances;

pub(crate) const BACKEND: &str = "k8s";
/// `endpointslice.kubernetes.io/managed-by` of the slices this crate manages.
pub const MANAGED_BY: &str = "registry-ext";
/// Label carrying the id of the registration that applied a slice; a
/// registration deletes its slice on deregister only while it carries its id.
pub const REGISTRATION_LABEL: &str = "registry-ext/registration";

/// EndpointSlices, as RBAC rules and 403 messages name them.
const SLICES: &str = "endpointslices.discovery.k8s.io";
/// Services (core API group).
const SERVICES: &str = "services";

fn kube_error(error: kube::Error) -> crate::Error {
    crate::Error::backend(BACKEND, error)
}

/// The error of a `verb` request on `resource` in `namespace`: a 403 is a
/// [`crate::Error::PermissionDenied`] naming the permission, anything else a
/// backend error.
fn api_error(
    error: kube::Error,
    verb: &'static str,
    resource: &'static str,
    namespace: &str,
) -> crate::Error {
    match error {
        kube::Error::Api(status) if status.code == 403 => {
            denied(&status.message, verb, resource, namespace)
        }
        other => kube_error(other),
    }
}

/// A 403 answer with `message` to a `verb` request.
fn denied(message: &str, verb: &'static str, resource: &str, namespace: &str) -> crate::Error {
    // The API server authorizes an apply that creates its object as a
    // `create` too; its message says which verb it refused.
    const VERBS: [&str; 7] = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let verb = VERBS
        .into_iter()
        .find(|v| message.contains(&format!("cannot {v} resource")))
        .unwrap_or(verb);
    crate::Error::PermissionDenied {
        backend: BACKEND,
        operation: format!("{verb} {resource} in namespace {namespace:?}"),
        reason: format!(
            "{message} (grant it with a Role bound to the client's service account; \
             deploy/kubernetes/rbac.yaml has the Roles this crate needs)"
        ),
    }
}
