//! tower adapter (feature `tower`): a resolver's view of a service as a
//! stream of [`tower::discover::Change`]s, for `tower::balance` or any
//! tower discovery consumer. The tonic channel built on it is in
//! `rpc_ext_registry::tonic` (feature `tonic`), so tower users do not
//! build tonic.

use std::{net::SocketAddr, sync::Arc};

use futures::Stream;
use tower::discover::Change;

use crate::{Diff, Error, Instance, Result, ServiceWatch};

/// Turns a [`ServiceWatch`] into tower discovery changes: first an `Insert`
/// for every current instance, then `Insert`/`Remove` as instances come and
/// go. Weight-0 instances are out of rotation and not inserted.
///
/// ```
/// use futures::StreamExt;
/// use rpc_ext_registry::{tower::discover_changes, Instance, MemoryRegistry, Registry, Resolver};
/// use tower::discover::Change;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = MemoryRegistry::new();
/// let _registration = registry
///     .register(Instance::new("echo", "127.0.0.1:50051".parse().unwrap()))
///     .await?;
/// let mut changes = Box::pin(discover_changes(registry.subscribe("echo").await?));
/// let Some(Ok(Change::Insert(address, _))) = changes.next().await else { panic!() };
/// assert_eq!(address.port(), 50051);
/// # Ok(()) }
/// ```
pub fn discover_changes(
    watch: ServiceWatch,
) -> impl Stream<Item = Result<Change<SocketAddr, Arc<Instance>>, Error>> + Send {
    futures::stream::unfold(
        (watch, Vec::<Arc<Instance>>::new(), Vec::new(), true),
        |(mut watch, mut previous, mut pending, mut first)| async move {
            loop {
                if let Some(change) = pending.pop() {
                    return Some((Ok(change), (watch, previous, pending, first)));
                }
                let snapshot = if first {
                    first = false;
                    watch.current()
                } else {
                    match watch.changed().await {
                        Ok(snapshot) => snapshot,
                        Err(Error::Closed) => return None,
                        Err(error) => return Some((Err(error), (watch, previous, pending, first))),
                    }
                };
                let next: Vec<_> = snapshot
                    .instances
                    .iter()
                    .filter(|i| i.weight > 0)
                    .cloned()
                    .collect();
                pending = changes_between(&previous, &next);
                previous = next;
            }
        },
    )
}

/// Changes in reverse order, to be popped.
fn changes_between(
    previous: &[Arc<Instance>],
    next: &[Arc<Instance>],
) -> Vec<Change<SocketAddr, Arc<Instance>>> {
    let diff = Diff::between(previous, next);
    let mut changes: Vec<_> = diff
        .removed
        .into_iter()
        .map(|i| Change::Remove(i.address))
        .chain(
            diff.added
                .into_iter()
                .chain(diff.updated)
                .map(|i| Change::Insert(i.address, i)),
        )
        .collect();
    changes.reverse();
    changes
}
