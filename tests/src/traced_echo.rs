//! A traced tonic Echo server (the examples' own) and a client of it, for
//! the suite and the test binaries of their own alike.

use echo::tonic_gen::echo_client::EchoClient;
use rpc_ext_tracing::RpcTracing;
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::{Channel, Endpoint};

/// A plain tonic client of the Echo service.
pub type TonicEchoClient = EchoClient<Channel>;

/// Serves Echo with tonic on a free loopback port, traced by `tracing` on
/// the server side, until `stopped` turns true; returns a client
/// connected to it.
pub async fn traced_tonic_echo(
    tracing: &RpcTracing,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<TonicEchoClient> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let tracing = tracing.clone();
    tokio::spawn(async move {
        echo::servers::serve_tonic(listener, &tracing, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
    });
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(EchoClient::new(channel))
}
