//! Resolution from ZooKeeper: a persistent recursive watch on the service's
//! node, set before the service is listed, and a new listing after every
//! reconnection.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tracing::{debug, warn};
use zookeeper_client as zk;

use super::{
    path::{check_service, child_name, service_path},
    session::SessionSource,
    within, zk_error, ZooKeeperBuilder, BACKEND,
};
use crate::{
    health::RegistryHealth,
    kit::{Backoff, Publisher, Subscriptions},
    Error, Instance, Resolver, Result, ServiceWatch,
};

/// How many instance nodes one multi-read asks for: a listing is a few
/// round trips even for large services, and no answer grows with the
/// service beyond this many values.
const READ_BATCH: usize = 64;

/// Resolves services registered by
/// [`ZooKeeperRegistry`](super::ZooKeeperRegistry) (or anything writing the
/// same [node layout](super)).
///
/// Each service is watched with one persistent recursive watch (ZooKeeper
/// 3.6+) on `<prefix>/<service>`, set before the service is listed, so that
/// no change falls between the two. Changes reach subscribers as ZooKeeper
/// reports them. After each reconnection the service is listed again, since
/// a persistent watch misses the events of the time it was disconnected
/// (ZOOKEEPER-4698). While ZooKeeper is unreachable, the last known
/// instances stay in place and the error is reported in
/// [`ServiceSnapshot::last_error`](crate::ServiceSnapshot::last_error).
/// After the session expired, a new one is opened and the service is
/// listed again.
///
/// A node whose value does not decode is skipped with a warning, as is one
/// the resolver may not read (its ACL): the service's other instances are
/// still shown.
///
/// ```no_run
/// use rpc_ext_registry::{zookeeper::ZooKeeperResolver, Resolver};
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let resolver = ZooKeeperResolver::builder("127.0.0.1:2181").build().await?;
/// let mut watch = resolver.subscribe("echo").await?;
/// loop {
///     let snapshot = watch.changed().await?;
///     println!("echo is now at {:?}", snapshot.instances);
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct ZooKeeperResolver {
    shared: Arc<Shared>,
}

struct Shared {
    /// Shared with the followers, which must not hold `Shared`: it holds
    /// their subscriptions, so they would never see them all gone.
    sessions: Arc<SessionSource>,
    prefix: String,
    request_timeout: Duration,
    max_backoff: Duration,
    subscriptions: Subscriptions,
    health: RegistryHealth,
}

impl std::fmt::Debug for ZooKeeperResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperResolver")
            .field("sessions", &self.shared.sessions)
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

impl ZooKeeperResolver {
    /// Starts building a resolver that talks to the servers of
    /// `connect_string` (`host:port[,host:port...][/chroot]`).
    pub fn builder(connect_string: impl Into<String>) -> ZooKeeperBuilder<Self> {
        ZooKeeperBuilder::new(connect_string)
    }

    pub(super) fn new(builder: ZooKeeperBuilder<Self>) -> Result<Self> {
        let health = builder.health.clone().unwrap_or_default();
        Ok(Self {
            shared: Arc::new(Shared {
                sessions: Arc::new(builder.sessions()?),
                prefix: builder.checked_prefix()?,
                request_timeout: builder.request_timeout,
                max_backoff: builder.max_backoff,
                subscriptions: Subscriptions::new(BACKEND, health.clone()),
                health,
            }),
        })
    }

    /// The health of this resolver's subscriptions (shared by its clones):
    /// per followed service, the instances shown, the age of ZooKeeper's
    /// last answer, watch restarts, errors, and whether the last known set
    /// is served while ZooKeeper is unreachable. See
    /// [`health`](crate::health).
    #[must_use]
    pub fn health(&self) -> RegistryHealth {
        self.shared.health.clone()
    }
}

impl Resolver for ZooKeeperResolver {
    async fn subscribe(&self, service: &str) -> Result<ServiceWatch> {
        check_service(&self.shared.prefix, service)?;
        let follower = ServiceFollower {
            sessions: self.shared.sessions.clone(),
            path: service_path(&self.shared.prefix, service),
            request_timeout: self.shared.request_timeout,
            max_backoff: self.shared.max_backoff,
            instances: HashMap::new(),
        };
        self.shared
            .subscriptions
            .subscribe(service, |tx| follower.run(tx))
            .await
    }
}

/// The state of one service's watch.
struct ServiceFollower {
    sessions: Arc<SessionSource>,
    /// `<prefix>/<service>`.
    path: String,
    request_timeout: Duration,
    max_backoff: Duration,
    /// Instances by node name. Listings replace it and events change one
    /// node at a time, so it holds at most what the service node holds.
    instances: HashMap<String, Arc<Instance>>,
}

impl ServiceFollower {
    async fn run(mut self, tx: Publisher) {
        let mut backoff = Backoff::new(Duration::from_millis(50), self.max_backoff);
        loop {
            let error = tokio::select! {
                () = tx.closed() => return,
                error = self.follow(&tx, &mut backoff) => error,
            };
            warn!(path = %self.path, %error, "ZooKeeper watch interrupted; keeping last known instances");
            tx.publish_error(error);
            tx.watch_restarted();
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Watches, lists, then applies events until the session ends or a
    /// request fails.
    async fn follow(&mut self, tx: &Publisher, backoff: &mut Backoff) -> Error {
        let client = match self.sessions.client().await {
            Ok(client) => client,
            Err(error) => return error,
        };
        let watch = client.watch(&self.path, zk::AddWatchMode::PersistentRecursive);
        let mut watcher = match within(self.request_timeout, watch).await {
            Ok(Ok(watcher)) => watcher,
            Ok(Err(error)) => return zk_error("watch", &self.path, error),
            Err(error) => return error,
        };
        if let Err(error) = self.list(&client).await {
            return error;
        }
        tx.publish_instances(self.shown());
        backoff.reset();
        loop {
            // The watcher panics if asked again after the session's end:
            // every terminal state returns below.
            let event = watcher.changed().await;
            let changed = match event.event_type {
                zk::EventType::Session => match event.session_state {
                    zk::SessionState::Disconnected => {
                        tx.publish_error(Error::backend(
                            BACKEND,
                            "connection to ZooKeeper lost; reconnecting",
                        ));
                        continue;
                    }
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        // ZooKeeper drops a connection's watches with it.
                        // zookeeper-client 0.11 sets persistent watches
                        // again on the new connection in principle, but
                        // leaves them out of its request, so the watch is
                        // added again here (replacing the old watcher only
                        // once the new one is set). Either way the events
                        // of the disconnection are lost (ZOOKEEPER-4698):
                        // list again.
                        watcher = match within(
                            self.request_timeout,
                            client.watch(&self.path, zk::AddWatchMode::PersistentRecursive),
                        )
                        .await
                        {
                            Ok(Ok(watcher)) => watcher,
                            Ok(Err(error)) => return zk_error("watch", &self.path, error),
                            Err(error) => return error,
                        };
                        if let Err(error) = self.list(&client).await {
                            return error;
                        }
                        true
                    }
                    ended => {
                        return Error::backend(BACKEND, format!("ZooKeeper session {ended}"));
                    }
                },
                zk::EventType::NodeCreated | zk::EventType::NodeDataChanged => {
                    match child_name(&self.path, &event.path) {
                        Some(name) => match self.read(&client, name).await {
                            Ok(changed) => changed,
                            Err(error) => return error,
                        },
                        None => false,
                    }
                }
                zk::EventType::NodeDeleted => child_name(&self.path, &event.path)
                    .is_some_and(|name| self.instances.remove(name).is_some()),
                // Not sent to recursive watches.
                zk::EventType::NodeChildrenChanged => false,
            };
            if changed {
                // Also after a listing that found nothing new: it clears
                // the error the disconnection published.
                tx.publish_instances(self.shown());
            }
        }
    }

    fn shown(&self) -> Vec<Arc<Instance>> {
        self.instances.values().cloned().collect()
    }

    /// Reads every instance node of the service.
    async fn list(&mut self, client: &zk::Client) -> Result<()> {
        let children = match within(self.request_timeout, client.list_children(&self.path)).await? {
            Ok(children) => children,
            // No instance was ever registered (or the chroot is missing).
            Err(zk::Error::NoNode) => Vec::new(),
            Err(error) => return Err(zk_error("list", &self.path, error)),
        };
        let mut instances = HashMap::with_capacity(children.len());
        for batch in children.chunks(READ_BATCH) {
            let mut reader = client.new_multi_reader();
            let mut asked = Vec::with_capacity(batch.len());
            for name in batch {
                let path = format!("{}/{name}", self.path);
                match reader.add_get_data(&path) {
                    Ok(()) => asked.push((name, path)),
                    Err(error) => {
                        warn!(%path, %error, "skipping a ZooKeeper node the client cannot read")
                    }
                }
            }
            let results = within(self.request_timeout, reader.commit())
                .await?
                .map_err(|error| zk_error("read", &self.path, error))?;
            for ((name, path), result) in asked.into_iter().zip(results) {
                match result {
                    zk::MultiReadResult::Data { data, .. } => {
                        if let Some(instance) = decode(&path, &data) {
                            instances.insert(name.clone(), instance);
                        }
                    }
                    // Deleted since the listing: its event follows.
                    zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => {}
                    zk::MultiReadResult::Error { err } => {
                        warn!(%path, error = %err, "skipping a ZooKeeper node that cannot be read");
                    }
                    // Children were not asked for.
                    _ => {}
                }
            }
        }
        debug!(path = %self.path, count = instances.len(), "listed ZooKeeper");
        self.instances = instances;
        Ok(())
    }

    /// Reads one instance node again; returns whether the set changed.
    async fn read(&mut self, client: &zk::Client, name: &str) -> Result<bool> {
        let path = format!("{}/{name}", self.path);
        let read = within(self.request_timeout, client.get_data(&path)).await?;
        let instance = match read {
            Ok((data, _)) => decode(&path, &data),
            // Deleted since the event: its deletion event follows.
            Err(zk::Error::NoNode) => None,
            Err(zk::Error::NoAuth) => {
                warn!(%path, "skipping a ZooKeeper node this session may not read");
                None
            }
            Err(error) => return Err(zk_error("read", &path, error)),
        };
        Ok(match instance {
            Some(instance) => {
                let previous = self.instances.insert(name.to_owned(), instance.clone());
                previous.as_deref() != Some(&*instance)
            }
            // A node rewritten with junk no longer names an instance.
            None => self.instances.remove(name).is_some(),
        })
    }
}

fn decode(path: &str, value: &[u8]) -> Option<Arc<Instance>> {
    match crate::stored_instance::decode(path, value) {
        Ok(instance) => Some(Arc::new(instance)),
        Err(error) => {
            warn!(%error, "skipping malformed ZooKeeper value");
            None
        }
    }
}
