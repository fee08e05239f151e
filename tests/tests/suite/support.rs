//! Helpers shared by the integration tests.

use std::{net::SocketAddr, time::Duration};

use rpc_ext_registry::{Instance, ServiceWatch};
use rpc_ext_tracing::{
    otlp::{OtlpTracing, TracingGuard, Transport},
    RpcTracing,
};
use tests::otlp::{OtlpReceiver, Protocol};

use echo::tonic_gen;

/// An example binary built next to the test binary (`scripts/test.sh`
/// builds them first: `cargo build --workspace --all-features --bins`).
pub fn example_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    // target/<profile>/deps/suite-<hash> → target/<profile>/<name>
    let exe = std::env::current_exe()?;
    let candidate = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|dir| dir.join(name));
    match candidate {
        Some(path) if path.is_file() => Ok(path),
        _ => anyhow::bail!(
            "the `{name}` example is not built: run `cargo build --workspace --all-features \
             --bins` (scripts/test.sh does)"
        ),
    }
}

/// How long a change may take to reach a watcher in these tests; the
/// measured figures are in BENCHMARKS.md.
pub const WATCH_DEADLINE: Duration = Duration::from_secs(2);

/// How long recovery after an etcd fault may take: backoff cap + lease TTL.
pub const RECOVERY_DEADLINE: Duration = Duration::from_secs(20);

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn instance(service: &str, port: u16) -> Instance {
    Instance::new(service, addr(port))
}

/// Waits until the watch shows exactly `ports` (sorted).
pub async fn wait_for_ports(
    watch: &mut ServiceWatch,
    ports: &[u16],
    deadline: Duration,
) -> anyhow::Result<()> {
    let want: Vec<SocketAddr> = ports.iter().map(|p| addr(*p)).collect();
    wait_for_addresses(watch, &want, deadline).await
}

/// Waits until the watch shows exactly `want`, in address order.
pub async fn wait_for_addresses(
    watch: &mut ServiceWatch,
    want: &[SocketAddr],
    deadline: Duration,
) -> anyhow::Result<()> {
    tokio::time::timeout(
        deadline,
        watch.wait_for(|instances| instances.iter().map(|i| i.address).eq(want.iter().copied())),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "{} did not show {want:?} within {deadline:?}; it shows {:?}",
            watch.service(),
            watch.current().instances
        )
    })??;
    Ok(())
}

/// A pipeline for one "service": its own provider and resource, exporting
/// over `protocol` to the receiver, not installed globally.
pub fn pipeline(
    service: &str,
    receiver: &OtlpReceiver,
    protocol: Protocol,
) -> anyhow::Result<(TracingGuard, RpcTracing)> {
    let guard = OtlpTracing::new()
        .service_name(service)
        .transport(transport(protocol))
        .endpoint(receiver.endpoint_for(protocol))
        .scheduled_delay(Duration::from_millis(100))
        .install_global(false)
        .install()?;
    let tracing = RpcTracing::builder()
        .tracer_provider(guard.provider())
        .propagator(opentelemetry::propagation::TextMapCompositePropagator::new(
            vec![
                Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
                Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
            ],
        ))
        .build();
    Ok((guard, tracing))
}

/// The exporter setting for the harness's protocol.
pub fn transport(protocol: Protocol) -> Transport {
    match protocol {
        Protocol::Grpc => Transport::Grpc,
        Protocol::HttpProtobuf => Transport::HttpProtobuf,
    }
}

pub type TracedTonicClient = tonic_gen::echo_client::EchoClient<
    rpc_ext_tracing::tower::TracingService<tonic::transport::Channel>,
>;

pub type TonicEchoClient = tonic_gen::echo_client::EchoClient<tonic::transport::Channel>;

/// A traced tonic Echo server and a client connected to it.
pub async fn traced_tonic_echo(
    tracing: &RpcTracing,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<TonicEchoClient> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut stopped = stop;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(tracing))
            .add_service(tonic_gen::echo_server::EchoServer::new(
                echo::servers::TonicEcho { served_by: addr },
            ))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(tonic_gen::echo_client::EchoClient::new(channel))
}

/// Waits until etcd itself holds `count` keys under the `echo` prefix.
pub async fn wait_for_keys(endpoint: &str, count: usize) -> anyhow::Result<()> {
    let raw = etcd_client::Client::connect([endpoint], None).await?;
    tests::eventually(RECOVERY_DEADLINE, "registrations in etcd", || {
        let mut raw = raw.clone();
        async move {
            let keys = raw
                .get(
                    "/registry-ext/echo/",
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .ok()?;
            (keys.kvs().len() == count).then_some(())
        }
    })
    .await
}
