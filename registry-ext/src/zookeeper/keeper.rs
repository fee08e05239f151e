//! The task that keeps one registration's node: creates it, watches it,
//! creates it again after a loss, hands it over to a successor, and
//! deletes it on deregistration, only while the registry's session owns it.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::time::sleep;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::{registry::Shared, within, writers::PathSlot, zk_error, BACKEND};
use crate::{
    health::RegistrationProbe,
    kit::{Backoff, Stop, StopSignal},
    stored_instance, Error, Result,
};

/// How many times in a row a write or a delete is attempted. Each retry
/// follows a change by someone else between two requests (the node
/// deleted, created or written meanwhile); this many in a row is a node
/// being rewritten continuously, reported as a failure.
const ATTEMPTS: usize = 3;

/// What one registration writes.
#[derive(Debug)]
pub(super) struct Node {
    pub(super) path: String,
    pub(super) parent: String,
    /// The instance, with the registry's owner id.
    pub(super) value: Vec<u8>,
    /// Tells this registration from later ones of the same address in the
    /// registry: only the one whose generation `slot` holds writes.
    pub(super) generation: u64,
    pub(super) slot: PathSlot,
}

/// Who holds the node after an attempt to write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// Created now, owned by the session, at this version.
    Created(i32),
    /// It was there already, owned by the session, and now holds this
    /// registration's value at this version.
    Ours(i32),
    /// Another session owns it (0: a persistent node); it now holds this
    /// registration's value.
    HeldBy(i64),
    /// A later registration of the address in this registry writes it:
    /// this one no longer writes or deletes it.
    Superseded,
    /// Another registry (a successor process) wrote its registration's
    /// value into the session's node: this registration deleted its node
    /// for it, and no longer writes or deletes it.
    HandedOver,
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
    /// A later registration of this registry took the address over.
    Superseded,
    /// The node was handed over to another registry's registration.
    HandedOver,
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

    /// Writes the node unless a later registration of the address took it
    /// over, holding the path's lock meanwhile.
    async fn claim(&self, client: &zk::Client, node: &Node) -> Result<Claim> {
        let mut writer = node.slot.lock().await;
        if *writer != Some(node.generation) {
            return Ok(Claim::Superseded);
        }
        let claim = self.write(client, node).await?;
        if claim == Claim::HandedOver {
            *writer = None;
        }
        Ok(claim)
    }

    /// Creates the node, or finds out who holds it and puts this
    /// registration's value in it. The caller holds the path's lock and
    /// has checked that this registration writes the path.
    pub(super) async fn write(&self, client: &zk::Client, node: &Node) -> Result<Claim> {
        settle(&node.path, "write", || self.write_once(client, node)).await
    }

    /// One attempt of [`write`](Self::write): `None` if the node changed
    /// between two of its requests.
    async fn write_once(&self, client: &zk::Client, node: &Node) -> Result<Option<Claim>> {
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(self.acls());
        let create = client.create(&node.path, &node.value, &ephemeral);
        match within(self.request_timeout, create).await? {
            Ok((stat, _)) => return Ok(Some(Claim::Created(stat.version))),
            Err(zk::Error::NoNode) => {
                self.create_parents(client, &node.parent).await?;
                return Ok(None);
            }
            Err(zk::Error::NodeExists) => {}
            Err(error) => return Err(zk_error("create", &node.path, error)),
        }
        let (value, stat) = match within(self.request_timeout, client.get_data(&node.path)).await? {
            Ok(found) => found,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(error) => return Err(zk_error("read", &node.path, error)),
        };
        let ours = stat.ephemeral_owner == client.session_id().0;
        let held = |version| {
            if ours {
                Claim::Ours(version)
            } else {
                Claim::HeldBy(stat.ephemeral_owner)
            }
        };
        if value == node.value {
            return Ok(Some(held(stat.version)));
        }
        if ours {
            match stored_instance::owner(&value) {
                Some(owner) if owner != self.owner_id => {
                    // Another registry's registration of the address wrote
                    // its value into this session's node: a successor,
                    // waiting for the node to be free. Hand it over.
                    return self.hand_over(client, &node.path, stat.version).await;
                }
                // An earlier registration of this registry wrote it (the
                // one this registration replaces, or one whose write
                // failed after the server applied it).
                Some(_) => {
                    debug!(path = %node.path, "ZooKeeper node holds an earlier value of this registry; writing this registration's");
                }
                None => {
                    warn!(path = %node.path, "ZooKeeper node rewritten by a client that is no registry (its value names no owner); writing the registration's value back");
                }
            }
        }
        let set = client.set_data(&node.path, &node.value, Some(stat.version));
        match within(self.request_timeout, set).await? {
            Ok(stat) => Ok(Some(held(stat.version))),
            Err(zk::Error::NoNode | zk::Error::BadVersion) => Ok(None),
            // Another session's node that its ACL keeps from this one: it
            // is waited for all the same.
            Err(zk::Error::NoAuth) if !ours => Ok(Some(held(stat.version))),
            Err(error) => Err(zk_error("write", &node.path, error)),
        }
    }

    /// Deletes the session's node at `version`, which a successor wrote.
    async fn hand_over(
        &self,
        client: &zk::Client,
        path: &str,
        version: i32,
    ) -> Result<Option<Claim>> {
        match within(self.request_timeout, client.delete(path, Some(version))).await? {
            Ok(()) | Err(zk::Error::NoNode) => {
                info!(%path, "ZooKeeper node taken over by another registry's registration; handed over");
                Ok(Some(Claim::HandedOver))
            }
            Err(zk::Error::BadVersion) => Ok(None),
            Err(error) => Err(zk_error("delete", path, error)),
        }
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
                reason = stop.wait() => return self.deregister(&node, reason).await,
                round = self.round(&node, &mut owner, &probe) => round,
            };
            match round {
                Ok(lapse @ (Lapse::Superseded | Lapse::HandedOver)) => {
                    debug!(path = %node.path, ?lapse, "this registration no longer writes its node");
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
                        reason = stop.wait() => return self.deregister(&node, reason).await,
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
        let version = match self.claim(&client, node).await? {
            Claim::Created(version) => {
                // The node was made when registering (or found held by
                // another session then): made again, it had been lost.
                if owner.is_some() {
                    probe.lost();
                }
                probe.reregistered();
                info!(path = %node.path, session = %client.session_id(), "registered in ZooKeeper again");
                *owner = Some(session);
                version
            }
            Claim::Ours(version) => {
                probe.renewed();
                *owner = Some(session);
                version
            }
            Claim::HeldBy(other) => {
                if owner.take().is_some() {
                    probe.lost();
                }
                debug!(path = %node.path, owner = %zk::SessionId(other), "waiting for another session's node to go");
                return self.wait_freed(&client, node).await;
            }
            Claim::Superseded => return Ok(Lapse::Superseded),
            Claim::HandedOver => {
                // ZooKeeper holds the address for another registration.
                probe.lost();
                return Ok(Lapse::HandedOver);
            }
        };
        let lapse = self.hold(&client, node, version, probe).await?;
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

    /// The node's stat (`None`: there is no node) and a watch for its next
    /// change.
    async fn watch_stat(
        &self,
        client: &zk::Client,
        path: &str,
    ) -> Result<(Option<zk::Stat>, zk::OneshotWatcher)> {
        within(self.request_timeout, client.check_and_watch_stat(path))
            .await?
            .map_err(|error| zk_error("watch", path, error))
    }

    /// Watches the node this session owns, written at `version`, until it
    /// is deleted, written or the session ends; records the connection
    /// losses meanwhile.
    async fn hold(
        &self,
        client: &zk::Client,
        node: &Node,
        version: i32,
        probe: &RegistrationProbe,
    ) -> Result<Lapse> {
        let mut states = client.state_watcher();
        let (stat, watcher) = self.watch_stat(client, &node.path).await?;
        let Some(stat) = stat.filter(|stat| stat.ephemeral_owner == client.session_id().0) else {
            return Ok(Lapse::NodeGone);
        };
        if stat.version != version {
            // Written by another client between the claim and the watch.
            return Ok(Lapse::NodeChanged);
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
            let (stat, watcher) = self.watch_stat(client, &node.path).await?;
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

    /// Deletes the node (see [`remove`](Self::remove)) and replies to the
    /// handle with the outcome of the first attempt. After a failure (no
    /// quorum, a request timed out during a reconnection) the node would
    /// stay for as long as the registry's session lives, which its other
    /// registrations keep alive: the delete is retried with backoff until
    /// it succeeds or finds the node gone or no longer this
    /// registration's. Once the session is over, ZooKeeper deleted the
    /// node with it and the next attempt finds it gone.
    async fn deregister(&self, node: &Node, stop: Stop) {
        let error = match self.remove(node).await {
            Ok(()) => return stop.reply(Ok(())),
            Err(error) => error,
        };
        warn!(path = %node.path, %error, "ZooKeeper deregistration failed; retrying in the background");
        stop.reply(Err(error));
        let mut backoff = Backoff::new(Duration::from_millis(100), self.max_backoff);
        loop {
            sleep(backoff.next_delay()).await;
            match self.remove(node).await {
                Ok(()) => {
                    info!(path = %node.path, "ZooKeeper deregistration retried: done");
                    return;
                }
                Err(error) => {
                    warn!(path = %node.path, %error, "ZooKeeper deregistration failed again; retrying");
                }
            }
        }
    }

    /// Deletes the node if this registration writes it and the live
    /// session owns it: a node another session holds (a successor process
    /// of the same address) is left alone, and so is one a later
    /// registration of this registry writes.
    async fn remove(&self, node: &Node) -> Result<()> {
        let mut writer = node.slot.lock().await;
        if *writer != Some(node.generation) {
            debug!(path = %node.path, "superseded registration: nothing to delete");
            return Ok(());
        }
        let client = self.sessions.client().await?;
        settle(&node.path, "delete", || {
            self.delete_once(&client, &node.path)
        })
        .await?;
        *writer = None;
        Ok(())
    }

    /// One attempt of [`remove`](Self::remove): `None` if the node was
    /// written between the two requests.
    ///
    /// The delete carries the version read, the only condition ZooKeeper
    /// checks with a delete (a multi's `check` op compares the same
    /// version): the owner is read before. A node that a third client
    /// deleted and another session created again in between, at the same
    /// version, would be deleted; the registrations of these registries
    /// never delete another session's node, so only a foreign tool can set
    /// that up.
    async fn delete_once(&self, client: &zk::Client, path: &str) -> Result<Option<()>> {
        let stat = within(self.request_timeout, client.check_stat(path))
            .await?
            .map_err(|error| zk_error("read", path, error))?;
        let Some(stat) = stat else {
            info!(%path, "ZooKeeper node already gone");
            return Ok(Some(()));
        };
        if stat.ephemeral_owner != client.session_id().0 {
            info!(
                %path,
                owner = %zk::SessionId(stat.ephemeral_owner),
                "not deleting the ZooKeeper node: another session owns it"
            );
            return Ok(Some(()));
        }
        match within(
            self.request_timeout,
            client.delete(path, Some(stat.version)),
        )
        .await?
        {
            Ok(()) | Err(zk::Error::NoNode) => {
                info!(%path, "deregistered from ZooKeeper");
                Ok(Some(()))
            }
            // Written since it was read: look again.
            Err(zk::Error::BadVersion) => Ok(None),
            Err(error) => Err(zk_error("delete", path, error)),
        }
    }
}

/// Runs `attempt` until it settles (`Some`), [`ATTEMPTS`] times at most.
async fn settle<T, F>(path: &str, doing: &str, mut attempt: impl FnMut() -> F) -> Result<T>
where
    F: Future<Output = Result<Option<T>>>,
{
    for _ in 0..ATTEMPTS {
        if let Some(settled) = attempt().await? {
            return Ok(settled);
        }
    }
    Err(Error::backend(
        BACKEND,
        format!("{path} changed under {ATTEMPTS} attempts to {doing} it"),
    ))
}
