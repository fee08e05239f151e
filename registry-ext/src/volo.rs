//! Volo adapter (feature `volo`): any [`Resolver`] as a
//! [`volo::discovery::Discover`].

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError, Weak},
};

use async_broadcast::{InactiveReceiver, Receiver, Sender};
use faststr::FastStr;
use tokio::sync::watch;
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
    /// Services with a running forward task.
    forwarded: Mutex<HashSet<FastStr>>,
    /// Never sent on: dropped with the last [`VoloDiscover`] clone, which
    /// closes the receiver of every forward task and so stops them (and
    /// releases their resolver watches) at once, even for a quiet service.
    stop: watch::Sender<()>,
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
                stop: watch::Sender::new(()),
            }),
        }
    }

    /// Starts pushing the changes of `watch` since `previous` (what
    /// `discover` answered) to load balancers, once per service.
    fn forward(&self, key: FastStr, mut watch: ServiceWatch, mut previous: Vec<Arc<Instance>>) {
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
        let mut stop = self.shared.stop.subscribe();
        tokio::spawn(async move {
            // However the task ends, a later `discover` starts a fresh one.
            let _entry = ForwardedEntry {
                shared: shared.clone(),
                key: key.clone(),
            };
            loop {
                let snapshot = tokio::select! {
                    // Only ever an error: every `VoloDiscover` is gone.
                    _ = stop.changed() => return,
                    changed = watch.changed() => match changed {
                        Ok(snapshot) => snapshot,
                        Err(_) => return,
                    },
                };
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

/// Removes a service from [`Shared::forwarded`] when its forward task ends.
struct ForwardedEntry {
    shared: Weak<Shared>,
    key: FastStr,
}

impl Drop for ForwardedEntry {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared
                .forwarded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.key);
        }
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
        let answer = instances.iter().map(|i| to_volo(i)).collect();
        self.forward(endpoint.service_name.clone(), watch, instances);
        Ok(answer)
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
            .map(|(k, v)| (Cow::Owned(k.to_owned()), Cow::Owned(v.to_owned())))
            .collect::<HashMap<_, _>>(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Result, ServiceSnapshot};

    const DEADLINE: Duration = Duration::from_secs(5);

    /// Answers every subscription with a fresh channel whose sender the test
    /// keeps, so it sees when the watch is released and can close it.
    #[derive(Default)]
    struct Manual {
        senders: Arc<Mutex<Vec<watch::Sender<ServiceSnapshot>>>>,
    }

    impl Resolver for Manual {
        async fn subscribe(&self, service: &str) -> Result<ServiceWatch> {
            let (tx, rx) = watch::channel(ServiceSnapshot::new(Vec::new(), 1));
            self.senders.lock().unwrap().push(tx);
            Ok(ServiceWatch::new(service, rx))
        }
    }

    fn endpoint() -> Endpoint {
        Endpoint::new("quiet".into())
    }

    #[tokio::test]
    async fn dropping_the_last_clone_releases_a_quiet_watch() {
        let resolver = Manual::default();
        let senders = resolver.senders.clone();
        let discover = VoloDiscover::new(resolver);
        let clone = discover.clone();
        assert!(discover.discover(&endpoint()).await.unwrap().is_empty());
        let forwarded = senders.lock().unwrap()[0].clone();

        drop(discover);
        tokio::task::yield_now().await;
        assert!(!forwarded.is_closed(), "a clone still uses the watch");

        drop(clone);
        tokio::time::timeout(DEADLINE, forwarded.closed())
            .await
            .expect("the forward task releases the watch");
    }

    #[tokio::test]
    async fn a_later_discover_replaces_a_forwarder_that_ended() {
        let discover = VoloDiscover::new(Manual::default());
        let senders = discover.resolver.senders.clone();
        let mut changes = discover.watch(None).unwrap();
        discover.discover(&endpoint()).await.unwrap();

        // The backend ends the watch: the forwarder stops and forgets it.
        drop(senders.lock().unwrap().remove(0));
        tokio::time::timeout(DEADLINE, async {
            while !discover.shared.forwarded.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the ended forwarder is forgotten");

        discover.discover(&endpoint()).await.unwrap();
        let instance = Arc::new(Instance::new("quiet", "127.0.0.1:9000".parse().unwrap()));
        senders.lock().unwrap()[0].send_replace(ServiceSnapshot::new(vec![instance], 2));
        let change = tokio::time::timeout(DEADLINE, changes.recv())
            .await
            .expect("a fresh forwarder pushes the change")
            .unwrap();
        assert_eq!(change.key, "quiet");
        assert_eq!(change.added.len(), 1);
    }
}
