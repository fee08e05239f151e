//! The [`Resolver`] trait and the [`ServiceWatch`] it hands out.

use std::{future::Future, sync::Arc};

use tokio::sync::watch;

use crate::{Error, Instance, Result};

/// The known instances of one service, sorted by address.
#[derive(Debug, Clone, Default)]
pub struct ServiceSnapshot {
    /// The instances, sorted by address. Empty is a valid answer: the service
    /// exists in no backend entry, or was scaled to zero.
    pub instances: Arc<[Arc<Instance>]>,
    /// How many successful lists/updates produced this view; `0` until the
    /// first one.
    pub generation: u64,
    /// The latest backend failure, kept until the next success. While it is
    /// set, `instances` is the last known good set.
    pub last_error: Option<Arc<Error>>,
}

impl ServiceSnapshot {
    /// A snapshot of `instances` (sorted here) at `generation`, without
    /// error.
    #[must_use]
    pub fn new(mut instances: Vec<Arc<Instance>>, generation: u64) -> Self {
        instances.sort_by_key(|i| i.address);
        Self {
            instances: instances.into(),
            generation,
            last_error: None,
        }
    }
}

/// A live view of one service's instances, kept current by a background task.
///
/// Cloning is cheap; every clone sees every update.
#[derive(Debug, Clone)]
pub struct ServiceWatch {
    service: Arc<str>,
    rx: watch::Receiver<ServiceSnapshot>,
}

impl ServiceWatch {
    /// A watch of `service` on the snapshots `rx` receives.
    pub(crate) fn new(service: &str, rx: watch::Receiver<ServiceSnapshot>) -> Self {
        Self {
            service: service.into(),
            rx,
        }
    }

    /// The service this watch follows.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The current snapshot.
    pub fn current(&self) -> ServiceSnapshot {
        self.rx.borrow().clone()
    }

    /// Waits for the next change (instances or error state) and returns it.
    ///
    /// Errors with [`Error::Closed`] once the background task has stopped.
    pub async fn changed(&mut self) -> Result<ServiceSnapshot> {
        self.rx.changed().await.map_err(|_| Error::Closed)?;
        Ok(self.rx.borrow_and_update().clone())
    }

    /// Waits until `predicate` holds for the current instances and returns them.
    pub async fn wait_for(
        &mut self,
        mut predicate: impl FnMut(&[Arc<Instance>]) -> bool,
    ) -> Result<ServiceSnapshot> {
        let snapshot = self
            .rx
            .wait_for(|s| predicate(&s.instances))
            .await
            .map_err(|_| Error::Closed)?;
        Ok(snapshot.clone())
    }
}

/// A backend that answers "where are the instances of this service?" and
/// pushes every change.
///
/// ```
/// use rpc_ext_registry::{Instance, MemoryRegistry, Registry, Resolver};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = MemoryRegistry::new();
/// let mut watch = registry.subscribe("echo").await?;
/// assert!(watch.current().instances.is_empty());
///
/// let _registration = registry
///     .register(Instance::new("echo", "127.0.0.1:8080".parse().unwrap()))
///     .await?;
/// let snapshot = watch.changed().await?;
/// assert_eq!(snapshot.instances[0].address.port(), 8080);
/// # Ok(()) }
/// ```
pub trait Resolver: Send + Sync + 'static {
    /// Starts (or joins) the background watch of `service` and returns once
    /// its first list has completed. Fails if that first list failed; the
    /// background task keeps retrying either way.
    fn subscribe(&self, service: &str) -> impl Future<Output = Result<ServiceWatch>> + Send;

    /// The instances of `service` right now.
    fn resolve(&self, service: &str) -> impl Future<Output = Result<Arc<[Arc<Instance>]>>> + Send {
        async move { Ok(self.subscribe(service).await?.current().instances) }
    }
}
