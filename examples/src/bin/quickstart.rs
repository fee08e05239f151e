//! The suite in one process, with no external server.
//!
//! Starts a Volo gRPC Echo server and a tonic Echo server on loopback,
//! registers both in an in-process registry, and calls each through a client
//! that discovers it by service name: Volo's client through
//! `registry_ext::volo::VoloDiscover`, tonic's through a balanced channel.
//!
//! ```text
//! cargo run -p examples --bin quickstart
//! ```

use std::time::Duration;

use echo::{servers, tonic_gen, volo_gen};
use registry_ext::{volo::VoloDiscover, Instance, MemoryRegistry, Registry};
use tokio::{net::TcpListener, sync::watch};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    // The registry every server registers into and every client resolves from.
    // In production this is `registry_ext::etcd::EtcdRegistry` (see examples/etcd).
    let registry = MemoryRegistry::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let volo_listener = TcpListener::bind("127.0.0.1:0").await?;
    let volo_addr = volo_listener.local_addr()?;
    let volo_server = tokio::spawn(servers::serve_volo(volo_listener, stopped(stop_rx.clone())));
    let volo_registration = registry
        .register(Instance::new("echo-volo", volo_addr))
        .await?;

    let tonic_listener = TcpListener::bind("127.0.0.1:0").await?;
    let tonic_addr = tonic_listener.local_addr()?;
    let tonic_server = tokio::spawn(servers::serve_tonic(
        tonic_listener,
        stopped(stop_rx.clone()),
    ));
    let tonic_registration = registry
        .register(Instance::new("echo-tonic", tonic_addr))
        .await?;

    println!("Volo gRPC Echo server on {volo_addr}, registered as \"echo-volo\"");
    println!("tonic Echo server on {tonic_addr}, registered as \"echo-tonic\"");

    // Volo client: finds "echo-volo" through the registry.
    let volo_client = volo_gen::echo::EchoClientBuilder::new("echo-volo")
        .discover(VoloDiscover::new(registry.clone()))
        .build();
    // tonic client: a channel balanced over whatever "echo-tonic" resolves to.
    let channel = registry_ext::tower::balanced_channel(&registry, "echo-tonic").await?;
    let mut tonic_client = tonic_gen::echo_client::EchoClient::new(channel);

    for i in 1..=3 {
        let reply = volo_client
            .say(volo_gen::echo::SayRequest {
                message: format!("hello #{i} from a Volo client").into(),
            })
            .await?
            .into_inner();
        println!("volo  -> {:?} served by {}", reply.message, reply.served_by);

        let reply = tonic_client
            .say(tonic_gen::SayRequest {
                message: format!("hello #{i} from a tonic client"),
            })
            .await?
            .into_inner();
        println!("tonic -> {:?} served by {}", reply.message, reply.served_by);
    }

    // Graceful shutdown: leave the registry first, then stop serving.
    volo_registration.deregister().await?;
    tonic_registration.deregister().await?;
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(5), async {
        let _ = volo_server.await;
        let _ = tonic_server.await;
    })
    .await?;
    println!("deregistered both servers and shut down cleanly");
    Ok(())
}
