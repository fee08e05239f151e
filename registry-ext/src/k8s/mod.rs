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

fn kube_error(error: kube::Error) -> crate::Error {
    crate::Error::backend(BACKEND, error)
}
