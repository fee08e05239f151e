//! Mesh mode: a wrapper around any backend that steps aside when a
//! service-mesh sidecar (Istio's Envoy) does discovery and load balancing.
//!
//! [`MeshAware`] wraps a registry, a resolver, or a backend that is both.
//! It decides once, when built, whether mesh mode is on, by the rule of
//! [`rpc_ext_core::mesh`]: the builder's [`mode`](MeshAwareBuilder::mode),
//! else the `RPC_EXT_MESH` variable, else Istio's sidecar annotation in the
//! pod's Downward API annotations file. It logs the decision and its reason
//! in one `info` line.
//!
//! **Mesh mode off**: every call goes to the backend, unchanged.
//!
//! **Mesh mode on, registering**: nothing is written anywhere. `register`
//! checks the instance as the backends do (an unspecified IP replaced as
//! [`advertise_address`] does, then
//! [`Instance::validate`]) and returns a live [`Registration`] whose
//! `deregister` succeeds; it logs one `info` line saying the instance was not
//! registered because the mesh's sidecar does discovery. The registration
//! is listed in [`health`](MeshAware::health) under backend `mesh` while its
//! handle lives.
//!
//! **Mesh mode on, resolving**: the answer is the addresses the sidecar
//! routes, for the name asked. Names are read in the Kubernetes resolver's
//! target syntax, `[k8s://]name[.namespace][:port]`, so one name serves
//! both:
//!
//! - `k8s://name[.namespace][:port]`: the Service `name` of `namespace`
//!   (else of the builder's namespace), as the Kubernetes resolver reads
//!   it; anything else after `k8s://` is an [`Error::Config`](crate::Error::Config);
//! - without the prefix, `name` or `name.namespace` (a Service name, an RFC
//!   1035 label, and a namespace, an RFC 1123 label: lowercase letters,
//!   digits and `-`) with an optional `:port` is the same Service;
//! - other names, `host[:port]`, are hosts used as they are: an IP,
//!   `[v6]`, a name of two or more dots (`api.example.com`), or one dot
//!   that is not two labels. A host written with a trailing dot
//!   (`example.com.:443`) is looked up as it is, which is how a one-dot
//!   host is told from `name.namespace`. A name with no dot that is not a
//!   Service name is an `Error::Config`;
//! - a name given a [route](MeshAwareBuilder::route) goes to that route
//!   instead: a `k8s://` target, or `host[:port]` used as it is.
//!
//! A Service becomes its DNS name, `name.namespace.svc.<cluster domain>`.
//! The port is a number, or a port name (`k8s://echo.prod:grpc`), or none.
//! A number is used as it is: the Service's port, the one its cluster IP
//! listens on and the sidecar intercepts. A name, or no port, takes the
//! number [`named_port`](MeshAwareBuilder::named_port) gives that name,
//! else the builder's [`port`](MeshAwareBuilder::port); with neither,
//! subscribing fails with an [`Error::Config`](crate::Error::Config) naming
//! the target. The namespace is the builder's, else `POD_NAMESPACE`, else
//! the service-account file [`SERVICE_ACCOUNT_NAMESPACE`], else `default`;
//! the cluster domain the builder's, else `cluster.local`.
//!
//! The host is looked up with the system resolver, a Service's DNS name as
//! a fully qualified name (with a trailing dot, so the pod's `ndots:5`
//! search list is not tried first). Every address of the answer is an
//! instance, each once, IPv4 ones first, at most [`MAX_ADDRESSES`]: a Service's cluster
//! IP, or a headless Service's pod IPs, which the sidecar passes through
//! to the pod each names, so clients balance over all of them. Each
//! instance has the default weight and the tag [`AUTHORITY_TAG`]
//! (`mesh.authority`) = `host:port`, the Service's DNS name without the
//! trailing dot. One follower per name looks it up again every
//! [`refresh`](MeshAwareBuilder::refresh) period (default 30 s), with at
//! most one lookup running (one that outlived its
//! [`lookup_timeout`](MeshAwareBuilder::lookup_timeout) is waited for, not
//! started again); a failed lookup is published in
//! [`ServiceSnapshot::last_error`](crate::ServiceSnapshot::last_error) with
//! the last addresses kept, and retried after a backoff delay. A first
//! lookup that fails makes `subscribe` fail with
//! [`Error::Resolve`](crate::Error::Resolve). Subscriptions are listed in
//! [`health`](MeshAware::health) under backend `mesh`.
//!
//! The Volo and tonic adapters take a [`MeshAware`] as they take any
//! resolver, and connect to the addresses. Neither sends the tag as the
//! `:authority`: Volo sends the address it connects to, and
//! `tonic::balanced_channel` (feature `tonic`) `http://<ip>:<port>`. That
//! is enough for Istio: its sidecar picks the route of an outbound call by
//! the destination port and matches the `:authority` against the Service's
//! host names and its cluster IP, and passes a headless Service's pod IPs
//! through. Where the authority must be the Service's name (a
//! `VirtualService` matching on it, say), a tonic channel can set it with
//! `tonic::balanced_channel_with` and tonic's `Endpoint::origin`:
//!
//! ```
//! # #[cfg(feature = "tonic")]
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use rpc_ext_registry::{
//!     mesh::{MeshAware, MeshMode},
//!     tonic::balanced_channel_with,
//!     Error, MemoryRegistry,
//! };
//! use tonic::transport::Endpoint;
//!
//! let resolver = MeshAware::builder(MemoryRegistry::new())
//!     .mode(MeshMode::On)
//!     .namespace("prod")
//!     .port(50051)
//! #   // A test machine has no cluster DNS: "echo" is this loopback address.
//! #   .route("echo", "127.0.0.1:50051")
//!     .build();
//! let origin: tonic::transport::Uri = "http://echo.prod.svc.cluster.local:50051".parse()?;
//! let channel = balanced_channel_with(&resolver, "echo", move |address| {
//!     Endpoint::from_shared(format!("http://{address}"))
//!         .map(|endpoint| endpoint.origin(origin.clone()))
//!         .map_err(|e| Error::Config(e.to_string()))
//! })
//! .await?;
//! # let _ = channel; Ok(()) }
//! # #[cfg(not(feature = "tonic"))] fn main() {}
//! ```
//!
//! Mesh mode is decided by each builder on its own: rpc-ext-tracing's
//! `RpcTracingBuilder` (which forwards `x-request-id` in mesh mode) applies
//! the same rule. With `RPC_EXT_MESH` or detection deciding, both agree; an
//! explicit [`mode`](MeshAwareBuilder::mode) here does not set the other.
//!
//! ```
//! use rpc_ext_registry::{
//!     mesh::{MeshAware, MeshMode, AUTHORITY_TAG},
//!     Instance, MemoryRegistry, Registry, Resolver,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> rpc_ext_registry::Result<()> {
//! let backend = MemoryRegistry::new();
//! let registry = MeshAware::builder(backend.clone())
//!     .mode(MeshMode::On) // in a pod: MeshMode::Auto, the default
//!     .port(50051)
//!     .route("echo", "127.0.0.1:50051")
//!     .build();
//!
//! let registration = registry
//!     .register(Instance::new("echo", "127.0.0.1:50051".parse().unwrap()))
//!     .await?;
//! assert!(backend.resolve("echo").await?.is_empty(), "nothing registered");
//!
//! let echo = registry.resolve("echo").await?;
//! assert_eq!(echo[0].address, "127.0.0.1:50051".parse().unwrap());
//! assert_eq!(echo[0].tags.get(AUTHORITY_TAG), Some("127.0.0.1:50051"));
//! registration.deregister().await?;
//! # Ok(()) }
//! ```

mod builder;
mod follower;
mod target;

use std::{net::IpAddr, sync::Arc};

pub use builder::{MeshAwareBuilder, DEFAULT_REFRESH};
pub use follower::MAX_ADDRESSES;
pub use rpc_ext_core::mesh::{Mesh, MeshMode};
pub use target::{
    DEFAULT_CLUSTER_DOMAIN, DEFAULT_NAMESPACE, NAMESPACE_ENV, SERVICE_ACCOUNT_NAMESPACE,
};

use self::{
    follower::{follow, DnsLookup, Timing},
    target::Naming,
};
use crate::{
    advertise_address, health::RegistryHealth, kit::Subscriptions, Instance, Registration,
    Registry, Resolver, Result, ServiceWatch,
};

/// The backend name in errors and health entries.
const BACKEND: &str = "mesh";

/// The tag of a mesh-mode instance holding `host:port`, the name the calls
/// are for (a Service's DNS name without the trailing dot). A client that
/// must route by name sends it as the `:authority`; the Volo and tonic
/// adapters send the address instead, which Istio routes too (see the
/// [module](self)).
pub const AUTHORITY_TAG: &str = "mesh.authority";

/// A registry and/or resolver that registers nothing and resolves names to
/// the mesh's addresses in mesh mode, and is `B` otherwise; see the
/// [module](self).
///
/// It is a [`Registry`] when `B` is one and a [`Resolver`] when `B` is one.
/// Clones share the followers and health.
pub struct MeshAware<B> {
    backend: B,
    mesh: Mesh,
    health: RegistryHealth,
    /// `None` when mesh mode is off: calls go to `backend`.
    side: Option<Arc<MeshSide>>,
}

/// What mesh mode needs, built only when it is on.
struct MeshSide {
    naming: Naming,
    timing: Timing,
    advertise_ip: Option<IpAddr>,
    subscriptions: Subscriptions,
    health: RegistryHealth,
}

impl<B: Clone> Clone for MeshAware<B> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            mesh: self.mesh,
            health: self.health.clone(),
            side: self.side.clone(),
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for MeshAware<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshAware")
            .field("backend", &self.backend)
            .field("mesh", &self.mesh)
            .field("naming", &self.side.as_ref().map(|side| &side.naming))
            .finish_non_exhaustive()
    }
}

impl<B> MeshAware<B> {
    /// Starts building a wrapper around `backend`.
    pub fn builder(backend: B) -> MeshAwareBuilder<B> {
        MeshAwareBuilder::new(backend)
    }

    /// Whether mesh mode is on, and why.
    pub fn mesh(&self) -> Mesh {
        self.mesh
    }

    /// The wrapped backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The health of mesh mode's registrations and subscriptions (empty
    /// while mesh mode is off: the backend's own handle has them then).
    pub fn health(&self) -> RegistryHealth {
        self.health.clone()
    }
}

impl MeshSide {
    fn register(&self, mut instance: Instance) -> Result<Registration> {
        instance.address = advertise_address(instance.address, self.advertise_ip)?;
        instance.validate()?;
        tracing::info!(
            service = %instance.service,
            address = %instance.address,
            "not registered: in mesh mode the mesh's sidecar does discovery"
        );
        let (mut registration, mut stop) = Registration::new(instance);
        // Nothing to renew: the entry only says the handle is live.
        let _probe = registration.track(BACKEND, &self.health);
        tokio::spawn(async move { stop.wait().await.reply(Ok(())) });
        Ok(registration)
    }

    async fn subscribe(&self, service: &str) -> Result<ServiceWatch> {
        let target = self.naming.target(service)?;
        // The follower holds copies only, not `self`: it holds a receiver
        // of `self.subscriptions`, and must end once the wrapper is gone.
        let timing = self.timing;
        let name = service.to_owned();
        self.subscriptions
            .subscribe(service, move |publisher| {
                let lookup = DnsLookup::new(target.clone(), timing.lookup_timeout);
                follow(publisher, name, target, timing, lookup)
            })
            .await
    }
}

impl<B: Registry> Registry for MeshAware<B> {
    async fn register(&self, instance: Instance) -> Result<Registration> {
        match &self.side {
            None => self.backend.register(instance).await,
            Some(side) => side.register(instance),
        }
    }
}

impl<B: Resolver> Resolver for MeshAware<B> {
    async fn subscribe(&self, service: &str) -> Result<ServiceWatch> {
        match &self.side {
            None => self.backend.subscribe(service).await,
            Some(side) => side.subscribe(service).await,
        }
    }

    async fn resolve(&self, service: &str) -> Result<Arc<[Arc<Instance>]>> {
        match &self.side {
            None => self.backend.resolve(service).await,
            Some(side) => Ok(side.subscribe(service).await?.current().instances),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, MemoryRegistry};

    fn instance(port: u16) -> Instance {
        Instance::new("echo", std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn wrap(mode: MeshMode) -> (MemoryRegistry, MeshAware<MemoryRegistry>) {
        let backend = MemoryRegistry::new();
        let wrapped = MeshAware::builder(backend.clone())
            .mode(mode)
            .namespace("prod")
            .build();
        (backend, wrapped)
    }

    #[tokio::test]
    async fn off_delegates_registering_and_resolving() {
        let (backend, wrapped) = wrap(MeshMode::Off);
        assert_eq!(
            wrapped.mesh(),
            Mesh {
                enabled: false,
                reason: "set by option"
            }
        );
        let registration = wrapped.register(instance(7001)).await.unwrap();
        let held = backend.resolve("echo").await.unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].address.port(), 7001);
        let resolved = wrapped.resolve("echo").await.unwrap();
        assert_eq!(resolved, held, "the backend's answer, no mesh tag");
        assert!(wrapped.health().snapshot().registrations.is_empty());
        registration.deregister().await.unwrap();
        assert!(backend.resolve("echo").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn on_registers_nothing_and_deregisters_fine() {
        let (backend, wrapped) = wrap(MeshMode::On);
        let registration = wrapped.register(instance(7002)).await.unwrap();
        assert_eq!(registration.instance().address.port(), 7002);
        assert!(backend.resolve("echo").await.unwrap().is_empty());
        let listed = wrapped.health().snapshot().registrations;
        assert_eq!((listed.len(), listed[0].backend), (1, "mesh"));
        registration.deregister().await.unwrap();
        assert!(wrapped.health().snapshot().registrations.is_empty());
    }

    #[tokio::test]
    async fn on_still_refuses_an_invalid_instance() {
        let (_, wrapped) = wrap(MeshMode::On);
        let result = wrapped.register(instance(0)).await;
        assert!(
            matches!(result, Err(Error::InvalidInstance(_))),
            "{result:?}"
        );
        let result = wrapped
            .register(Instance::new("", instance(1).address))
            .await;
        assert!(
            matches!(result, Err(Error::InvalidInstance(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn on_resolves_a_route_to_one_tagged_instance() {
        let backend = MemoryRegistry::new();
        let _elsewhere = backend.register(instance(7003)).await.unwrap();
        let wrapped = MeshAware::builder(backend)
            .mode(MeshMode::On)
            .route("echo", "localhost:50051")
            .build();
        let watch = wrapped.subscribe("echo").await.unwrap();
        let snapshot = watch.current();
        // `localhost` is 127.0.0.1, and on many hosts ::1 too: every
        // address, IPv4 first, none from the backend.
        let addresses: Vec<_> = snapshot.instances.iter().map(|i| i.address).collect();
        assert!(!addresses.is_empty());
        assert!(
            addresses
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 50051),
            "{addresses:?}"
        );
        assert!(addresses.is_sorted_by_key(|a| a.is_ipv6()), "{addresses:?}");
        for echo in snapshot.instances.iter() {
            assert_eq!(echo.tags.get(AUTHORITY_TAG), Some("localhost:50051"));
        }
        let subscriptions = wrapped.health().snapshot().subscriptions;
        assert_eq!(
            (subscriptions[0].backend, subscriptions[0].instances),
            ("mesh", addresses.len())
        );
    }

    #[tokio::test]
    async fn on_without_a_port_number_is_a_config_error_naming_the_target() {
        let (_, wrapped) = wrap(MeshMode::On);
        for service in ["echo", "k8s://echo.prod:grpc", "echo.prod:grpc"] {
            let result = wrapped.subscribe(service).await;
            match result {
                Err(Error::Config(message)) => {
                    assert!(message.contains(&format!("{service:?}")), "{message}");
                }
                other => panic!("{service}: {other:?}"),
            }
        }
        assert!(wrapped.health().snapshot().subscriptions.is_empty());
    }

    #[test]
    fn auto_reads_the_injected_environment() {
        let on = MeshAware::builder(MemoryRegistry::new())
            .env(|name| (name == "RPC_EXT_MESH").then(|| "on".to_owned()))
            .build();
        assert_eq!(
            on.mesh(),
            Mesh {
                enabled: true,
                reason: "RPC_EXT_MESH"
            }
        );
        let off = MeshAware::builder(MemoryRegistry::new())
            .env(|name| (name == "RPC_EXT_MESH").then(|| "off".to_owned()))
            .build();
        assert_eq!(
            off.mesh(),
            Mesh {
                enabled: false,
                reason: "RPC_EXT_MESH"
            }
        );
        let nothing = MeshAware::builder(MemoryRegistry::new())
            .env(|_| None)
            .build();
        assert_eq!(nothing.mesh().reason, "no mesh detected");
    }

    #[test]
    fn the_namespace_defaults_to_the_injected_pod_namespace() {
        let wrapped = MeshAware::builder(MemoryRegistry::new())
            .mode(MeshMode::On)
            .env(|name| (name == NAMESPACE_ENV).then(|| "staging".to_owned()))
            .cluster_domain("corp.example")
            .build();
        let side = wrapped.side.as_ref().unwrap();
        assert_eq!(
            side.naming.target("echo:80").unwrap().host,
            "echo.staging.svc.corp.example"
        );
    }
}
