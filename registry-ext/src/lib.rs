//! Service registration and discovery for Volo and tower/tonic services.
//!
//! Every backend is a [`Registry`] (register, keep alive, re-register after
//! failures, deregister) and a [`Resolver`] (list, then watch for changes).
//! Framework adapters turn a resolver into Volo's `Discover` (feature `volo`),
//! a tower `Change` stream (feature `tower`) or a tonic balanced channel
//! (feature `tonic`).
//!
//! | backend | feature | type |
//! |---|---|---|
//! | in-process | always | [`MemoryRegistry`] |
//! | etcd v3 | `etcd` | `etcd::EtcdRegistry`, `etcd::EtcdResolver` |
//! | ZooKeeper 3.6+ | `zookeeper` | `zookeeper::ZooKeeperRegistry`, `zookeeper::ZooKeeperResolver` |
//! | Consul | `consul` | `consul::ConsulRegistry`, `consul::ConsulResolver` |
//! | Kubernetes EndpointSlices | `k8s` | `k8s::K8sRegistry`, `k8s::K8sResolver` |
//!
//! Registries and resolvers report what they go through (renewals,
//! re-registrations, watch restarts, a stale set served during an outage)
//! as plain data in [`health`], for a metrics exporter to read.
//!
//! A backend of your own, in your own crate, is built from [`kit`]: the
//! same keeper, follower, backoff and health pieces the backends here use.
//!
//! Under a service mesh, [`mesh::MeshAware`] wraps any backend: in mesh mode
//! (set, `RPC_EXT_MESH`, or Istio's sidecar detected) it registers nothing
//! and resolves a service to its Kubernetes Service DNS name, which the
//! sidecar routes; otherwise it is the backend.
//!
//! ```
//! use rpc_ext_registry::{Instance, MemoryRegistry, Registry, Resolver};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> rpc_ext_registry::Result<()> {
//! let registry = MemoryRegistry::new();
//! let registration = registry
//!     .register(Instance::new("echo", "127.0.0.1:50051".parse().unwrap()))
//!     .await?;
//! assert_eq!(registry.resolve("echo").await?.len(), 1);
//! registration.deregister().await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod address;
mod diff;
mod error;
pub mod health;
mod instance;
mod memory;
mod registry;
mod resolver;
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
mod stored_instance;
mod tags;

pub mod kit;
pub mod mesh;

#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "k8s")]
pub mod k8s;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

#[cfg(feature = "tonic")]
pub mod tonic;
#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "volo")]
pub mod volo;

pub use address::{advertise_address, ADVERTISE_IP_ENV};
pub use diff::Diff;
pub use error::{BoxError, Error, Result};
pub use instance::{Instance, DEFAULT_WEIGHT};
pub use memory::MemoryRegistry;
pub use registry::{Registration, Registry};
pub use resolver::{Resolver, ServiceSnapshot, ServiceWatch};
pub use tags::{Tags, TagsIter};
