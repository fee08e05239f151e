//! tonic adapter (feature `tonic`): a tonic [`Channel`] that balances over
//! a resolver's live view of a service.

use std::net::SocketAddr;

use ::tonic::transport::{channel::Change as BalanceChange, Channel, Endpoint};
use ::tower::discover::Change;
use futures::StreamExt;

use crate::{tower::discover_changes, Error, Resolver, Result};

/// Capacity of the queue between the resolver and tonic's balancer.
const CHANGE_BUFFER: usize = 1024;

/// A tonic [`Channel`] that balances over the instances of `service`, kept in
/// step with the resolver. Endpoints are `http://<address>`; use
/// [`balanced_channel_with`] to set TLS, timeouts or other endpoint options.
///
/// ```
/// use rpc_ext_registry::{tonic::balanced_channel, Instance, MemoryRegistry, Registry};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = MemoryRegistry::new(); // or an etcd, ZooKeeper, Consul, Kubernetes resolver
/// let _server = registry
///     .register(Instance::new("echo", "127.0.0.1:50051".parse().unwrap()))
///     .await?;
/// let channel = balanced_channel(&registry, "echo").await?;
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
