//! Resolution from ZooKeeper: a persistent recursive watch on the service's
//! node, set before the service is listed, and a new listing after every
//! reconnection.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

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

/// How many distinct instance nodes one run of a watch's events may name
/// before the service is listed again instead of reading each of them.
const MAX_CHANGED_NODES: usize = 256;

/// How many queued events one run takes at most, so that events arriving
/// as fast as they are taken still let the changed nodes be read.
const MAX_EVENTS_PER_RUN: usize = 4096;

/// Resolves services registered by
/// [`ZooKeeperRegistry`](super::ZooKeeperRegistry) (or anything writing the
/// same [node layout](super)).
///
/// Each service is watched with one persistent recursive watch (ZooKeeper
/// 3.6+) on `<prefix>/<service>`, set before the service is listed, so that
/// no change falls between the two. Changes reach subscribers as ZooKeeper
/// reports them: the instance nodes named by the events received so far
/// are read again together, each once (above 256 of them, the service is
/// listed again instead), so a churning service costs a few requests per
/// burst of changes. After each reconnection the service is listed again, since
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
            service: service.into(),
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
    /// The service followed: every instance decoded shares this name.
    service: Arc<str>,
    /// `<prefix>/<service>`.
    path: String,
    request_timeout: Duration,
    max_backoff: Duration,
    /// Instances by node name. Listings replace it and events change the
    /// nodes they name, so it holds at most what the service node holds.
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
            if !tx.retry_after(error, &mut backoff).await {
                return;
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
        let mut watcher = match self.watch(&client).await {
            Ok(watcher) => watcher,
            Err(error) => return error,
        };
        if let Err(error) = self.list(&client).await {
            return error;
        }
        tx.publish_instances(self.shown());
        backoff.reset();
        loop {
            // The watcher panics if asked again after the session's end:
            // `next_changes` stops at a session event, and every terminal
            // state returns below.
            let (changes, session) = self.next_changes(&mut watcher).await;
            let Some(event) = session else {
                match self.apply(&client, changes).await {
                    Ok(true) => tx.publish_instances(self.shown()),
                    Ok(false) => {}
                    Err(error) => return error,
                }
                continue;
            };
            // A listing follows every session event (after the
            // reconnection, or after the session's end, once a new one is
            // open): it covers the changes taken with it, unread.
            match event.session_state {
                zk::SessionState::Disconnected => tx.publish_error(Error::backend(
                    BACKEND,
                    "connection to ZooKeeper lost; reconnecting",
                )),
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    // ZooKeeper drops a connection's watches with it.
                    // zookeeper-client 0.11 sets persistent watches again
                    // on the new connection in principle, but leaves them
                    // out of its request, so the watch is added again here
                    // (replacing the old watcher only once the new one is
                    // set). Either way the events of the disconnection are
                    // lost (ZOOKEEPER-4698): list again.
                    watcher = match self.watch(&client).await {
                        Ok(watcher) => watcher,
                        Err(error) => return error,
                    };
                    if let Err(error) = self.list(&client).await {
                        return error;
                    }
                    // Also when the listing found nothing new: it clears
                    // the error the disconnection published.
                    tx.publish_instances(self.shown());
                }
                ended => {
                    return Error::backend(BACKEND, format!("ZooKeeper session {ended}"));
                }
            }
        }
    }

    /// Sets the persistent recursive watch on the service node.
    async fn watch(&self, client: &zk::Client) -> Result<zk::PersistentWatcher> {
        let watch = client.watch(&self.path, zk::AddWatchMode::PersistentRecursive);
        within(self.request_timeout, watch)
            .await?
            .map_err(|error| zk_error("watch", &self.path, error))
    }

    /// Waits for the watch's next event, then takes every event it has
    /// already received: the instance nodes they name, and the session
    /// event that ended the run, if one did.
    ///
    /// zookeeper-client queues a watch's events without bound; taking them
    /// all at once and reading each changed node once per run keeps that
    /// queue short however fast the service churns.
    async fn next_changes(
        &self,
        watcher: &mut zk::PersistentWatcher,
    ) -> (Changes, Option<zk::WatchedEvent>) {
        let mut changes = Changes::default();
        let mut event = watcher.changed().await;
        let mut taken = 1;
        loop {
            if event.event_type == zk::EventType::Session {
                return (changes, Some(event));
            }
            // Every node event of a recursive watch (created, changed,
            // deleted) names a node to read again.
            changes.note(&self.path, &event.path);
            if taken == MAX_EVENTS_PER_RUN {
                return (changes, None);
            }
            event = tokio::select! {
                biased;
                // Cancel-safe: an event not taken stays queued.
                event = watcher.changed() => event,
                () = std::future::ready(()) => return (changes, None),
            };
            taken += 1;
        }
    }

    /// Reads the nodes `changes` names again (or the whole service, if
    /// they were too many); returns whether the set changed.
    async fn apply(&mut self, client: &zk::Client, changes: Changes) -> Result<bool> {
        if changes.overflowed {
            let listed = self.listing(client).await?;
            let changed = listed != self.instances;
            self.instances = listed;
            return Ok(changed);
        }
        let mut changed = false;
        for (name, instance) in self.read(client, changes.names).await? {
            changed |= match instance {
                Some(instance) => {
                    let previous = self.instances.insert(name, instance.clone());
                    previous.as_deref() != Some(&*instance)
                }
                // Deleted, or rewritten with what is no instance.
                None => self.instances.remove(&name).is_some(),
            };
        }
        Ok(changed)
    }

    fn shown(&self) -> Vec<Arc<Instance>> {
        self.instances.values().cloned().collect()
    }

    /// Replaces the instances with a listing of the service.
    async fn list(&mut self, client: &zk::Client) -> Result<()> {
        self.instances = self.listing(client).await?;
        Ok(())
    }

    /// Reads every instance node of the service.
    async fn listing(&self, client: &zk::Client) -> Result<HashMap<String, Arc<Instance>>> {
        let children = match within(self.request_timeout, client.list_children(&self.path)).await? {
            Ok(children) => children,
            // No instance was ever registered (or the chroot is missing).
            Err(zk::Error::NoNode) => Vec::new(),
            Err(error) => return Err(zk_error("list", &self.path, error)),
        };
        let instances: HashMap<_, _> = self
            .read(client, children)
            .await?
            .into_iter()
            .filter_map(|(name, instance)| Some((name, instance?)))
            .collect();
        debug!(path = %self.path, count = instances.len(), "listed ZooKeeper");
        Ok(instances)
    }

    /// Reads the instance nodes `names`, [`READ_BATCH`] per request: each
    /// with its instance, or `None` if it is gone, unreadable or holds no
    /// instance (skipped with a warning).
    async fn read(
        &self,
        client: &zk::Client,
        names: impl IntoIterator<Item = String>,
    ) -> Result<Vec<(String, Option<Arc<Instance>>)>> {
        let mut read = Vec::new();
        let mut names = names.into_iter().peekable();
        while names.peek().is_some() {
            let mut reader = client.new_multi_reader();
            let mut asked = Vec::with_capacity(READ_BATCH);
            for name in names.by_ref().take(READ_BATCH) {
                let path = format!("{}/{name}", self.path);
                match reader.add_get_data(&path) {
                    Ok(()) => asked.push((name, path)),
                    Err(error) => {
                        warn!(%path, %error, "skipping a ZooKeeper node the client cannot read");
                        read.push((name, None));
                    }
                }
            }
            let results = within(self.request_timeout, reader.commit())
                .await?
                .map_err(|error| zk_error("read", &self.path, error))?;
            for ((name, path), result) in asked.into_iter().zip(results) {
                let instance = match result {
                    zk::MultiReadResult::Data { data, .. } => {
                        crate::stored_instance::decode_or_warn(BACKEND, &self.service, &path, &data)
                    }
                    // Deleted since it was listed or changed.
                    zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => None,
                    zk::MultiReadResult::Error { err } => {
                        warn!(%path, error = %err, "skipping a ZooKeeper node that cannot be read");
                        None
                    }
                    // Children were not asked for.
                    _ => None,
                };
                read.push((name, instance));
            }
        }
        Ok(read)
    }
}

/// What one run of a watch's events changed: the distinct instance nodes
/// (direct children of the service node) they name, up to
/// [`MAX_CHANGED_NODES`]; beyond that, the whole service is listed again
/// instead, so that a run never holds more than that many names.
#[derive(Debug, Default)]
struct Changes {
    names: HashSet<String>,
    overflowed: bool,
}

impl Changes {
    /// Notes that the node at `path` changed, below the watch on
    /// `service_path`. The service node itself and deeper nodes are no
    /// instance nodes: left out at once.
    fn note(&mut self, service_path: &str, path: &str) {
        let Some(name) = child_name(service_path, path) else {
            return;
        };
        if self.overflowed || self.names.contains(name) {
            return;
        }
        if self.names.len() == MAX_CHANGED_NODES {
            self.overflowed = true;
            self.names = HashSet::new();
        } else {
            self.names.insert(name.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_distinct_instance_nodes_up_to_the_cap() {
        let service = "/registry-ext/echo";
        let mut changes = Changes::default();
        // Created, written, deleted: one node to read again.
        for _ in 0..3 {
            changes.note(service, "/registry-ext/echo/10.0.0.7:80");
        }
        // The service node, deeper nodes, and other services name none.
        changes.note(service, service);
        changes.note(service, "/registry-ext/echo/a/b");
        changes.note(service, "/registry-ext/echoes/x");
        assert_eq!(changes.names, HashSet::from(["10.0.0.7:80".to_owned()]));
        assert!(!changes.overflowed);

        for i in 1..MAX_CHANGED_NODES {
            changes.note(service, &format!("{service}/n{i}"));
        }
        assert_eq!(changes.names.len(), MAX_CHANGED_NODES);
        assert!(!changes.overflowed, "the cap itself is read node by node");
        changes.note(service, &format!("{service}/n1"));
        assert!(!changes.overflowed, "a node named again is no new one");
        changes.note(service, &format!("{service}/one-more"));
        assert!(changes.overflowed, "one past the cap: list the service");
        assert!(changes.names.is_empty(), "no names kept once listing");
        changes.note(service, &format!("{service}/more"));
        assert!(changes.names.is_empty());
    }
}
