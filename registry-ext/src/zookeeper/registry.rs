//! Registration into ZooKeeper: an ephemeral node per instance, owned by
//! the registry's session.

use std::{
    net::IpAddr,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use tracing::info;
use zookeeper_client as zk;

use super::{
    keeper::{Claim, Node},
    path::{check_service, instance_path, service_path},
    session::SessionSource,
    writers::Writers,
    ZooKeeperBuilder, BACKEND,
};
use crate::{advertise_address, health::RegistryHealth, Instance, Registration, Registry, Result};

/// Registers instances into ZooKeeper and keeps them there.
///
/// Each registration is an ephemeral node
/// (`<prefix>/<service>/<ip>:<port>`, see the [layout](super)) owned by the
/// registry's session. A background task per registration watches its
/// node. A connection loss shorter than the session timeout changes
/// nothing: the client reconnects to the same session and the node stays.
/// Once the session has expired (ZooKeeper deleted the node) or the node
/// was deleted by someone else, the task creates it again, under a new
/// session if needed, retrying with capped exponential backoff for as long
/// as the [`Registration`] lives.
///
/// # Ownership
///
/// No registry deletes a node that another session owns. The newest
/// registration of an address takes it over:
///
/// Each value names the registry that wrote it: an `"owner"` field with a
/// random id drawn when the registry is built, which resolvers ignore.
///
/// - Registered again in the same registry (with a new weight, say), the
///   new registration writes its value into the node; the older handle
///   then leaves the node alone, also when it is dropped. A value of this
///   registry that is not the live registration's (a re-registration
///   whose write failed after the server applied it) is written over.
/// - Registered by another registry (a successor process) while this
///   one's session owns the node, the successor writes its value into the
///   node, so resolvers see it at once, and waits. This registry's task,
///   seeing another registry's owner id, hands the node over: it deletes
///   it (its own node) and leaves the address alone from then on. The
///   successor creates its own node at once.
/// - Rewritten with a value that names no owner (by hand, by another
///   tool, or by a registry of a version that wrote none), the node gets
///   the registration's value back, with a warning.
/// - Found held by a session that no registry hands over (a crashed
///   process whose session has not expired yet, a node written by another
///   tool), the node gets this registration's value and stays; the
///   registration creates its own node once that one is gone.
///
/// Deregistering deletes the node only if the registry's live session
/// owns it, checked right before the delete, which carries the node's
/// version. If the delete fails (no quorum, a request timed out while the
/// client reconnected), `deregister` returns the error and the delete is
/// retried in the background, with backoff, until the node is deleted or
/// found gone or another's: the registry's session, which its other
/// registrations keep alive, would otherwise keep the node.
///
/// # Health
///
/// Each registration is an entry of the registry's [`health`](Self::health):
/// `Registered` while the registry's session owns the node,
/// `Reregistering` from the moment the session expired or the node was
/// found gone or held by another session, until the task owns it again.
/// A registration that handed its node over to another registry's stays
/// `Reregistering` until its handle goes: ZooKeeper holds the address for
/// that registration, and this one does not write it again. A
/// reconnection to the same session and each check that finds the node
/// its own count in `renewals_ok`; a lost connection and each failed
/// attempt in `renewals_failed`.
///
/// ```no_run
/// use rpc_ext_registry::{zookeeper::ZooKeeperRegistry, Instance, Registry};
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = ZooKeeperRegistry::builder("127.0.0.1:2181").build().await?;
/// let registration = registry
///     .register(Instance::new("echo", "0.0.0.0:50051".parse().unwrap()).with_tag("zone", "a"))
///     .await?;
/// // ... serve until shutdown, then:
/// registration.deregister().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ZooKeeperRegistry {
    shared: Arc<Shared>,
}

/// What the registry and its registrations' tasks share.
pub(super) struct Shared {
    pub(super) sessions: SessionSource,
    pub(super) prefix: String,
    pub(super) request_timeout: Duration,
    pub(super) max_backoff: Duration,
    advertise_ip: Option<IpAddr>,
    health: RegistryHealth,
    /// Stored in every value this registry writes (`"owner"`, a random
    /// [`registration_id`](crate::kit::registration_id)): a value with
    /// another owner in a node of this registry's session is a successor's.
    pub(super) owner_id: String,
    /// Per node path, the registration of this registry that writes it.
    writers: Writers,
    next_generation: AtomicU64,
}

impl std::fmt::Debug for ZooKeeperRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperRegistry")
            .field("sessions", &self.shared.sessions)
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

impl ZooKeeperRegistry {
    /// Starts building a registry that talks to the servers of
    /// `connect_string` (`host:port[,host:port...][/chroot]`).
    pub fn builder(connect_string: impl Into<String>) -> ZooKeeperBuilder<Self> {
        ZooKeeperBuilder::new(connect_string)
    }

    pub(super) fn new(builder: ZooKeeperBuilder<Self>) -> Result<Self> {
        Ok(Self {
            shared: Arc::new(Shared {
                sessions: builder.sessions()?,
                prefix: builder.checked_prefix()?,
                request_timeout: builder.request_timeout,
                max_backoff: builder.max_backoff,
                advertise_ip: builder.advertise_ip,
                health: builder.health.unwrap_or_default(),
                owner_id: crate::kit::registration_id(),
                writers: Writers::default(),
                next_generation: AtomicU64::new(0),
            }),
        })
    }

    /// The health of this registry's registrations (shared by its clones):
    /// each one's state, confirmations and failures, and re-creations after
    /// the node was lost. See [`health`](crate::health).
    #[must_use]
    pub fn health(&self) -> RegistryHealth {
        self.shared.health.clone()
    }

    /// The path of an instance's node (below the chroot, if any).
    #[must_use]
    pub fn path_of(&self, instance: &Instance) -> String {
        instance_path(&self.shared.prefix, &instance.service, instance.address)
    }
}

impl Registry for ZooKeeperRegistry {
    async fn register(&self, mut instance: Instance) -> Result<Registration> {
        instance.address = advertise_address(instance.address, self.shared.advertise_ip)?;
        instance.validate()?;
        check_service(&self.shared.prefix, &instance.service)?;
        let shared = &self.shared;
        let path = self.path_of(&instance);
        let node = Node {
            parent: service_path(&shared.prefix, &instance.service),
            value: crate::stored_instance::encode_owned(&instance, &shared.owner_id),
            generation: shared
                .next_generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            slot: shared.writers.slot(&path),
            path,
        };
        let (claim, client) = {
            // Held across the write: two registrations of the address in
            // this registry never write in turn.
            let mut writer = node.slot.lock().await;
            let previous = writer.replace(node.generation);
            let written = match shared.sessions.client().await {
                Ok(client) => shared
                    .write(&client, &node)
                    .await
                    .map(|claim| (claim, client)),
                Err(error) => Err(error),
            };
            match written {
                Ok((claim, client)) => {
                    if claim == Claim::HandedOver {
                        *writer = None;
                    }
                    (claim, client)
                }
                Err(error) => {
                    // The registration that wrote the address before keeps
                    // it: a value of this one that the server applied all
                    // the same carries this registry's owner id, which that
                    // registration writes over rather than hands over to.
                    *writer = previous;
                    return Err(error);
                }
            }
        };
        let (mut registration, stop) = Registration::new(instance);
        let probe = registration.track(BACKEND, &shared.health);
        let owner = match claim {
            Claim::Created(_) | Claim::Ours(_) => {
                info!(path = %node.path, session = %client.session_id(), "registered in ZooKeeper");
                Some(client.session_id().0)
            }
            Claim::HeldBy(owner) => {
                info!(
                    path = %node.path,
                    owner = %zk::SessionId(owner),
                    "ZooKeeper node held by another session; created again once it is gone"
                );
                probe.lost();
                None
            }
            // Not an outcome of `write`: the path's lock was held.
            Claim::Superseded => None,
            Claim::HandedOver => {
                probe.lost();
                None
            }
        };
        tokio::spawn(shared.clone().keep(node, owner, stop, probe));
        Ok(registration)
    }
}
