//! An in-process registry: no server needed, for tests, examples and
//! single-binary deployments.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::watch;

use crate::{
    advertise_address, registry::Stop, Instance, Registration, Registry, Resolver, Result,
    ServiceSnapshot, ServiceWatch,
};

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
}

#[derive(Debug, Default)]
struct State {
    services: HashMap<String, Service>,
}

#[derive(Debug)]
struct Service {
    instances: BTreeMap<SocketAddr, Arc<Instance>>,
    tx: watch::Sender<ServiceSnapshot>,
}

impl Service {
    fn new() -> Self {
        Self {
            instances: BTreeMap::new(),
            tx: watch::channel(ServiceSnapshot::new(Vec::new(), 1)).0,
        }
    }

    fn publish(&self) {
        let instances: Vec<_> = self.instances.values().cloned().collect();
        self.tx.send_modify(|snapshot| {
            *snapshot = ServiceSnapshot::new(instances, snapshot.generation + 1);
        });
    }
}

impl MemoryRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
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
        let (registration, mut stop) = Registration::new(instance);
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
        let rx = self.with_service(service, |s| s.tx.subscribe());
        Ok(ServiceWatch::new(service, rx))
    }
}
