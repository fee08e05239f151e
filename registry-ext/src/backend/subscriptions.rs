//! One background watch task per service, shared by every subscriber.

use std::{collections::HashMap, future::Future, sync::Arc};

use tokio::sync::watch;

use crate::{Error, Result, ServiceSnapshot, ServiceWatch};

/// The per-service watch tasks of one resolver.
///
/// A task runs while anyone (this cache included) holds a receiver of its
/// snapshots, so a resolver that is dropped stops the watches nobody uses.
/// A task that ended anyway (it returned or panicked) is replaced on the next
/// subscribe.
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
            // A follower that exited or panicked dropped its sender: its
            // receiver would only ever show `Closed` or a frozen snapshot,
            // so it is replaced by a fresh follower.
            match services.get(service).filter(|rx| rx.has_changed().is_ok()) {
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

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use super::*;
    use crate::Instance;

    fn instance(port: u16) -> Vec<Arc<Instance>> {
        vec![Arc::new(Instance::new(
            "svc",
            SocketAddr::from(([127, 0, 0, 1], port)),
        ))]
    }

    /// A follower that publishes `port` and then keeps running.
    async fn serve(tx: watch::Sender<ServiceSnapshot>, port: u16) {
        publish_instances(&tx, instance(port));
        std::future::pending::<()>().await;
    }

    fn ports(watch: &ServiceWatch) -> Vec<u16> {
        watch
            .current()
            .instances
            .iter()
            .map(|i| i.address.port())
            .collect()
    }

    #[tokio::test]
    async fn a_follower_that_exits_is_replaced_on_the_next_subscribe() {
        let subscriptions = Subscriptions::default();
        let first = subscriptions
            .subscribe("svc", |tx| async move {
                publish_instances(&tx, instance(1));
                // Returns: the sender is dropped, the snapshot frozen.
            })
            .await
            .unwrap();
        assert_eq!(ports(&first), [1]);
        tokio::time::sleep(Duration::from_millis(50)).await;

        let second = subscriptions
            .subscribe("svc", |tx| serve(tx, 2))
            .await
            .unwrap();
        assert_eq!(
            ports(&second),
            [2],
            "a new follower serves later subscribers"
        );
        // The live follower is shared, not replaced again.
        let third = subscriptions
            .subscribe("svc", |tx| serve(tx, 3))
            .await
            .unwrap();
        assert_eq!(ports(&third), [2]);
    }

    #[tokio::test]
    async fn a_follower_that_panics_is_replaced_on_the_next_subscribe() {
        let subscriptions = Subscriptions::default();
        let first = subscriptions
            .subscribe("svc", |tx| async move {
                let _tx = tx;
                panic!("follower bug");
            })
            .await;
        assert!(matches!(first, Err(Error::Closed)), "{first:?}");

        let second = subscriptions
            .subscribe("svc", |tx| serve(tx, 2))
            .await
            .unwrap();
        assert_eq!(ports(&second), [2]);
    }
}
