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
//! `endpointslice.kubernetes.io/managed-by: registry-ext`, with a Lease it
//! renews (see [Liveness](#liveness)), both created on register and deleted
//! on deregister. The Service itself should have no selector, so the
//! endpoints controller leaves those slices alone.
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
//! `endpointslices.discovery.k8s.io` and `leases.coordination.k8s.io` (and
//! `get` on `services` for numeric targets); the registry `get`, `create`,
//! `patch` and `delete` on `endpointslices.discovery.k8s.io`, and `get`,
//! `create`, `update` and `delete` on `leases.coordination.k8s.io`. `deploy/kubernetes/rbac.yaml` in the
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
//! restart) takes the slice and its Lease over; the process it replaced
//! stops renewing a Lease another registration holds and, deregistering
//! later, sees another id and leaves both alone.
//!
//! # Liveness
//!
//! Kubernetes keeps an EndpointSlice until someone deletes it, and nothing
//! in it expires. A process that deregisters deletes its slice and its Lease
//! (dropping the [`Registration`] does it in the background, if the runtime
//! lives on long enough). So that the endpoint of a process that dies without
//! deregistering (SIGKILL, an OOM kill, a lost host) is not used forever,
//! each registration also holds a `coordination.k8s.io/v1` Lease of the
//! slice's name, renewed every third of its duration
//! ([`K8sRegistry::lease_duration`], 30 s by default), and the slice names
//! it in its [`LEASE_LABEL`]. The resolver watches those Leases and uses
//! the endpoint of a slice that names one only while the Lease is live:
//! until its `leaseDurationSeconds` have passed, on the resolver's own
//! clock, since the resolver last saw its `renewTime` change (or first saw
//! it) — as client-go's leader election does, so clock skew between nodes
//! does not matter. A Lease that does not exist makes the slice's endpoint
//! expire one grace period after the resolver first saw it missing
//! ([`K8sResolver::missing_lease_grace`], 30 s). When a Lease expires the
//! resolver publishes the set without those endpoints; when it is renewed
//! again, they come back. Slices without the label (those of the endpoints
//! controller, or of an older version of this crate) are not affected.
//!
//! So a killed process's endpoint leaves every resolver at most one lease
//! duration after its last renewal. A resolver that starts after the
//! process died still uses it for one lease duration from its first sight
//! of the Lease (it cannot tell how long ago, by its own clock, the
//! `renewTime` was written). While the resolver's Lease watch fails (the
//! API server unreachable, or no `watch` permission on Leases) it cannot see
//! renewals, so that time does not count: nothing expires meanwhile, the
//! error is reported in [`ServiceSnapshot::last_error`](crate::ServiceSnapshot),
//! and liveness resumes once a new list of the Leases is complete. The
//! slice itself stays in place until the same instance registers again and
//! deregisters, or someone deletes it (select
//! `endpointslice.kubernetes.io/managed-by=registry-ext`).
//!
//! [`Registration`]: crate::Registration

mod api_versions;
mod heartbeat;
mod keeper_health;
mod lease_watch;
mod liveness;
mod registry;
mod resolver;
mod slice;
mod target;
mod view;

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

/// Label of a registry slice naming the Lease that tells whether its
/// endpoint is live (the slice's own name).
pub const LEASE_LABEL: &str = "registry-ext/lease";
/// Label of a registration's Lease naming its Service; the resolver of a
/// Service watches the Leases with it (and [`LEASE_MANAGED_BY_LABEL`]).
pub const LEASE_SERVICE_LABEL: &str = "registry-ext/service";
/// Label of a registration's Lease, with the value [`MANAGED_BY`].
pub const LEASE_MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The lease duration of a registration unless
/// [`K8sRegistry::lease_duration`] sets another, and the resolver's grace
/// for a Lease that does not exist unless
/// [`K8sResolver::missing_lease_grace`] sets another.
pub const DEFAULT_LEASE_DURATION: std::time::Duration = std::time::Duration::from_secs(30);

/// EndpointSlices, as RBAC rules and 403 messages name them.
const SLICES: &str = "endpointslices.discovery.k8s.io";
/// Leases, as RBAC rules and 403 messages name them.
const LEASES: &str = "leases.coordination.k8s.io";
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
