//! One background watch task per service, shared by every subscriber.

use std::{collections::HashMap, future::Future, sync::Arc};

use tokio::sync::watch;

use crate::{Error, Result, ServiceSnapshot, ServiceWatch};

/// The per-service watch tasks of one resolver.
///
/// A task runs while anyone (this cache included) holds a receiver of its
/// snapshots, so a resolver that is dropped stops the watches nobody uses.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    services: std::sync::Mutex<HashMap<String, watch::Receiver<ServiceSnapshot>>>,
}

impl Subscriptions {
    /// Returns the watch of `service`, spawning `start(sender)` the first time.
    pub(crate) async fn subscribe<F, Fut>(&self, service: &str, start: F) -> Result<ServiceWatch>
    where
        F: FnOnce(watch::Sender<ServiceSnapshot>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut rx = {
            let mut services = self
                .services
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match services.get(service) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(ServiceSnapshot::default());
                    tokio::spawn(start(tx));
                    services.insert(service.to_owned(), rx.clone());
                    rx
                }
            }
        };
        let first = rx
            .wait_for(|s| s.generation > 0 || s.last_error.is_some())
            .await
            .map_err(|_| Error::Closed)?
            .clone();
        if first.generation == 0 {
            if let Some(source) = first.last_error {
                return Err(Error::Resolve {
                    service: service.to_owned(),
                    source,
                });
            }
        }
        Ok(ServiceWatch::new(service, rx))
    }
}

/// Publishes a failure while keeping the last known instances.
pub(crate) fn publish_error(tx: &watch::Sender<ServiceSnapshot>, error: Error) {
    let error = Arc::new(error);
    tx.send_modify(|snapshot| snapshot.last_error = Some(error));
}

/// Clears a published failure once the backend answers again, even if no
/// instance changed meanwhile.
#[cfg(feature = "etcd")]
pub(crate) fn publish_recovered(tx: &watch::Sender<ServiceSnapshot>) {
    tx.send_if_modified(|snapshot| snapshot.last_error.take().is_some());
}

/// Publishes a successful view; subscribers are woken only if the instances
/// changed or an error was cleared.
pub(crate) fn publish_instances(
    tx: &watch::Sender<ServiceSnapshot>,
    instances: Vec<Arc<crate::Instance>>,
) {
    tx.send_if_modified(|snapshot| {
        let next = ServiceSnapshot::new(instances, snapshot.generation + 1);
        let changed = snapshot.generation == 0
            || snapshot.last_error.is_some()
            || snapshot.instances != next.instances;
        *snapshot = next;
        changed
    });
}
