//! An in-process registry: no server needed, for tests, examples and
//! single-binary deployments.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::watch;

use crate::{
    advertise_address,
    health::{RegistryHealth, SubscriptionProbe},
    kit::Stop,
    Instance, Registration, Registry, Resolver, Result, ServiceSnapshot, ServiceWatch,
};

/// The backend name in errors and health entries.
const BACKEND: &str = "memory";

/// A registry and resolver that live in this process.
///
/// Clones share the same state, so a server can register into one clone and a
/// client resolve from another.
///
/// ```
/// use rpc_ext_registry::{Instance, MemoryRegistry, Registry, Resolver};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = MemoryRegistry::new();
/// let _server = registry
///     .register(Instance::new("echo", "127.0.0.1:50051".parse().unwrap()))
///     .await?;
/// let instances = registry.resolve("echo").await?;
/// assert_eq!(instances[0].address.port(), 50051);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryRegistry {
    inner: Arc<Mutex<State>>,
    advertise_ip: Option<IpAddr>,
    health: RegistryHealth,
}

#[derive(Debug, Default)]
struct State {
    services: HashMap<String, Service>,
}

#[derive(Debug)]
struct Service {
    instances: BTreeMap<SocketAddr, Arc<Instance>>,
    tx: watch::Sender<ServiceSnapshot>,
    /// Listed from the first subscription on, for as long as the registry
    /// lives: the registry itself keeps the view current, there is no
    /// follower that could end.
    subscription: Option<SubscriptionProbe>,
}

impl Service {
    fn new() -> Self {
        Self {
            instances: BTreeMap::new(),
            tx: watch::channel(ServiceSnapshot::new(Vec::new(), 1)).0,
            subscription: None,
        }
    }

    fn publish(&self) {
        let instances: Vec<_> = self.instances.values().cloned().collect();
        self.tx.send_modify(|snapshot| {
            *snapshot = ServiceSnapshot::new(instances, snapshot.generation + 1);
            self.record(snapshot);
        });
    }

    /// Every view of this registry is current: each one confirms the set.
    fn record(&self, snapshot: &ServiceSnapshot) {
        if let Some(probe) = &self.subscription {
            probe.shows(snapshot);
            probe.confirmed();
        }
    }
}

impl MemoryRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The health of this registry's registrations and subscriptions,
    /// shared by its clones.
    ///
    /// Registrations are listed while their handle lives; their state is
    /// always [`Registered`](crate::health::RegistrationState::Registered)
    /// and their counters stay at zero, since nothing can fail in process.
    /// A service is listed as a subscription from its first `subscribe`
    /// (or `resolve`) for as long as the registry lives, never stale.
    ///
    /// ```
    /// use rpc_ext_registry::{Instance, MemoryRegistry, Registry, Resolver};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> rpc_ext_registry::Result<()> {
    /// let registry = MemoryRegistry::new();
    /// let _echo = registry
    ///     .register(Instance::new("echo", "127.0.0.1:50051".parse().unwrap()))
    ///     .await?;
    /// registry.resolve("echo").await?;
    /// let health = registry.health().snapshot();
    /// assert_eq!(health.registrations.len(), 1);
    /// assert_eq!(health.subscriptions[0].instances, 1);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn health(&self) -> RegistryHealth {
        self.health.clone()
    }

    /// The IP to advertise for instances registered on an unspecified address.
    #[must_use]
    pub fn advertise_ip(mut self, ip: IpAddr) -> Self {
        self.advertise_ip = Some(ip);
        self
    }

    fn with_service<T>(&self, name: &str, f: impl FnOnce(&mut Service) -> T) -> T {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(state
            .services
            .entry(name.to_owned())
            .or_insert_with(Service::new))
    }
}

impl Registry for MemoryRegistry {
    async fn register(&self, mut instance: Instance) -> Result<Registration> {
        instance.address = advertise_address(instance.address, self.advertise_ip)?;
        instance.validate()?;
        let entry = Arc::new(instance.clone());
        self.with_service(&instance.service, |service| {
            service.instances.insert(entry.address, entry.clone());
            service.publish();
        });
        let (mut registration, mut stop) = Registration::new(instance);
        // Nothing to renew in process: the entry only says it is there.
        let _probe = registration.track(BACKEND, &self.health);
        let registry = self.clone();
        tokio::spawn(async move {
            let reason: Stop = stop.wait().await;
            registry.with_service(&entry.service, |service| {
                // Only remove what this registration put there.
                if service.instances.get(&entry.address) == Some(&entry) {
                    service.instances.remove(&entry.address);
                    service.publish();
                }
            });
            reason.reply(Ok(()));
        });
        Ok(registration)
    }
}

impl Resolver for MemoryRegistry {
    async fn subscribe(&self, service: &str) -> Result<ServiceWatch> {
        let rx = self.with_service(service, |s| {
            if s.subscription.is_none() {
                s.subscription = Some(self.health.subscription(BACKEND, service));
                s.record(&s.tx.borrow());
            }
            s.tx.subscribe()
        });
        Ok(ServiceWatch::new(service, rx))
    }
}
