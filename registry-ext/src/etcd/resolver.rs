//! Resolution from etcd: one prefix list, then a watch from the next revision,
//! resumed from the last seen revision when it breaks.

use std::{collections::HashMap, sync::Arc, time::Duration};

use etcd_client::{Client, GetOptions, WatchOptions};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{codec::decode_instance, service_prefix, with_retry, EtcdBuilder};
use crate::{
    backend::{
        backoff::Backoff,
        subscriptions::{publish_error, publish_instances, publish_recovered, Subscriptions},
    },
    Error, Instance, Resolver, Result, ServiceSnapshot, ServiceWatch,
};

/// Resolves services registered by [`EtcdRegistry`](super::EtcdRegistry)
/// (or anything writing the same [key layout](super)).
///
/// Each service is listed once, then watched: changes reach subscribers as
/// soon as etcd reports them. When etcd is unreachable the last known
/// instances stay in place and the error is reported in
/// [`ServiceSnapshot::last_error`].
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
    client: Client,
    prefix: Arc<str>,
    request_timeout: Duration,
    max_backoff: Duration,
    subscriptions: Subscriptions,
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
        Self {
            shared: Arc::new(Shared {
                client,
                prefix: builder.prefix_arc(),
                request_timeout: builder.request_timeout,
                max_backoff: builder.max_backoff,
                subscriptions: Subscriptions::default(),
            }),
        }
    }
}

impl Resolver for EtcdResolver {
    async fn subscribe(&self, service: &str) -> Result<ServiceWatch> {
        let follower = ServiceFollower {
            client: self.shared.client.clone(),
            prefix: service_prefix(&self.shared.prefix, service),
            request_timeout: self.shared.request_timeout,
            max_backoff: self.shared.max_backoff,
            instances: HashMap::new(),
            revision: None,
        };
        self.shared
            .subscriptions
            .subscribe(service, |tx| follower.run(tx))
            .await
    }
}

/// The state of one service's watch.
struct ServiceFollower {
    client: Client,
    prefix: String,
    request_timeout: Duration,
    max_backoff: Duration,
    /// Instances by etcd key.
    instances: HashMap<Vec<u8>, Arc<Instance>>,
    /// The revision `instances` reflects; `None` until listed, or after a
    /// compaction or data loss made it useless.
    revision: Option<i64>,
}

impl ServiceFollower {
    async fn run(mut self, tx: watch::Sender<ServiceSnapshot>) {
        let mut backoff = Backoff::new(Duration::from_millis(50), self.max_backoff);
        loop {
            let error = tokio::select! {
                () = tx.closed() => return,
                error = self.follow(&tx, &mut backoff) => error,
            };
            warn!(prefix = %self.prefix, %error, "etcd watch interrupted; keeping last known instances");
            publish_error(&tx, error);
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Lists if needed, then applies watch events until something breaks.
    async fn follow(
        &mut self,
        tx: &watch::Sender<ServiceSnapshot>,
        backoff: &mut Backoff,
    ) -> Error {
        let revision = match self.revision {
            Some(revision) => revision,
            None => match self.list().await {
                Ok(revision) => {
                    self.publish(tx);
                    revision
                }
                Err(error) => return error,
            },
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        // One attempt, not `with_retry`: like a watch that breaks later, a
        // failure goes back to `run`, which reports it and tries again (on
        // any member) after a backoff. Retrying here would hide a real
        // outage from subscribers for a whole request timeout.
        let mut client = self.client.clone();
        let watch = client.watch(self.prefix.clone(), Some(options));
        let mut stream = match tokio::time::timeout(self.request_timeout, watch).await {
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
            let response = match stream.message().await {
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
            let header_revision = response.header().map_or(0, |h| h.revision());
            if response.created() && header_revision < revision {
                // The store is younger than what we saw: its data was lost.
                self.revision = None;
                return Error::backend(
                    super::BACKEND,
                    format!("etcd revision went back from {revision} to {header_revision}; listing again"),
                );
            }
            backoff.reset();
            if response.created() {
                // etcd accepted the watch: it is reachable again, and the
                // events missed meanwhile follow in order. (A resume past a
                // compaction is created, then cancelled: the error comes
                // back at once and the follower lists again.)
                publish_recovered(tx);
            }
            if self.apply(response.events()) {
                self.publish(tx);
            }
        }
    }

    /// Reads every instance of the service; returns the revision read at.
    async fn list(&mut self) -> Result<i64> {
        let response = with_retry(self.request_timeout, || {
            let mut client = self.client.clone();
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
                self.decode(kv.key(), kv.value())
                    .map(|instance| (kv.key().to_vec(), instance))
            })
            .collect();
        let revision = response.header().map_or(0, |h| h.revision());
        self.revision = Some(revision);
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
            // Read the raw type: etcd_client's accessor panics on unknown values.
            match event.0.r#type {
                PUT => match self.decode(kv.key(), kv.value()) {
                    Some(instance) => {
                        let previous = self.instances.insert(kv.key().to_vec(), instance.clone());
                        changed |= previous.as_deref() != Some(&*instance);
                    }
                    // A key overwritten with junk no longer names an instance.
                    None => changed |= self.instances.remove(kv.key()).is_some(),
                },
                DELETE => changed |= self.instances.remove(kv.key()).is_some(),
                other => {
                    warn!(prefix = %self.prefix, event_type = other, "unknown etcd event type skipped")
                }
            }
        }
        changed
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Option<Arc<Instance>> {
        let key = String::from_utf8_lossy(key);
        match decode_instance(&key, value) {
            Ok(instance) => Some(Arc::new(instance)),
            Err(error) => {
                warn!(%error, "skipping malformed etcd value");
                None
            }
        }
    }

    fn publish(&self, tx: &watch::Sender<ServiceSnapshot>) {
        publish_instances(tx, self.instances.values().cloned().collect());
    }
}
