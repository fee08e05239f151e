//! tower/tonic adapter (feature `tower`): a resolver's view of a service as a
//! stream of [`tower::discover::Change`]s, and a tonic [`Channel`] that
//! balances over it.

use std::{net::SocketAddr, sync::Arc};

use futures::Stream;
use tonic::transport::{channel::Change as BalanceChange, Channel, Endpoint};
use tower::discover::Change;

use crate::{Diff, Error, Instance, Resolver, Result, ServiceWatch};

/// Capacity of the queue between the resolver and tonic's balancer.
const CHANGE_BUFFER: usize = 1024;

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

/// A tonic [`Channel`] that balances over the instances of `service`, kept in
/// step with the resolver. Endpoints are `http://<address>`; use
/// [`balanced_channel_with`] to set TLS, timeouts or other endpoint options.
///
/// ```no_run
/// use rpc_ext_registry::{etcd::EtcdResolver, tower::balanced_channel};
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let resolver = EtcdResolver::builder(["http://127.0.0.1:2379"]).build().await?;
/// let channel = balanced_channel(&resolver, "echo").await?;
/// // let mut client = EchoClient::new(channel);
/// # let _ = channel; Ok(()) }
/// ```
pub async fn balanced_channel<R: Resolver>(resolver: &R, service: &str) -> Result<Channel> {
    balanced_channel_with(resolver, service, |address| {
        Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Error::Config(format!("bad endpoint for {address}: {e}")))
    })
    .await
}

/// Like [`balanced_channel`], with the endpoint of each instance built by
/// `make_endpoint`.
pub async fn balanced_channel_with<R, F>(
    resolver: &R,
    service: &str,
    make_endpoint: F,
) -> Result<Channel>
where
    R: Resolver,
    F: Fn(SocketAddr) -> Result<Endpoint> + Send + 'static,
{
    use futures::StreamExt;

    let watch = resolver.subscribe(service).await?;
    let (channel, tx) = Channel::balance_channel::<SocketAddr>(CHANGE_BUFFER);
    let service = service.to_owned();
    tokio::spawn(async move {
        let mut changes = std::pin::pin!(discover_changes(watch));
        loop {
            let change = tokio::select! {
                () = tx.closed() => return,
                change = changes.next() => change,
            };
            let change = match change {
                None => return,
                Some(Err(error)) => {
                    tracing::warn!(%service, %error, "resolver error");
                    continue;
                }
                Some(Ok(Change::Remove(address))) => BalanceChange::Remove(address),
                Some(Ok(Change::Insert(address, _))) => match make_endpoint(address) {
                    Ok(endpoint) => BalanceChange::Insert(address, endpoint),
                    Err(error) => {
                        tracing::warn!(%service, %error, "instance skipped");
                        continue;
                    }
                },
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
    });
    Ok(channel)
}
