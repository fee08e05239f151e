//! The task that keeps one registration's node: creates it, watches it,
//! creates it again after a loss, hands it over to a successor, and
//! deletes it on deregistration, only while the registry's session owns it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::time::sleep;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::{registry::Shared, within, zk_error, BACKEND};
use crate::{
    health::RegistrationProbe,
    kit::{Backoff, StopSignal},
    Error, Result,
};

/// What one registration writes.
#[derive(Debug)]
pub(super) struct Node {
    pub(super) path: String,
    pub(super) parent: String,
    pub(super) value: Vec<u8>,
    /// Tells this registration from later ones of the same address in the
    /// registry (see [`Writer`]).
    pub(super) generation: u64,
}

impl Node {
    /// Whether this registration writes its node path: no later
    /// registration of the address in the registry took it over.
    fn writes(&self, writers: &HashMap<String, Writer>) -> bool {
        writers
            .get(&self.path)
            .is_some_and(|w| w.generation == self.generation)
    }
}

/// The registration of this registry that writes a node path, and what it
/// last wrote there.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) generation: u64,
    /// The node's version after this registry's last write to it, while
    /// its session owns the node; a different version means another client
    /// wrote it since.
    pub(super) version: Option<i32>,
}

/// Who holds the node after an attempt to create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// Created now, owned by the session.
    Created,
    /// It was there already, owned by the session, and now holds this
    /// registration's value.
    Ours,
    /// Another session owns it (0: a persistent node); it now holds this
    /// registration's value.
    HeldBy(i64),
    /// A later registration of the address (in this registry or another)
    /// took it over: this one no longer writes or deletes it.
    Superseded,
}

/// Why a registration's round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lapse {
    /// The session is over (expired, closed): a new one is needed.
    SessionEnded,
    /// The node is gone, or another session owns it now.
    NodeGone,
    /// Another client wrote the node.
    NodeChanged,
    /// The node another session held is gone: create it.
    Freed,
    /// A later registration took the address over.
    Superseded,
}

impl Shared {
    fn acls(&self) -> zk::Acls<'static> {
        // `auth::` grants the rights to the user the session authenticated
        // as; without credentials, anyone may read and write.
        if self.sessions.authenticated() {
            zk::Acls::creator_all()
        } else {
            zk::Acls::anyone_all()
        }
    }

    /// Puts back the writer a failed registration replaced.
    pub(super) async fn restore_writer(&self, node: &Node, previous: Option<Writer>) {
        let mut writers = self.writers.lock().await;
        if node.writes(&writers) {
            match previous {
                Some(previous) => writers.insert(node.path.clone(), previous),
                None => writers.remove(&node.path),
            };
        }
    }

    /// Writes the node unless a later registration of the address took it
    /// over: creates it, or finds out who holds it and puts this
    /// registration's value in it.
    pub(super) async fn claim(&self, client: &zk::Client, node: &Node) -> Result<Claim> {
        // Each retry follows a change by someone else between two requests
        // (the node deleted, created or written meanwhile); this many in a
        // row is a node being rewritten continuously, reported as a failure.
        const ATTEMPTS: usize = 3;
        let mut writers = self.writers.lock().await;
        let Some(writer) = writers
            .get_mut(&node.path)
            .filter(|w| w.generation == node.generation)
        else {
            return Ok(Claim::Superseded);
        };
        let session = client.session_id().0;
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(self.acls());
        for _ in 0..ATTEMPTS {
            let create = client.create(&node.path, &node.value, &ephemeral);
            match within(self.request_timeout, create).await? {
                Ok((stat, _)) => {
                    writer.version = Some(stat.version);
                    return Ok(Claim::Created);
                }
                Err(zk::Error::NoNode) => {
                    self.create_parents(client, &node.parent).await?;
                    continue;
                }
                Err(zk::Error::NodeExists) => {}
                Err(error) => return Err(zk_error("create", &node.path, error)),
            }
            let (value, stat) =
                match within(self.request_timeout, client.get_data(&node.path)).await? {
                    Ok(found) => found,
                    Err(zk::Error::NoNode) => continue,
                    Err(error) => return Err(zk_error("read", &node.path, error)),
                };
            let ours = stat.ephemeral_owner == session;
            if ours && writer.version != Some(stat.version) && value != node.value {
                // Another client wrote another value into this session's
                // node: a successor taking the address over, waiting for
                // the node to be free. Hand it over.
                match within(
                    self.request_timeout,
                    client.delete(&node.path, Some(stat.version)),
                )
                .await?
                {
                    Ok(()) | Err(zk::Error::NoNode) => {
                        info!(path = %node.path, "ZooKeeper node taken over by another registration; handed over");
                        writers.remove(&node.path);
                        return Ok(Claim::Superseded);
                    }
                    Err(zk::Error::BadVersion) => continue,
                    Err(error) => return Err(zk_error("delete", &node.path, error)),
                }
            }
            let mut version = stat.version;
            if value != node.value {
                let set = client.set_data(&node.path, &node.value, Some(stat.version));
                match within(self.request_timeout, set).await? {
                    Ok(stat) => version = stat.version,
                    Err(zk::Error::NoNode | zk::Error::BadVersion) => continue,
                    // Another session's node that its ACL keeps from this
                    // one: it is waited for all the same.
                    Err(zk::Error::NoAuth) if !ours => {}
                    Err(error) => return Err(zk_error("write", &node.path, error)),
                }
            }
            return Ok(if ours {
                writer.version = Some(version);
                Claim::Ours
            } else {
                writer.version = None;
                Claim::HeldBy(stat.ephemeral_owner)
            });
        }
        Err(Error::backend(
            BACKEND,
            format!(
                "{} changed under {ATTEMPTS} attempts to write it",
                node.path
            ),
        ))
    }

    /// Creates `parent` and its ancestors as persistent nodes, and the
    /// chroot of the connect string too if it is missing.
    async fn create_parents(&self, client: &zk::Client, parent: &str) -> Result<()> {
        let persistent = zk::CreateMode::Persistent.with_acls(self.acls());
        match within(self.request_timeout, client.mkdir(parent, &persistent)).await? {
            Ok(()) => return Ok(()),
            // `mkdir` stops at the chroot; only a chrooted client has one.
            Err(zk::Error::NoNode) if client.path() != "/" => {}
            Err(error) => return Err(zk_error("create", parent, error)),
        }
        let full = format!("{}{parent}", client.path());
        let root = client.clone().chroot("/").unwrap_or_else(|same| same);
        info!(chroot = %client.path(), "creating the ZooKeeper chroot");
        within(self.request_timeout, root.mkdir(&full, &persistent))
            .await?
            .map_err(|error| zk_error("create", &full, error))
    }

    /// Keeps `node` registered until the handle stops it. `owner` is the
    /// session that owns the node as this registration wrote it, if any.
    pub(super) async fn keep(
        self: Arc<Self>,
        node: Node,
        mut owner: Option<i64>,
        mut stop: StopSignal,
        probe: RegistrationProbe,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.max_backoff);
        loop {
            let round = tokio::select! {
                reason = stop.wait() => {
                    reason.reply(self.remove(&node).await);
                    return;
                }
                round = self.round(&node, &mut owner, &probe) => round,
            };
            match round {
                Ok(Lapse::Superseded) => {
                    debug!(path = %node.path, "superseded: this registration no longer writes its node");
                    // The handle's end removes nothing: the node is the
                    // later registration's.
                    stop.wait().await.reply(Ok(()));
                    return;
                }
                Ok(lapse) => {
                    debug!(path = %node.path, ?lapse, "ZooKeeper registration round ended");
                    backoff.reset();
                }
                Err(error) => {
                    probe.renewal_failed();
                    warn!(path = %node.path, %error, "ZooKeeper registration check failed; retrying");
                    tokio::select! {
                        reason = stop.wait() => {
                            reason.reply(self.remove(&node).await);
                            return;
                        }
                        () = sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    /// Makes the node this session's (or waits for another session's to
    /// go), then watches it until that changes.
    async fn round(
        &self,
        node: &Node,
        owner: &mut Option<i64>,
        probe: &RegistrationProbe,
    ) -> Result<Lapse> {
        let client = self.sessions.client().await?;
        let session = client.session_id().0;
        if owner.is_some_and(|owner| owner != session) {
            // The session that owned the node is over: ZooKeeper deleted
            // the node with it, whether or not this task saw it go.
            warn!(path = %node.path, "ZooKeeper session ended; creating the node again");
            probe.lost();
            *owner = None;
        }
        match self.claim(&client, node).await? {
            Claim::Created => {
                // The node was made when registering (or found held by
                // another session then): made again, it had been lost.
                if owner.is_some() {
                    probe.lost();
                }
                probe.reregistered();
                info!(path = %node.path, session = %client.session_id(), "registered in ZooKeeper again");
                *owner = Some(session);
            }
            Claim::Ours => {
                probe.renewed();
                *owner = Some(session);
            }
            Claim::HeldBy(other) => {
                if owner.take().is_some() {
                    probe.lost();
                }
                debug!(path = %node.path, owner = %zk::SessionId(other), "waiting for another session's node to go");
                return self.wait_freed(&client, node).await;
            }
            Claim::Superseded => return Ok(Lapse::Superseded),
        }
        let lapse = self.hold(&client, node, probe).await?;
        match lapse {
            Lapse::NodeGone => {
                warn!(path = %node.path, "ZooKeeper node gone; creating it again");
                probe.lost();
                *owner = None;
            }
            // The node may live on with the session, which the next round
            // resumes if ZooKeeper still holds it (`renewed` then).
            Lapse::SessionEnded => {
                warn!(path = %node.path, "ZooKeeper session given up; resuming it or creating the node again");
                probe.lost();
            }
            _ => {}
        }
        Ok(lapse)
    }

    /// The version of this registration's last write, unless a later
    /// registration writes the node now.
    async fn written_version(&self, node: &Node) -> Option<Option<i32>> {
        let writers = self.writers.lock().await;
        writers
            .get(&node.path)
            .filter(|w| w.generation == node.generation)
            .map(|w| w.version)
    }

    /// Watches the node this session owns until it is deleted, written or
    /// the session ends; records the connection losses meanwhile.
    async fn hold(
        &self,
        client: &zk::Client,
        node: &Node,
        probe: &RegistrationProbe,
    ) -> Result<Lapse> {
        let mut states = client.state_watcher();
        let (stat, watcher) = within(
            self.request_timeout,
            client.check_and_watch_stat(&node.path),
        )
        .await?
        .map_err(|error| zk_error("watch", &node.path, error))?;
        let Some(stat) = stat.filter(|stat| stat.ephemeral_owner == client.session_id().0) else {
            return Ok(Lapse::NodeGone);
        };
        match self.written_version(node).await {
            None => return Ok(Lapse::Superseded),
            // Written by another client between the claim and the watch.
            Some(version) if version != Some(stat.version) => return Ok(Lapse::NodeChanged),
            Some(_) => {}
        }
        let event = watcher.changed();
        tokio::pin!(event);
        loop {
            tokio::select! {
                event = &mut event => return Ok(match event.event_type {
                    // A node watch sees only the session's end, not its
                    // reconnections.
                    zk::EventType::Session => Lapse::SessionEnded,
                    zk::EventType::NodeDeleted => Lapse::NodeGone,
                    _ => Lapse::NodeChanged,
                }),
                state = states.changed() => match state {
                    zk::SessionState::Disconnected => probe.renewal_failed(),
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => probe.renewed(),
                    _ => return Ok(Lapse::SessionEnded),
                },
            }
        }
    }

    /// Waits until the node another session holds is gone. Writes to it
    /// meanwhile are not answered: two registrations waiting for the same
    /// node would otherwise write their values in turn for as long as it
    /// stays.
    async fn wait_freed(&self, client: &zk::Client, node: &Node) -> Result<Lapse> {
        loop {
            let (stat, watcher) = within(
                self.request_timeout,
                client.check_and_watch_stat(&node.path),
            )
            .await?
            .map_err(|error| zk_error("watch", &node.path, error))?;
            if stat.is_none() {
                return Ok(Lapse::Freed);
            }
            match watcher.changed().await.event_type {
                zk::EventType::Session => return Ok(Lapse::SessionEnded),
                zk::EventType::NodeDeleted => return Ok(Lapse::Freed),
                _ => {}
            }
        }
    }

    /// Deletes the node if this registration writes it and the live
    /// session owns it: a node another session holds (a successor process
    /// of the same address) is left alone, and so is one a later
    /// registration of this registry writes.
    async fn remove(&self, node: &Node) -> Result<()> {
        const ATTEMPTS: usize = 3;
        let mut writers = self.writers.lock().await;
        if !node.writes(&writers) {
            debug!(path = %node.path, "superseded registration: nothing to delete");
            return Ok(());
        }
        let client = self.sessions.client().await?;
        let session = client.session_id().0;
        for _ in 0..ATTEMPTS {
            let stat = within(self.request_timeout, client.check_stat(&node.path))
                .await?
                .map_err(|error| zk_error("read", &node.path, error))?;
            let Some(stat) = stat else {
                info!(path = %node.path, "ZooKeeper node already gone");
                writers.remove(&node.path);
                return Ok(());
            };
            if stat.ephemeral_owner != session {
                info!(
                    path = %node.path,
                    owner = %zk::SessionId(stat.ephemeral_owner),
                    "not deleting the ZooKeeper node: another session owns it"
                );
                writers.remove(&node.path);
                return Ok(());
            }
            match within(
                self.request_timeout,
                client.delete(&node.path, Some(stat.version)),
            )
            .await?
            {
                Ok(()) | Err(zk::Error::NoNode) => {
                    info!(path = %node.path, "deregistered from ZooKeeper");
                    writers.remove(&node.path);
                    return Ok(());
                }
                // Written since it was read: look again.
                Err(zk::Error::BadVersion) => {}
                Err(error) => return Err(zk_error("delete", &node.path, error)),
            }
        }
        Err(Error::backend(
            BACKEND,
            format!(
                "{} changed under {ATTEMPTS} attempts to delete it",
                node.path
            ),
        ))
    }
}
