//! Kubernetes backend (feature `k8s`).
//!
//! The resolver follows the EndpointSlices of a Service (label
//! `kubernetes.io/service-name`) with kube's runtime watcher: additions,
//! removals and readiness flips are pushed as they happen; when the watch
//! expires (410 Gone) the watcher lists again and the current set stays in
//! place until the new list is complete. Only ready endpoints are resolved;
//! terminating ones never are. Zone, node and hostname become tags.
//!
//! Services running in the cluster behind a Kubernetes Service need no
//! registration: the cluster's endpoints controller maintains their slices.
//! [`K8sRegistry`] is for instances outside that controller (a VM, another
//! cluster): it manages one EndpointSlice per instance, labelled
//! `endpointslice.kubernetes.io/managed-by: registry-ext`, created on
//! register and deleted on deregister. The Service itself should have no
//! selector, so the endpoints controller leaves those slices alone.
//!
//! Targets name a Service, its namespace and a port, by name or number:
//! `k8s://echo.default:grpc`, `echo.default:50051`, or `echo:grpc` (the
//! client's default namespace).
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
pub use slice::ready_instances;

pub(crate) const BACKEND: &str = "k8s";
/// `endpointslice.kubernetes.io/managed-by` of the slices this crate manages.
pub const MANAGED_BY: &str = "registry-ext";
/// Label carrying the id of the registration that applied a slice; a
/// registration deletes its slice on deregister only while it carries its id.
pub const REGISTRATION_LABEL: &str = "registry-ext/registration";

fn kube_error(error: kube::Error) -> crate::Error {
    crate::Error::backend(BACKEND, error)
}
