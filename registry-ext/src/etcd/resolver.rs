//! Resolution from etcd: one prefix list, then a watch from the next revision,
//! resumed from the last seen revision when it breaks.

use std::{collections::HashMap, sync::Arc, time::Duration};

use etcd_client::{Client, GetOptions, KvClient, WatchClient, WatchOptions};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{service_prefix, with_retry, EtcdBuilder};
use crate::{
    health::RegistryHealth,
    kit::{Backoff, Publisher, Subscriptions},
    Error, Instance, Resolver, Result, ServiceWatch,
};

/// Resolves services registered by [`EtcdRegistry`](super::EtcdRegistry)
/// (or anything writing the same [key layout](super)).
///
/// Each service is listed once, then watched: changes reach subscribers as
/// soon as etcd reports them. When etcd is unreachable the last known
/// instances stay in place and the error is reported in
/// [`ServiceSnapshot::last_error`](crate::ServiceSnapshot::last_error).
///
/// # Data loss
///
/// An etcd that lost its data (restored from nothing, or replaced by another
/// cluster behind the same endpoints) is recognized by its revision going
/// backwards or by a different cluster id in its response headers. The
/// service is then listed again; since the registries need a moment to
/// write their registrations again, an empty listing is not published at
/// once: the last known instances stay until some instance is registered
/// again (that set is then published as soon as etcd reports it) or until
/// the [grace period](EtcdBuilder::data_loss_grace) passes (default
/// [`DEFAULT_DATA_LOSS_GRACE`](super::DEFAULT_DATA_LOSS_GRACE), one default
/// lease TTL), after which the service is shown empty if it still is.
/// Deletions seen in normal operation are published at once.
///
/// ```no_run
/// use rpc_ext_registry::{etcd::EtcdResolver, Resolver};
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let resolver = EtcdResolver::builder(["http://127.0.0.1:2379"]).build().await?;
/// let mut watch = resolver.subscribe("echo").await?;
/// loop {
///     let snapshot = watch.changed().await?;
///     println!("echo is now at {:?}", snapshot.instances);
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct EtcdResolver {
    shared: Arc<Shared>,
}

struct Shared {
    clients: Arc<Clients>,
    prefix: Arc<str>,
    request_timeout: Duration,
    max_backoff: Duration,
    data_loss_grace: Duration,
    subscriptions: Subscriptions,
    health: RegistryHealth,
}

impl std::fmt::Debug for EtcdResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdResolver")
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdResolver {
    /// Starts building a resolver that talks to `endpoints`.
    pub fn builder<E: AsRef<str>>(endpoints: impl IntoIterator<Item = E>) -> EtcdBuilder<Self> {
        EtcdBuilder::new(endpoints)
    }

    pub(crate) fn new(client: Client, builder: EtcdBuilder<Self>) -> Self {
        let health = builder.health.clone().unwrap_or_default();
        Self {
            shared: Arc::new(Shared {
                clients: Arc::new(Clients {
                    kv: client.kv_client(),
                    watch: client.watch_client(),
                }),
                prefix: builder.prefix_arc(),
                request_timeout: builder.request_timeout,
                max_backoff: builder.max_backoff,
                data_loss_grace: builder.data_loss_grace,
                subscriptions: Subscriptions::new(super::BACKEND, health.clone()),
                health,
            }),
        }
    }

    /// The health of this resolver's subscriptions (shared by its clones):
    /// per followed service, the instances shown, the age of etcd's last
    /// answer, watch restarts, errors, and whether the last known set is
    /// served while etcd is unreachable. See [`health`](crate::health).
    #[must_use]
    pub fn health(&self) -> RegistryHealth {
        self.shared.health.clone()
    }
}

impl Resolver for EtcdResolver {
    async fn subscribe(&self, service: &str) -> Result<ServiceWatch> {
        let follower = ServiceFollower {
            clients: self.shared.clients.clone(),
            service: service.into(),
            prefix: service_prefix(&self.shared.prefix, service),
            request_timeout: self.shared.request_timeout,
            max_backoff: self.shared.max_backoff,
            instances: HashMap::new(),
            revision: None,
            last_revision: None,
            cluster_id: None,
            data_loss_grace: self.shared.data_loss_grace,
            holding_until: None,
        };
        self.shared
            .subscriptions
            .subscribe(service, |tx| follower.run(tx))
            .await
    }
}

/// The two etcd clients a resolver's followers use, shared by all of them:
/// a whole `Client` is 3.5 KB (eight clients), these two 800 bytes, and a
/// follower holds only an `Arc` of them. Not the resolver's `Shared`, whose
/// cache of subscriptions would then be kept alive by its own followers.
struct Clients {
    kv: KvClient,
    watch: WatchClient,
}

/// The state of one service's watch.
///
/// A resolver runs one per service, each in a task of its own, so what a
/// task holds while it waits for events is paid for every service: the
/// clients are shared ([`Clients`]), and the list and the watch request are
/// boxed (see [`follow`](Self::follow)).
struct ServiceFollower {
    clients: Arc<Clients>,
    /// The service followed: every instance decoded shares this name.
    service: Arc<str>,
    prefix: String,
    request_timeout: Duration,
    max_backoff: Duration,
    /// Instances by etcd key, less the `prefix` every key starts with (the
    /// address, in the registry's layout): one entry per instance shown.
    instances: HashMap<Box<[u8]>, Arc<Instance>>,
    /// The revision `instances` reflects; `None` until listed, or after a
    /// compaction or data loss made it useless.
    revision: Option<i64>,
    /// The newest revision seen from the current store (kept across
    /// compactions, unlike `revision`), to tell a younger store.
    last_revision: Option<i64>,
    /// The id of the etcd cluster `instances` came from, once known.
    cluster_id: Option<u64>,
    /// How long the last known instances are kept after data loss.
    data_loss_grace: Duration,
    /// Set after data loss: until then (or until some instance is back),
    /// an empty instance set is not published; subscribers keep the last
    /// set published before the loss.
    holding_until: Option<Instant>,
}

/// What a response header says about the store `instances` came from.
#[derive(Debug, PartialEq, Eq)]
enum HeaderCheck {
    Same,
    /// Another cluster answers (its id differs from the one seen before).
    ClusterChanged {
        from: u64,
        to: u64,
    },
    /// The revision went backwards: the store is younger than what we saw.
    RevisionBack {
        from: i64,
        to: i64,
    },
}

/// Compares a response header (`cluster_id`, `revision`) with what was seen
/// before. A cluster id of 0 means "not reported" and is not compared; the
/// revision is compared only when `known_revision` is given (a watch may
/// legitimately start at a future revision, a list may not go back).
fn check_header(
    known_cluster: Option<u64>,
    known_revision: Option<i64>,
    cluster_id: u64,
    revision: i64,
) -> HeaderCheck {
    match known_cluster {
        Some(from) if cluster_id != 0 && from != cluster_id => {
            return HeaderCheck::ClusterChanged {
                from,
                to: cluster_id,
            }
        }
        _ => {}
    }
    match known_revision {
        Some(from) if revision < from => HeaderCheck::RevisionBack { from, to: revision },
        _ => HeaderCheck::Same,
    }
}

impl std::fmt::Display for HeaderCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Same => f.write_str("same store"),
            Self::ClusterChanged { from, to } => {
                write!(f, "etcd cluster id changed from {from:x} to {to:x}")
            }
            Self::RevisionBack { from, to } => {
                write!(f, "etcd revision went back from {from} to {to}")
            }
        }
    }
}

impl ServiceFollower {
    async fn run(mut self, tx: Publisher) {
        let mut backoff = Backoff::new(Duration::from_millis(50), self.max_backoff);
        loop {
            let error = tokio::select! {
                () = tx.closed() => return,
                error = self.follow(&tx, &mut backoff) => error,
            };
            warn!(prefix = %self.prefix, %error, "etcd watch interrupted; keeping last known instances");
            if !tx.retry_after(error, &mut backoff).await {
                return;
            }
        }
    }

    /// Lists if needed, then applies watch events until something breaks.
    ///
    /// The list and the watch request are boxed: inline, their futures
    /// (tonic's request state, retries) would set the size of the state
    /// this task keeps for as long as it watches; boxed, they take memory
    /// only while they run.
    async fn follow(&mut self, tx: &Publisher, backoff: &mut Backoff) -> Error {
        let revision = match self.revision {
            Some(revision) => revision,
            None => match Box::pin(self.list()).await {
                Ok(revision) => {
                    self.publish(tx);
                    revision
                }
                Err(error) => return error,
            },
        };
        let holding_until = self.holding_until;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        // One attempt, not `with_retry`: like a watch that breaks later, a
        // failure goes back to `run`, which reports it and tries again (on
        // any member) after a backoff. Retrying here would hide a real
        // outage from subscribers for a whole request timeout.
        let mut client = self.clients.watch.clone();
        let (prefix, timeout) = (self.prefix.clone(), self.request_timeout);
        let watch = Box::pin(async move {
            tokio::time::timeout(timeout, client.watch(prefix, Some(options))).await
        });
        let mut stream = match watch.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return super::etcd_error(error),
            Err(_) => {
                return Error::Timeout {
                    backend: super::BACKEND,
                    timeout: self.request_timeout,
                }
            }
        };
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                () = sleep_until_some(holding_until), if self.holding_until.is_some() => {
                    // The grace period after data loss is over: show the
                    // store as it is, even if empty.
                    self.holding_until = None;
                    self.publish(tx);
                    continue;
                }
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => return Error::backend(super::BACKEND, "watch stream closed"),
                Err(error) => return super::etcd_error(error),
            };
            if response.compact_revision() > 0 {
                self.revision = None;
                return Error::backend(
                    super::BACKEND,
                    format!(
                        "revision {revision} compacted (now {}); listing again",
                        response.compact_revision()
                    ),
                );
            }
            if response.canceled() {
                self.revision = None;
                return Error::backend(
                    super::BACKEND,
                    format!("watch canceled: {}", response.cancel_reason()),
                );
            }
            let (cluster_id, header_revision) = response
                .header()
                .map_or((0, 0), |h| (h.cluster_id(), h.revision()));
            // Only the created answer is compared with the watch's start:
            // later ones carry the revision of their own events.
            let known_revision = response.created().then_some(revision);
            let check = check_header(self.cluster_id, known_revision, cluster_id, header_revision);
            if check != HeaderCheck::Same {
                // The store is not the one we followed: its data was lost.
                self.data_lost();
                return Error::backend(super::BACKEND, format!("{check}; listing again"));
            }
            if cluster_id != 0 {
                self.cluster_id = Some(cluster_id);
            }
            backoff.reset();
            if response.created() && self.holding_until.is_none() {
                // etcd accepted the watch: it is reachable again, and the
                // events missed meanwhile follow in order. (A resume past a
                // compaction is created, then cancelled: the error comes
                // back at once and the follower lists again.) While the
                // last set is held after data loss, it is not what etcd
                // holds: the error stays until `publish` shows etcd's set.
                tx.publish_recovered();
            }
            if self.apply(response.events()) {
                self.publish(tx);
            }
        }
    }

    /// Reads every instance of the service; returns the revision read at.
    async fn list(&mut self) -> Result<i64> {
        let response = with_retry(self.request_timeout, || {
            let mut client = self.clients.kv.clone();
            let prefix = self.prefix.clone();
            async move {
                client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            }
        })
        .await?;
        self.instances = response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let instance = decode(&self.service, kv.key(), kv.value())?;
                Some((self.entry_key(kv.key()).into(), instance))
            })
            .collect();
        let (cluster_id, revision) = response
            .header()
            .map_or((0, 0), |h| (h.cluster_id(), h.revision()));
        // A listing after a compaction or a cancelled watch may already
        // come from a new store.
        let check = check_header(self.cluster_id, self.last_revision, cluster_id, revision);
        if check != HeaderCheck::Same {
            warn!(prefix = %self.prefix, %check, "etcd data lost");
            self.data_lost();
        }
        if cluster_id != 0 {
            self.cluster_id = Some(cluster_id);
        }
        self.revision = Some(revision);
        self.last_revision = Some(revision);
        debug!(prefix = %self.prefix, revision, count = self.instances.len(), "listed etcd");
        Ok(revision)
    }

    /// Applies watch events; returns whether the instance set changed.
    fn apply(&mut self, events: &[etcd_client::Event]) -> bool {
        const PUT: i32 = 0;
        const DELETE: i32 = 1;
        let mut changed = false;
        for event in events {
            let Some(kv) = event.kv() else { continue };
            self.revision = Some(kv.mod_revision().max(self.revision.unwrap_or(0)));
            self.last_revision = self.revision.max(self.last_revision);
            let key = self.entry_key(kv.key());
            // Read the raw type: etcd_client's accessor panics on unknown values.
            match event.0.r#type {
                PUT => match decode(&self.service, kv.key(), kv.value()) {
                    Some(instance) => {
                        let previous = self.instances.insert(key.into(), instance.clone());
                        changed |= previous.as_deref() != Some(&*instance);
                    }
                    // A key overwritten with junk no longer names an instance.
                    None => changed |= self.instances.remove(key).is_some(),
                },
                DELETE => changed |= self.instances.remove(key).is_some(),
                other => {
                    warn!(prefix = %self.prefix, event_type = other, "unknown etcd event type skipped")
                }
            }
        }
        changed
    }

    /// Where `key` is kept in `instances`: without the prefix that every
    /// key listed or watched starts with.
    fn entry_key<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        key.strip_prefix(self.prefix.as_bytes()).unwrap_or(key)
    }

    /// Forgets the store followed so far (it lost its data or was
    /// replaced): the next round lists again, and the last published
    /// instances are held for the grace period.
    fn data_lost(&mut self) {
        self.revision = None;
        self.last_revision = None;
        self.cluster_id = None;
        // A loss during a running grace period does not extend it.
        let now = Instant::now();
        if self.holding_until.is_none_or(|until| until <= now) {
            self.holding_until = Some(now + self.data_loss_grace);
        }
    }

    /// Publishes `instances`, unless data was lost lately and no instance
    /// is back yet (subscribers then keep the last known set).
    fn publish(&mut self, tx: &Publisher) {
        if let Some(until) = self.holding_until {
            if self.instances.is_empty() && Instant::now() < until {
                debug!(prefix = %self.prefix, "etcd empty after data loss; keeping the last known instances");
                return;
            }
            self.holding_until = None;
        }
        tx.publish_instances(self.instances.values().cloned().collect());
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// An etcd key's value as an instance of `service`, or `None` (with a
/// warning) if it does not decode.
fn decode(service: &Arc<str>, key: &[u8], value: &[u8]) -> Option<Arc<Instance>> {
    crate::stored_instance::decode_or_warn(
        super::BACKEND,
        service,
        &String::from_utf8_lossy(key),
        value,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver runs one follower task per service: what the task keeps
    /// while it waits for events is paid 1,000 times for 1,000 services.
    /// Inline, the list and watch requests and a whole `Client` made it
    /// 15–18 KB; boxed and shared, it is 1.3 KB (debug build).
    #[tokio::test]
    async fn a_follower_waiting_for_events_holds_little() {
        // Connects lazily: no etcd needed to build the futures.
        let client = Client::connect(["http://127.0.0.1:1"], None).await.unwrap();
        let follower = ServiceFollower {
            clients: Arc::new(Clients {
                kv: client.kv_client(),
                watch: client.watch_client(),
            }),
            service: "echo".into(),
            prefix: "/registry-ext/echo/".into(),
            request_timeout: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
            instances: HashMap::new(),
            revision: None,
            last_revision: None,
            cluster_id: None,
            data_loss_grace: Duration::from_secs(1),
            holding_until: None,
        };
        let (tx, _rx) = tokio::sync::watch::channel(crate::ServiceSnapshot::default());
        let health = RegistryHealth::new();
        let task = follower.run(Publisher::new(tx, health.subscription("etcd", "echo")));
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "the follower's task state is {size} bytes");
    }

    #[test]
    fn a_changed_cluster_id_alone_is_data_loss() {
        // The revision moved forward (the new cluster saw more writes), so
        // only the cluster id tells the stores apart.
        assert_eq!(
            check_header(Some(0xa), Some(10), 0xb, 50),
            HeaderCheck::ClusterChanged { from: 0xa, to: 0xb }
        );
        assert_eq!(
            check_header(Some(0xa), Some(10), 0xa, 3),
            HeaderCheck::RevisionBack { from: 10, to: 3 }
        );
        assert_eq!(
            check_header(Some(0xa), Some(10), 0xa, 10),
            HeaderCheck::Same
        );
        assert_eq!(check_header(Some(0xa), None, 0xa, 3), HeaderCheck::Same);
        // Nothing known yet, or no id reported: nothing to compare.
        assert_eq!(check_header(None, None, 0xb, 1), HeaderCheck::Same);
        assert_eq!(check_header(Some(0xa), None, 0, 1), HeaderCheck::Same);
    }
}
