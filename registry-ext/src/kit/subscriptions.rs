//! One background watch task per service, shared by every subscriber.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::Backoff;
use crate::{
    health::{RegistryHealth, SubscriptionProbe},
    Error, Instance, Result, ServiceSnapshot, ServiceWatch,
};

/// The per-service watch tasks (followers) of one resolver.
///
/// A follower runs while anyone (this cache included) holds a receiver of its
/// snapshots, so a resolver that is dropped stops the watches nobody uses.
/// A follower that ended anyway (it returned or panicked) is replaced on the
/// next subscribe. See the [module example](crate::kit) for a resolver built
/// on it.
#[derive(Debug)]
pub struct Subscriptions {
    services: std::sync::Mutex<HashMap<String, watch::Receiver<ServiceSnapshot>>>,
    backend: &'static str,
    health: RegistryHealth,
}

impl Subscriptions {
    /// Followers whose subscriptions are listed in `health` under `backend`
    /// (the name errors and metrics give the backend).
    pub fn new(backend: &'static str, health: RegistryHealth) -> Self {
        Self {
            services: std::sync::Mutex::default(),
            backend,
            health,
        }
    }

    /// Returns the watch of `service`, spawning the follower `start(publisher)`
    /// on the current tokio runtime the first time, and waits for the
    /// follower's first publication.
    ///
    /// # Errors
    ///
    /// [`Error::Resolve`] if the follower published an error before any set
    /// (the first list failed; the follower keeps retrying and later
    /// subscribers get its set), [`Error::Closed`] if it ended first.
    pub async fn subscribe<F, Fut>(&self, service: &str, start: F) -> Result<ServiceWatch>
    where
        F: FnOnce(Publisher) -> Fut,
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
                    let probe = self.health.subscription(self.backend, service);
                    tokio::spawn(start(Publisher::new(tx, probe)));
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

/// What a follower publishes through: its subscribers' snapshots and the
/// subscription's health entry, which goes away with the follower.
///
/// Every publication updates the health entry before subscribers are woken.
#[derive(Debug)]
pub struct Publisher {
    // Dropped first (fields drop in order): once subscribers see the
    // channel closed, the entry is gone.
    probe: SubscriptionProbe,
    tx: watch::Sender<ServiceSnapshot>,
}

impl Publisher {
    /// Sends into `tx` and records what it sends through `probe`.
    pub(crate) fn new(tx: watch::Sender<ServiceSnapshot>, probe: SubscriptionProbe) -> Self {
        Self { probe, tx }
    }

    /// Resolves once every subscriber (and the resolver's cache) is gone:
    /// the follower should return then.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Whether every subscriber is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// What subscribers see now: the last published set and error, for a
    /// follower that holds a set on its own clock (a grace period after
    /// the backend lost its data) or publishes it again with
    /// [`Cause::Local`].
    pub fn current(&self) -> ServiceSnapshot {
        self.tx.borrow().clone()
    }

    /// The follower starts its watch over (after a failure, or from
    /// scratch); counted in the subscription's health.
    pub fn watch_restarted(&self) {
        self.probe.restarted();
    }

    /// Waits `delay` unless every subscriber leaves first: `true` once it
    /// has waited, `false` when the follower should return.
    pub async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.closed() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// What a follower does once `error` broke its watch: publishes the
    /// error (the last set kept), counts a restart and waits the next
    /// `backoff` delay. `false` when every subscriber left meanwhile: the
    /// follower returns; else it starts its watch over.
    pub async fn retry_after(&self, error: Error, backoff: &mut Backoff) -> bool {
        self.publish_error(error);
        self.watch_restarted();
        self.pause(backoff.next_delay()).await
    }

    /// Publishes a failure while keeping the last known instances.
    pub fn publish_error(&self, error: Error) {
        let error = Arc::new(error);
        self.tx.send_modify(|snapshot| {
            snapshot.last_error = Some(error);
            self.probe.failed();
            self.probe.shows(snapshot);
        });
    }

    /// Clears a published failure once the backend answers again, even if
    /// no instance changed meanwhile (a watch that resumed where it was).
    pub fn publish_recovered(&self) {
        self.tx.send_if_modified(|snapshot| {
            let cleared = snapshot.last_error.take().is_some();
            self.probe.confirmed();
            self.probe.shows(snapshot);
            cleared
        });
    }

    /// Publishes the whole set the backend just sent (a list, an answer, a
    /// set rebuilt from an event), clearing any error; subscribers are woken
    /// only if the instances changed or an error was cleared.
    pub fn publish_instances(&self, instances: Vec<Arc<Instance>>) {
        self.publish_view(instances, None, Cause::Backend);
    }

    /// Publishes `instances` with `failure` as the snapshot's error: the
    /// failure of a watch that runs beside the one that produced the set
    /// (Kubernetes: the Lease watch, whose failure leaves the slices
    /// followed), or `None` to clear any error. Subscribers are woken only
    /// if the instances or the error changed. A failing watch keeps one
    /// error until it recovers and may be published with every change
    /// meanwhile, so the failure is counted in the health entry when it is
    /// first published, not again for the same `Arc`.
    pub fn publish_view(
        &self,
        instances: Vec<Arc<Instance>>,
        failure: Option<&Arc<Error>>,
        cause: Cause,
    ) {
        self.tx.send_if_modified(|snapshot| {
            let mut next = ServiceSnapshot::new(instances, snapshot.generation + 1);
            next.last_error = failure.cloned();
            let same_error = match (&snapshot.last_error, &next.last_error) {
                (None, None) => true,
                (Some(shown), Some(new)) => Arc::ptr_eq(shown, new),
                _ => false,
            };
            let changed =
                snapshot.generation == 0 || !same_error || snapshot.instances != next.instances;
            *snapshot = next;
            if failure.is_some() && !same_error {
                self.probe.failed();
            }
            if cause == Cause::Backend {
                self.probe.confirmed();
            }
            self.probe.shows(snapshot);
            changed
        });
    }
}

/// Why a view is published: whether it confirms the set as the backend
/// holds it (for the subscription's last-update age in health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The backend sent it (a list, an answer, an event): it confirms the
    /// set.
    Backend,
    /// The follower's own reasons (an entry expiring on its clock, a watch
    /// beside the main one failing): it confirms nothing.
    Local,
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
    async fn serve(tx: Publisher, port: u16) {
        tx.publish_instances(instance(port));
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
        let subscriptions = Subscriptions::new("test", RegistryHealth::new());
        let first = subscriptions
            .subscribe("svc", |tx: Publisher| async move {
                tx.publish_instances(instance(1));
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
        let subscriptions = Subscriptions::new("test", RegistryHealth::new());
        let first = subscriptions
            .subscribe("svc", |tx: Publisher| async move {
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

    fn listed(health: &RegistryHealth) -> Vec<crate::health::SubscriptionHealth> {
        health.snapshot().subscriptions
    }

    #[tokio::test]
    async fn the_health_entry_mirrors_what_subscribers_see_and_ends_with_the_follower() {
        let health = RegistryHealth::new();
        let subscriptions = Subscriptions::new("test", health.clone());
        let (step_tx, mut step_rx) = tokio::sync::mpsc::channel::<u8>(1);
        let watch = subscriptions
            .subscribe("svc", |tx: Publisher| async move {
                tx.publish_error(Error::Closed);
                tx.watch_restarted();
                tx.publish_instances(instance(1));
                while let Some(step) = step_rx.recv().await {
                    match step {
                        0 => tx.publish_error(Error::Closed),
                        _ => tx.publish_instances(instance(2)),
                    }
                }
            })
            .await
            .unwrap();
        let served = &listed(&health)[0];
        assert_eq!((served.backend, &*served.service), ("test", "svc"));
        assert_eq!(
            (served.instances, served.errors, served.watch_restarts),
            (1, 1, 1)
        );
        assert!(!served.serving_stale, "the set arrived after the error");
        assert!(served.last_update_age.is_some());

        step_tx.send(0).await.unwrap();
        let mut stale_watch = watch.clone();
        let stale = stale_watch.changed().await.unwrap();
        let health_now = &listed(&health)[0];
        assert!(health_now.serving_stale);
        assert_eq!(health_now.instances, stale.instances.len());
        assert_eq!(health_now.errors, 2);

        step_tx.send(1).await.unwrap();
        let fresh = stale_watch.changed().await.unwrap();
        let health_now = &listed(&health)[0];
        assert!(!health_now.serving_stale);
        assert_eq!(fresh.instances[0].address.port(), 2);

        // The follower ends: its entry goes with it.
        drop(step_tx);
        assert!(matches!(stale_watch.changed().await, Err(Error::Closed)));
        assert!(listed(&health).is_empty());
        drop(watch);
    }

    #[tokio::test]
    async fn a_panicking_follower_leaves_no_entry() {
        let health = RegistryHealth::new();
        let subscriptions = Subscriptions::new("test", health.clone());
        let first = subscriptions
            .subscribe("svc", |tx: Publisher| async move {
                let _tx = tx;
                panic!("follower bug");
            })
            .await;
        assert!(matches!(first, Err(Error::Closed)), "{first:?}");
        assert!(listed(&health).is_empty());
    }

    #[tokio::test]
    async fn a_side_failure_published_with_every_view_counts_once() {
        let health = RegistryHealth::new();
        let (tx, mut rx) = watch::channel(ServiceSnapshot::default());
        let publisher = Publisher::new(tx, health.subscription("test", "svc"));
        publisher.publish_instances(instance(1));
        rx.borrow_and_update();

        let lease_watch_down = Arc::new(Error::Closed);
        publisher.publish_view(instance(1), Some(&lease_watch_down), Cause::Local);
        assert!(rx.has_changed().unwrap(), "the error is news");
        rx.borrow_and_update();
        // The same failure again, with the same set: no news, no new error.
        publisher.publish_view(instance(1), Some(&lease_watch_down), Cause::Local);
        assert!(!rx.has_changed().unwrap());
        // A change while it lasts: news, still the one failure.
        publisher.publish_view(instance(2), Some(&lease_watch_down), Cause::Backend);
        assert!(rx.has_changed().unwrap());
        let shown = rx.borrow_and_update().clone();
        assert!(Arc::ptr_eq(
            shown.last_error.as_ref().unwrap(),
            &lease_watch_down
        ));
        let failing = &listed(&health)[0];
        assert_eq!((failing.errors, failing.instances), (1, 1));
        assert!(failing.serving_stale);

        // Another failure (the restarted watch failed again): counted.
        publisher.publish_view(instance(2), Some(&Arc::new(Error::Closed)), Cause::Local);
        assert_eq!(listed(&health)[0].errors, 2);
        publisher.publish_view(instance(2), None, Cause::Backend);
        assert!(rx.borrow_and_update().last_error.is_none());
        let recovered = &listed(&health)[0];
        assert!(!recovered.serving_stale);
        assert_eq!(recovered.errors, 2);
    }
}
