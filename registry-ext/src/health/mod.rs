//! Registry health: what each registration and each resolver subscription of
//! this process is going through, as plain data a metrics exporter turns
//! into series.
//!
//! Every etcd, Consul, Kubernetes and in-process registry and resolver owns
//! a [`RegistryHealth`] handle (its `health()`; the etcd and Consul builders
//! take one with `health(..)`, the Kubernetes registry and resolver with
//! `with_health(..)`, so that several report into one). The backends
//! record into it from the code paths that keep registrations alive and
//! follow services; [`RegistryHealth::snapshot`] reads it. Recording is a
//! few relaxed atomic operations, with no lock held across an await; a lock
//! is taken only when an entry is added or removed and while a snapshot
//! copies the entry list.
//!
//! An exporter reads a snapshot per scrape and writes, per entry, gauges
//! for the state, instances, ages and `serving_stale`, and counters for the
//! counters (they only grow while the entry lives; a new entry starts at
//! zero, as a restarted process would). The labels are the entry's
//! `backend` and `service` (and `address` for registrations): all of them
//! come from what this process registered or subscribed.
//!
//! The entries are bounded by what this process does: one per live
//! [`Registration`](crate::Registration) (removed when it is deregistered or
//! dropped) and one per running service follower of a resolver (removed
//! when the follower ends, after its last subscriber is gone). Nothing read
//! from a backend adds an entry.
//!
//! ```
//! use rpc_ext_registry::{
//!     health::RegistrationState, Instance, MemoryRegistry, Registry, Resolver,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> rpc_ext_registry::Result<()> {
//! let registry = MemoryRegistry::new();
//! let registration = registry
//!     .register(Instance::new("echo", "127.0.0.1:50051".parse().unwrap()))
//!     .await?;
//! let watch = registry.subscribe("echo").await?;
//!
//! let health = registry.health().snapshot();
//! let echo = &health.registrations[0];
//! assert_eq!((echo.backend, &*echo.service), ("memory", "echo"));
//! assert_eq!(echo.state, RegistrationState::Registered);
//! assert_eq!(echo.renewals_failed, 0);
//! let subscription = &health.subscriptions[0];
//! assert_eq!(subscription.instances, 1);
//! assert!(!subscription.serving_stale);
//!
//! registration.deregister().await?;
//! assert!(registry.health().snapshot().registrations.is_empty());
//! # drop(watch); Ok(()) }
//! ```

mod registration;
mod subscription;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use tokio::time::Instant;

use registration::RegistrationCell;
pub use registration::{RegistrationHealth, RegistrationProbe, RegistrationState};
use subscription::SubscriptionCell;
pub use subscription::SubscriptionHealth;
pub(crate) use subscription::SubscriptionProbe;

use crate::Instance;

/// The health of the registrations and subscriptions of one or more
/// registries and resolvers.
///
/// Cloning is cheap and every clone reads and records the same entries.
/// Each backend's registry and resolver hands out its own through
/// `health()`; pass one to several builders (`health(..)`) to read them all
/// at once.
///
/// ```
/// use std::fmt::Write;
/// use rpc_ext_registry::{health::RegistryHealth, Instance, MemoryRegistry, Registry};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = MemoryRegistry::new();
/// let _echo = registry
///     .register(Instance::new("echo", "127.0.0.1:50051".parse().unwrap()))
///     .await?;
///
/// // What an exporter does on each scrape.
/// let health: RegistryHealth = registry.health();
/// let mut text = String::new();
/// for r in health.snapshot().registrations {
///     let labels = format!(
///         "backend=\"{}\",service=\"{}\",address=\"{}\"",
///         r.backend, r.service, r.address
///     );
///     writeln!(text, "renewals_failed{{{labels}}} {}", r.renewals_failed).unwrap();
///     writeln!(text, "state{{{labels},state=\"{}\"}} 1", r.state.as_str()).unwrap();
/// }
/// assert!(text.contains(r#"state{backend="memory",service="echo",address="127.0.0.1:50051",state="registered"} 1"#));
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct RegistryHealth {
    entries: Arc<Entries>,
}

struct Entries {
    /// Time zero of every timestamp kept as nanoseconds in an atomic.
    epoch: Instant,
    next_id: AtomicU64,
    registrations: Mutex<BTreeMap<u64, Arc<RegistrationCell>>>,
    subscriptions: Mutex<BTreeMap<u64, Arc<SubscriptionCell>>>,
}

impl Default for Entries {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            registrations: Mutex::default(),
            subscriptions: Mutex::default(),
        }
    }
}

/// What every entry of a snapshot is read at, as plain data.
///
/// Entries are sorted by backend, service (and address); a registration of
/// the same instance made twice, or the same service followed by two
/// resolvers reporting into one handle, gives two entries with the same
/// names, which an exporter adds up or tells apart as it sees fit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// One entry per live registration.
    pub registrations: Vec<RegistrationHealth>,
    /// One entry per running service follower of a resolver.
    pub subscriptions: Vec<SubscriptionHealth>,
}

impl RegistryHealth {
    /// An empty handle.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every entry now.
    #[must_use]
    pub fn snapshot(&self) -> HealthSnapshot {
        let now = Instant::now();
        // The cells are copied out so that the lists stay locked only for
        // that, not while every entry is read.
        let cells: Vec<_> = lock(&self.entries.registrations)
            .values()
            .cloned()
            .collect();
        let mut registrations: Vec<_> = cells.iter().map(|cell| cell.read(now)).collect();
        registrations.sort_by(|a, b| {
            (a.backend, &a.service, a.address).cmp(&(b.backend, &b.service, b.address))
        });
        let cells: Vec<_> = lock(&self.entries.subscriptions)
            .values()
            .cloned()
            .collect();
        let mut subscriptions: Vec<_> = cells.iter().map(|cell| cell.read(now)).collect();
        subscriptions.sort_by(|a, b| (a.backend, &a.service).cmp(&(b.backend, &b.service)));
        HealthSnapshot {
            registrations,
            subscriptions,
        }
    }

    /// Lists a registration of `instance`; the entry lives as long as the
    /// returned listing, and the keeper records through the probe.
    pub(crate) fn registration(
        &self,
        backend: &'static str,
        instance: &Instance,
    ) -> (Listing, RegistrationProbe) {
        let cell = Arc::new(RegistrationCell::new(
            backend,
            &instance.service,
            instance.address,
            self.clock(),
        ));
        let id = self.next_id();
        lock(&self.entries.registrations).insert(id, cell.clone());
        (
            Listing {
                health: self.clone(),
                id,
                kind: Kind::Registration,
            },
            RegistrationProbe::new(cell),
        )
    }

    /// Lists a subscription of `service`; the entry lives as long as the
    /// returned probe.
    pub(crate) fn subscription(&self, backend: &'static str, service: &str) -> SubscriptionProbe {
        let cell = Arc::new(SubscriptionCell::new(backend, service, self.clock()));
        let id = self.next_id();
        lock(&self.entries.subscriptions).insert(id, cell.clone());
        SubscriptionProbe::new(
            cell,
            Listing {
                health: self.clone(),
                id,
                kind: Kind::Subscription,
            },
        )
    }

    fn clock(&self) -> Clock {
        Clock {
            epoch: self.entries.epoch,
        }
    }

    fn next_id(&self) -> u64 {
        self.entries.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

impl std::fmt::Debug for RegistryHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryHealth")
            .field("registrations", &lock(&self.entries.registrations).len())
            .field("subscriptions", &lock(&self.entries.subscriptions).len())
            .finish()
    }
}

/// A panic elsewhere while a list was locked leaves a map that is still
/// consistent (inserts and removes are single calls), so it is used as is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Registration,
    Subscription,
}

/// Keeps one entry listed; dropping it removes the entry.
#[derive(Debug)]
pub(crate) struct Listing {
    health: RegistryHealth,
    id: u64,
    kind: Kind,
}

impl Drop for Listing {
    fn drop(&mut self) {
        let entries = &self.health.entries;
        match self.kind {
            Kind::Registration => drop(lock(&entries.registrations).remove(&self.id)),
            Kind::Subscription => drop(lock(&entries.subscriptions).remove(&self.id)),
        }
    }
}

/// Instants kept in atomics, as nanoseconds since the handle was made.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch: Instant,
}

impl Clock {
    /// Now, in nanoseconds since the epoch (saturating after 584 years).
    fn now(self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// How long before `now` the instant `nanos` was; zero if a writer
    /// stamped it after `now` was read.
    fn age(self, nanos: u64, now: Instant) -> Duration {
        self.epoch
            .checked_add(Duration::from_nanos(nanos))
            .map_or(Duration::ZERO, |then| now.saturating_duration_since(then))
    }
}
