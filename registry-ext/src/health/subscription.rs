//! The health of one resolver subscription: the service follower's view
//! and its counters.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{Clock, Listing};
use crate::ServiceSnapshot;

/// One service a resolver follows, as read by
/// [`RegistryHealth::snapshot`](super::RegistryHealth::snapshot).
///
/// Its fields describe what the subscribers'
/// [`ServiceWatch`](crate::ServiceWatch) shows and how the follower got
/// there. The counters only grow, from zero when the follower started. The
/// entry goes away when the follower ends: once the resolver and every
/// watch of the service are dropped, or if it crashed (the next subscribe
/// starts a new follower, with a new entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionHealth {
    /// `etcd`, `consul`, `k8s` or `memory`.
    pub backend: &'static str,
    /// The service (or, for Kubernetes, the target) followed.
    pub service: Arc<str>,
    /// How many instances subscribers are shown now.
    pub instances: usize,
    /// Time since the backend last confirmed the set: a list, an answer or
    /// an event that was published, or (etcd) a watch established again;
    /// an endpoint a Kubernetes resolver drops because its Lease expired is
    /// the resolver's own clock, not an update. `None` until the first
    /// success. A backend confirms a quiet service only as often as it
    /// speaks: a Consul blocking query returns at least every `wait`, but
    /// an etcd watch or a Kubernetes watcher on a service that does not
    /// change stays silent, so there the age grows while all is well;
    /// `serving_stale` is what tells a failure.
    pub last_update_age: Option<Duration>,
    /// Times the follower started over: etcd a new watch (listing first if
    /// needed) after the previous one broke; Consul a query sent again
    /// after a failed one, or from index 0 after the index went backwards;
    /// Kubernetes a new watcher (of the EndpointSlices, or of the
    /// registrations' Leases) after a failure or a port change, and a
    /// re-list kube's watcher makes by itself. A Kubernetes watch that the
    /// API server ends (as it does every few minutes) and that kube's
    /// watcher resumes from its resource version loses nothing and is not
    /// counted.
    pub watch_restarts: u64,
    /// Failures reported to subscribers (each one set
    /// [`ServiceSnapshot::last_error`]).
    pub errors: u64,
    /// The last request to the backend failed and subscribers are kept on
    /// the last known set: `last_error` is set on a snapshot that holds a
    /// set the backend sent. `false` before any set was received (the
    /// subscription then shows no instance and counts `errors`).
    pub serving_stale: bool,
}

/// What the follower of one subscription records, read by snapshots.
#[derive(Debug)]
pub(super) struct SubscriptionCell {
    backend: &'static str,
    service: Arc<str>,
    clock: Clock,
    instances: AtomicUsize,
    /// Nanoseconds since the epoch, plus one; zero for never.
    last_update: AtomicU64,
    watch_restarts: AtomicU64,
    errors: AtomicU64,
    serving_stale: AtomicBool,
}

impl SubscriptionCell {
    pub(super) fn new(backend: &'static str, service: &str, clock: Clock) -> Self {
        Self {
            backend,
            service: service.into(),
            clock,
            instances: AtomicUsize::new(0),
            last_update: AtomicU64::new(0),
            watch_restarts: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            serving_stale: AtomicBool::new(false),
        }
    }

    pub(super) fn read(&self, now: Instant) -> SubscriptionHealth {
        let last_update = self.last_update.load(Relaxed);
        SubscriptionHealth {
            backend: self.backend,
            service: self.service.clone(),
            instances: self.instances.load(Relaxed),
            last_update_age: last_update
                .checked_sub(1)
                .map(|nanos| self.clock.age(nanos, now)),
            watch_restarts: self.watch_restarts.load(Relaxed),
            errors: self.errors.load(Relaxed),
            serving_stale: self.serving_stale.load(Relaxed),
        }
    }
}

/// The follower's side of a subscription's entry. Dropping it (the
/// follower ended, or panicked) removes the entry.
#[derive(Debug)]
pub(crate) struct SubscriptionProbe {
    cell: Arc<SubscriptionCell>,
    _listing: Listing,
}

// Only the network backends' followers fail and start over; the in-process
// resolver records what it shows and when.
#[cfg_attr(
    not(any(feature = "etcd", feature = "consul", feature = "k8s")),
    allow(dead_code)
)]
impl SubscriptionProbe {
    pub(super) fn new(cell: Arc<SubscriptionCell>, listing: Listing) -> Self {
        Self {
            cell,
            _listing: listing,
        }
    }

    /// Mirrors what subscribers are shown now. Call it with every snapshot
    /// sent, so that the entry says what the channel holds.
    pub(crate) fn shows(&self, snapshot: &ServiceSnapshot) {
        self.cell.instances.store(snapshot.instances.len(), Relaxed);
        self.cell.serving_stale.store(
            snapshot.last_error.is_some() && snapshot.generation > 0,
            Relaxed,
        );
    }

    /// The backend confirmed the set just now.
    pub(crate) fn confirmed(&self) {
        let now = self.cell.clock.now().saturating_add(1);
        self.cell.last_update.store(now, Relaxed);
    }

    /// A failure was reported to subscribers.
    pub(crate) fn failed(&self) {
        self.cell.errors.fetch_add(1, Relaxed);
    }

    /// The follower starts its watch over.
    pub(crate) fn restarted(&self) {
        self.cell.watch_restarts.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{health::RegistryHealth, Error, Instance};

    fn only(health: &RegistryHealth) -> SubscriptionHealth {
        let mut snapshot = health.snapshot();
        assert_eq!(snapshot.subscriptions.len(), 1, "{snapshot:?}");
        snapshot.subscriptions.remove(0)
    }

    fn set(ports: &[u16], generation: u64) -> ServiceSnapshot {
        let instances = ports
            .iter()
            .map(|port| Arc::new(Instance::new("echo", ([10, 0, 0, 1], *port).into())))
            .collect();
        ServiceSnapshot::new(instances, generation)
    }

    fn failing(mut snapshot: ServiceSnapshot) -> ServiceSnapshot {
        snapshot.last_error = Some(Arc::new(Error::Closed));
        snapshot
    }

    #[tokio::test(start_paused = true)]
    async fn mirrors_the_published_view_and_counts_what_the_follower_went_through() {
        let health = RegistryHealth::new();
        let probe = health.subscription("consul", "echo");
        let fresh = only(&health);
        assert_eq!((fresh.backend, &*fresh.service), ("consul", "echo"));
        assert_eq!(fresh.last_update_age, None, "nothing received yet");
        assert!(!fresh.serving_stale);

        // The first list fails: an error, but no set to serve stale.
        probe.failed();
        probe.shows(&failing(ServiceSnapshot::default()));
        probe.restarted();
        let first_failed = only(&health);
        assert_eq!((first_failed.errors, first_failed.watch_restarts), (1, 1));
        assert!(!first_failed.serving_stale);
        assert_eq!(first_failed.instances, 0);

        probe.shows(&set(&[1, 2], 1));
        probe.confirmed();
        tokio::time::advance(Duration::from_secs(4)).await;
        let serving = only(&health);
        assert_eq!(serving.instances, 2);
        assert_eq!(serving.last_update_age, Some(Duration::from_secs(4)));
        assert!(!serving.serving_stale);

        // The backend goes away: the set is kept, stale.
        probe.failed();
        probe.shows(&failing(set(&[1, 2], 1)));
        let stale = only(&health);
        assert!(stale.serving_stale);
        assert_eq!(stale.instances, 2);
        assert_eq!(stale.errors, 2);
        assert_eq!(
            stale.last_update_age,
            Some(Duration::from_secs(4)),
            "a failure confirms nothing"
        );

        probe.shows(&set(&[1], 2));
        probe.confirmed();
        let recovered = only(&health);
        assert!(!recovered.serving_stale);
        assert_eq!(recovered.instances, 1);
        assert_eq!(recovered.last_update_age, Some(Duration::ZERO));
        assert_eq!((recovered.errors, recovered.watch_restarts), (2, 1));

        drop(probe);
        assert!(health.snapshot().subscriptions.is_empty());
    }
}
