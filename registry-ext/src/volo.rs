//! Volo adapter (feature `volo`): any [`Resolver`] as a
//! [`volo::discovery::Discover`].

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError, Weak},
};

use async_broadcast::{InactiveReceiver, Receiver, Sender};
use faststr::FastStr;
use volo::{
    context::Endpoint,
    discovery::{Change, Discover},
    loadbalance::error::LoadBalanceError,
    net::Address,
};

use crate::{Diff, Instance, Resolver, ServiceWatch};

/// How many undelivered changes a slow load balancer may lag behind; older
/// ones are dropped (each change carries the full set, so the newest wins).
const CHANGE_BUFFER: usize = 64;

/// A [`Discover`] backed by a [`Resolver`]: `discover` answers from the
/// resolver's live view of the callee's service name, and `watch` pushes a
/// [`Change`] (with added, updated and removed instances) whenever it moves.
///
/// Instances with weight 0 are left out, as they are out of rotation.
///
/// ```no_run
/// use rpc_ext_registry::{etcd::EtcdResolver, volo::VoloDiscover};
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let resolver = EtcdResolver::builder(["http://127.0.0.1:2379"]).build().await?;
/// let discover = VoloDiscover::new(resolver);
/// // volo_gen::...::ClientBuilder::new("echo").discover(discover).build();
/// # let _ = discover; Ok(()) }
/// ```
pub struct VoloDiscover<R> {
    resolver: Arc<R>,
    shared: Arc<Shared>,
}

struct Shared {
    changes: Sender<Change<FastStr>>,
    /// Keeps the channel open while no load balancer listens.
    _idle: InactiveReceiver<Change<FastStr>>,
    forwarded: Mutex<HashSet<FastStr>>,
}

impl<R> Clone for VoloDiscover<R> {
    fn clone(&self) -> Self {
        Self {
            resolver: self.resolver.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<R: Resolver> VoloDiscover<R> {
    /// Wraps `resolver`.
    #[must_use]
    pub fn new(resolver: R) -> Self {
        let (mut changes, idle) = async_broadcast::broadcast(CHANGE_BUFFER);
        changes.set_overflow(true);
        changes.set_await_active(false);
        Self {
            resolver: Arc::new(resolver),
            shared: Arc::new(Shared {
                changes,
                _idle: idle.deactivate(),
                forwarded: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Starts pushing the changes of `watch` to load balancers, once per service.
    fn forward(&self, key: FastStr, mut watch: ServiceWatch) {
        let first = self
            .shared
            .forwarded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone());
        if !first {
            return;
        }
        let shared: Weak<Shared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut previous = routable(&watch.current().instances);
            while let Ok(snapshot) = watch.changed().await {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let next = routable(&snapshot.instances);
                let diff = Diff::between(&previous, &next);
                if !diff.is_empty() {
                    let change = Change {
                        key: key.clone(),
                        all: next.iter().map(|i| to_volo(i)).collect(),
                        added: diff.added.iter().map(|i| to_volo(i)).collect(),
                        updated: diff.updated.iter().map(|i| to_volo(i)).collect(),
                        removed: diff.removed.iter().map(|i| to_volo(i)).collect(),
                    };
                    // Full or listener-less channels are fine: see CHANGE_BUFFER.
                    let _ = shared.changes.try_broadcast(change);
                }
                previous = next;
            }
        });
    }
}

impl<R: Resolver> Discover for VoloDiscover<R> {
    type Key = FastStr;
    type Error = LoadBalanceError;

    async fn discover<'s>(
        &'s self,
        endpoint: &'s Endpoint,
    ) -> Result<Vec<Arc<volo::discovery::Instance>>, Self::Error> {
        let watch = self
            .resolver
            .subscribe(&endpoint.service_name)
            .await
            .map_err(|e| LoadBalanceError::Discover(Box::new(e)))?;
        let instances = routable(&watch.current().instances);
        self.forward(endpoint.service_name.clone(), watch);
        Ok(instances.iter().map(|i| to_volo(i)).collect())
    }

    fn key(&self, endpoint: &Endpoint) -> Self::Key {
        endpoint.service_name.clone()
    }

    fn watch(&self, _keys: Option<&[Self::Key]>) -> Option<Receiver<Change<Self::Key>>> {
        Some(self.shared.changes.new_receiver())
    }
}

fn routable(instances: &[Arc<Instance>]) -> Vec<Arc<Instance>> {
    instances.iter().filter(|i| i.weight > 0).cloned().collect()
}

/// Converts an instance to Volo's type.
#[must_use]
pub fn to_volo(instance: &Instance) -> Arc<volo::discovery::Instance> {
    Arc::new(volo::discovery::Instance {
        address: Address::Ip(instance.address),
        weight: instance.weight,
        tags: instance
            .tags
            .iter()
            .map(|(k, v)| (Cow::Owned(k.clone()), Cow::Owned(v.clone())))
            .collect::<HashMap<_, _>>(),
    })
}
