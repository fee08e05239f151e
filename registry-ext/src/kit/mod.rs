//! The building blocks every backend here is made of (etcd, Consul,
//! Kubernetes, ZooKeeper), public so that a backend can live in a crate of
//! its own and still behave like these: same health entries, same error
//! states, same adapters.
//!
//! A backend is two halves.
//!
//! **A [`Registry`](crate::Registry).** `register` checks the instance
//! ([`advertise_address`](crate::advertise_address), then
//! [`Instance::validate`](crate::Instance::validate)), writes it, and returns
//! a [`Registration`](crate::Registration) made with
//! [`Registration::new`](crate::Registration::new). That hands back a
//! [`StopSignal`] for a *keeper* task the backend spawns: the keeper renews
//! the entry, writes it again when the backend lost it (after a
//! [`Backoff`]), and when [`StopSignal::wait`] returns, deletes the entry
//! and [replies](Stop::reply). Where other processes may write the same
//! entry (a successor of a restarted instance), the keeper stores a
//! [`registration_id`] in it and deletes only an entry that still holds
//! its own; the example below has one writer per row, so it does not. The keeper
//! records what it goes through on the
//! [`RegistrationProbe`](crate::health::RegistrationProbe) that
//! [`Registration::track`](crate::Registration::track) returns.
//!
//! **A [`Resolver`](crate::Resolver).** It holds a [`Subscriptions`];
//! `subscribe` calls [`Subscriptions::subscribe`] with the *follower* of one
//! service: a task that lists the service, publishes the set through its
//! [`Publisher`], then watches (or polls) and publishes each change. On a
//! failure it publishes the error ([`Publisher::publish_error`], which keeps
//! the last known set), waits a [`Backoff`] delay and starts over
//! ([`Publisher::watch_restarted`]); the next successful list clears the
//! error. It returns once [`Publisher::closed`] resolves. One follower
//! serves every subscriber of a service.
//!
//! The `tests` crate of this repository holds a complete backend built only
//! on this module (instances as files in a directory), which passes the same
//! conformance suite as the backends here. The example below is the
//! smallest whole backend: a table in memory that a keeper renews and a
//! follower polls.
//!
//! ```
//! use std::{collections::BTreeMap, net::SocketAddr, sync::{Arc, Mutex}, time::Duration};
//!
//! use rpc_ext_registry::{
//!     health::RegistryHealth,
//!     kit::{Backoff, Subscriptions},
//!     Error, Instance, Registration, Registry, Resolver, Result, ServiceWatch,
//! };
//!
//! /// The backend's storage; `up: false` makes every request fail.
//! #[derive(Default)]
//! struct Table {
//!     up: bool,
//!     rows: BTreeMap<(Arc<str>, SocketAddr), Instance>,
//! }
//!
//! #[derive(Clone)]
//! struct TableBackend {
//!     table: Arc<Mutex<Table>>,
//!     health: RegistryHealth,
//!     subscriptions: Arc<Subscriptions>,
//! }
//!
//! impl TableBackend {
//!     fn new(table: Arc<Mutex<Table>>) -> Self {
//!         let health = RegistryHealth::new();
//!         let subscriptions = Arc::new(Subscriptions::new("table", health.clone()));
//!         Self { table, health, subscriptions }
//!     }
//!
//!     /// One request to the backend.
//!     fn request<T>(&self, f: impl FnOnce(&mut Table) -> T) -> Result<T> {
//!         let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
//!         if !table.up {
//!             return Err(Error::backend("table", "unavailable"));
//!         }
//!         Ok(f(&mut table))
//!     }
//! }
//!
//! impl Registry for TableBackend {
//!     async fn register(&self, instance: Instance) -> Result<Registration> {
//!         instance.validate()?;
//!         let key = (instance.service.clone(), instance.address);
//!         self.request(|t| t.rows.insert(key.clone(), instance.clone()))?;
//!         let (mut registration, mut stop) = Registration::new(instance.clone());
//!         let probe = registration.track("table", &self.health);
//!         let backend = self.clone();
//!         tokio::spawn(async move {
//!             let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
//!             loop {
//!                 tokio::select! {
//!                     reason = stop.wait() => {
//!                         let deleted = backend.request(|t| { t.rows.remove(&key); });
//!                         return reason.reply(deleted);
//!                     }
//!                     () = tokio::time::sleep(backoff.next_delay()) => {}
//!                 }
//!                 // Renew: write the row again if the backend lost it.
//!                 match backend.request(|t| t.rows.insert(key.clone(), instance.clone())) {
//!                     Ok(Some(_)) => { probe.renewed(); backoff.reset(); }
//!                     Ok(None) => { probe.lost(); probe.reregistered(); backoff.reset(); }
//!                     Err(_) => probe.renewal_failed(),
//!                 }
//!             }
//!         });
//!         Ok(registration)
//!     }
//! }
//!
//! impl Resolver for TableBackend {
//!     async fn subscribe(&self, service: &str) -> Result<ServiceWatch> {
//!         let backend = self.clone();
//!         let name = service.to_owned();
//!         self.subscriptions
//!             .subscribe(service, move |publisher| async move {
//!                 loop {
//!                     let rows = backend.request(|t| {
//!                         t.rows.values().filter(|i| *i.service == *name).cloned().collect::<Vec<_>>()
//!                     });
//!                     match rows {
//!                         Ok(rows) => publisher.publish_instances(rows.into_iter().map(Arc::new).collect()),
//!                         Err(error) => publisher.publish_error(error),
//!                     }
//!                     if !publisher.pause(Duration::from_millis(10)).await {
//!                         return; // every subscriber left
//!                     }
//!                 }
//!             })
//!             .await
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
//! let table = Arc::new(Mutex::new(Table { up: true, ..Table::default() }));
//! let backend = TableBackend::new(table.clone());
//! let mut watch = backend.subscribe("echo").await?;
//! let registration = backend.register(Instance::new("echo", "10.0.0.7:8080".parse().unwrap())).await?;
//! watch.wait_for(|instances| instances.len() == 1).await?;
//!
//! table.lock().unwrap().up = false; // the backend goes down: the set stays, with the error
//! let stale = watch.changed().await?;
//! assert!(stale.last_error.is_some() && stale.instances.len() == 1);
//!
//! *table.lock().unwrap() = Table { up: true, ..Table::default() }; // back, empty: the keeper writes it again
//! let mut back = watch.changed().await?;
//! while back.last_error.is_some() || back.instances.len() != 1 {
//!     back = watch.changed().await?;
//! }
//!
//! registration.deregister().await?;
//! watch.wait_for(|instances| instances.is_empty()).await?;
//! # Ok(()) }
//! ```

mod backoff;
mod subscriptions;

pub use backoff::Backoff;
pub use subscriptions::{Cause, Publisher, Subscriptions};

pub use crate::{
    instance::registration_id,
    registry::{Stop, StopSignal},
};
