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
//! **Mesh mode on, resolving**: the answer is one instance, the address the
//! sidecar routes, for the name asked:
//!
//! - a name given a [route](MeshAwareBuilder::route) goes to that route's
//!   `host[:port]`, the host used as is;
//! - else a name is `name[:port]`: a name with a `.`, or an IP, is a host
//!   used as is (`echo.payments` resolves through the pod's DNS search
//!   path); one without is a Kubernetes Service of the namespace,
//!   `<name>.<namespace>.svc.<cluster domain>`;
//! - the port is the one given, else the builder's [`port`](MeshAwareBuilder::port);
//!   with neither, subscribing fails with [`Error::Config`](crate::Error::Config);
//! - the namespace is the builder's, else `POD_NAMESPACE`, else the
//!   service-account file [`SERVICE_ACCOUNT_NAMESPACE`], else `default`; the
//!   cluster domain the builder's, else `cluster.local`.
//!
//! The host is looked up in DNS (the first IPv4 address, else the first
//! IPv6 one): the instance has that address, the default weight, and the
//! tag [`AUTHORITY_TAG`] (`mesh.authority`) = `host:port`, the
//! `:authority` the sidecar routes by. One follower per name looks it up
//! again every [`refresh`](MeshAwareBuilder::refresh) period (default 30
//! s); a failed lookup is published in
//! [`ServiceSnapshot::last_error`](crate::ServiceSnapshot::last_error) with
//! the last address kept, and retried after a backoff delay. A first lookup
//! that fails makes `subscribe` fail with
//! [`Error::Resolve`](crate::Error::Resolve). Subscriptions are listed in
//! [`health`](MeshAware::health) under backend `mesh`.
//!
//! The Volo and tonic adapters take a [`MeshAware`] as they take any
//! resolver. A Volo instance carries the tag; a tonic channel connects to
//! the address (`balanced_channel_with` can set the endpoint's `origin` to
//! the Service name where the mesh routes by host).
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
//! assert_eq!(echo[0].tags[AUTHORITY_TAG], "127.0.0.1:50051");
//! registration.deregister().await?;
//! # Ok(()) }
//! ```

mod builder;
mod follower;
mod target;

use std::{net::IpAddr, sync::Arc};

pub use builder::{MeshAwareBuilder, DEFAULT_REFRESH};
pub use rpc_ext_core::mesh::{Mesh, MeshMode};
pub use target::{
    DEFAULT_CLUSTER_DOMAIN, DEFAULT_NAMESPACE, NAMESPACE_ENV, SERVICE_ACCOUNT_NAMESPACE,
};

use self::{
    follower::{follow, lookup, Timing},
    target::Naming,
};
use crate::{
    advertise_address, health::RegistryHealth, kit::Subscriptions, Instance, Registration,
    Registry, Resolver, Result, ServiceWatch,
};

/// The backend name in errors and health entries.
const BACKEND: &str = "mesh";

/// The tag of a mesh-mode instance holding `host:port`: the `:authority`
/// (HTTP/2) or `Host` the sidecar routes by.
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
                follow(publisher, name, target, timing, move |target| {
                    lookup(target.clone(), timing.lookup_timeout)
                })
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
        assert_eq!(snapshot.instances.len(), 1, "{:?}", snapshot.instances);
        let echo = &snapshot.instances[0];
        assert!(echo.address.ip().is_loopback(), "{}", echo.address);
        assert_eq!(echo.address.port(), 50051);
        assert_eq!(echo.tags[AUTHORITY_TAG], "localhost:50051");
        let subscriptions = wrapped.health().snapshot().subscriptions;
        assert_eq!(
            (subscriptions[0].backend, subscriptions[0].instances),
            ("mesh", 1)
        );
    }

    #[tokio::test]
    async fn on_without_a_port_is_a_config_error() {
        let (_, wrapped) = wrap(MeshMode::On);
        let result = wrapped.subscribe("echo").await;
        assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
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
