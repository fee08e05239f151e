//! The suite in one process, with no external server.
//!
//! Starts a Volo gRPC Echo server and a tonic Echo server on loopback,
//! registers both in an in-process registry, and calls each through a client
//! that discovers it by service name: Volo's client through
//! `rpc_ext_registry::volo::VoloDiscover`, tonic's through a balanced channel.
//! Every call, server and client side, is recorded by `rpc-ext-metrics` and
//! exposed on `/metrics`, and traced by `rpc-ext-tracing`: spans are printed to
//! stdout, or exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (OTLP/HTTP, port 4318, by default; `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` for
//! port 4317; every other `OTEL_*` variable of the SDK applies).
//!
//! ```text
//! cargo run -p examples --bin quickstart                  # call, print, exit
//! cargo run -p examples --bin quickstart -- --keep-running # keep calling until Ctrl-C
//! ```
//!
//! `METRICS_ADDR` sets the metrics address (default `127.0.0.1:9464`; use
//! `0.0.0.0:9464` for the docker-compose Prometheus).

use std::{net::SocketAddr, time::Duration};

use echo::{
    servers::{TonicEcho, VoloEcho},
    tonic_gen, volo_gen,
};
use rpc_ext_metrics::{MetricsEndpoint, RpcMetrics};
use rpc_ext_registry::{volo::VoloDiscover, Instance, MemoryRegistry, Registry};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,volo_grpc=warn".into()),
        )
        .init();
    let keep_running = std::env::args().any(|a| a == "--keep-running");

    // Tracing: stdout by default, OTLP when a collector is configured.
    let tracing_pipeline = rpc_ext_tracing::otlp::OtlpTracing::new().service_name("quickstart");
    let tracing_guard = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        println!(
            "exporting spans over OTLP to {:?}",
            std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        );
        tracing_pipeline.install()?
    } else {
        tracing_pipeline.install_with_exporter(opentelemetry_stdout::SpanExporter::default())
    };
    let tracing = rpc_ext_tracing::RpcTracing::builder()
        .tracer_provider(tracing_guard.provider())
        .build();

    // One metrics set and one /metrics endpoint for the whole process.
    let metrics = RpcMetrics::builder().build()?;
    let metrics_endpoint = serve_metrics(&metrics).await?;

    // The registry every server registers into and every client resolves from.
    // In production this is `rpc_ext_registry::etcd::EtcdRegistry` (see the discovery example).
    let registry = MemoryRegistry::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    // Volo gRPC server with the metrics layer.
    let volo_listener = TcpListener::bind("127.0.0.1:0").await?;
    let volo_addr = volo_listener.local_addr()?;
    let volo_server = volo_grpc::server::Server::new()
        .layer_front(rpc_ext_metrics::volo::MetricsLayer::server(&metrics))
        .layer_front(rpc_ext_tracing::volo::GrpcTracingLayer::server(&tracing))
        .add_service(
            volo_grpc::server::ServiceBuilder::new(volo_gen::echo::EchoServer::new(VoloEcho {
                served_by: volo_addr,
            }))
            .build(),
        )
        .run_with_shutdown(volo::net::incoming::DefaultIncoming::from(volo_listener), {
            let stopped = stopped(stop_rx.clone());
            async move {
                stopped.await;
                Ok(())
            }
        });
    let volo_server = tokio::spawn(volo_server);
    let volo_registration = registry
        .register(Instance::new("echo-volo", volo_addr))
        .await?;

    // tonic server with the metrics layer.
    let tonic_listener = TcpListener::bind("127.0.0.1:0").await?;
    let tonic_addr = tonic_listener.local_addr()?;
    let tonic_server = tonic::transport::Server::builder()
        .layer(rpc_ext_tracing::tower::TracingLayer::server(&tracing))
        .layer(rpc_ext_metrics::tower::MetricsLayer::server(&metrics))
        .add_service(tonic_gen::echo_server::EchoServer::new(TonicEcho {
            served_by: tonic_addr,
        }))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(tonic_listener).with_nodelay(Some(true)),
            stopped(stop_rx.clone()),
        );
    let tonic_server = tokio::spawn(tonic_server);
    let tonic_registration = registry
        .register(Instance::new("echo-tonic", tonic_addr))
        .await?;

    println!("Volo gRPC Echo server on {volo_addr}, registered as \"echo-volo\"");
    println!("tonic Echo server on {tonic_addr}, registered as \"echo-tonic\"");

    // Volo client: finds "echo-volo" through the registry; records client metrics.
    let volo_client = volo_gen::echo::EchoClientBuilder::new("echo-volo")
        .layer_outer(rpc_ext_metrics::volo::MetricsLayer::client(&metrics))
        .layer_outer(rpc_ext_tracing::volo::GrpcTracingLayer::client(&tracing))
        .discover(VoloDiscover::new(registry.clone()))
        .build();
    // tonic client: a channel balanced over whatever "echo-tonic" resolves to.
    let channel = rpc_ext_registry::tonic::balanced_channel(&registry, "echo-tonic").await?;
    let mut tonic_client = tonic_gen::echo_client::EchoClient::new(
        ServiceBuilder::new()
            .layer(rpc_ext_tracing::tower::TracingLayer::client(&tracing))
            .layer(
                rpc_ext_metrics::tower::MetricsLayer::client(&metrics).server_address("echo-tonic"),
            )
            .service(channel),
    );

    let mut round = 0u64;
    loop {
        round += 1;
        let reply = volo_client
            .say(volo_gen::echo::SayRequest {
                message: format!("hello #{round} from a Volo client").into(),
            })
            .await?
            .into_inner();
        println!("volo  -> {:?} served by {}", reply.message, reply.served_by);

        let reply = tonic_client
            .say(tonic_gen::SayRequest {
                message: format!("hello #{round} from a tonic client"),
            })
            .await?
            .into_inner();
        println!("tonic -> {:?} served by {}", reply.message, reply.served_by);

        if !keep_running && round == 3 {
            break;
        }
        if keep_running {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    println!(
        "\nmetrics at http://{}/metrics, for example:",
        metrics_endpoint.local_addr()
    );
    let text = rpc_ext_metrics::encode_text(metrics.registry())?;
    for line in text.lines().filter(|l| {
        // The call counts: each duration histogram's `_count`.
        l.starts_with("rpc_server_call_duration_seconds_count")
            || l.starts_with("rpc_client_call_duration_seconds_count")
    }) {
        println!("  {line}");
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
    metrics_endpoint.shutdown().await;
    // Export what is queued (within the guard's 5 s deadline), then count.
    let stats = tracing_guard.stats().clone();
    tracing_guard.shutdown()?;
    println!(
        "\nspans: {} ended, {} exported, {} dropped",
        stats.ended(),
        stats.exported(),
        stats.dropped()
    );
    println!("\nderegistered both servers and shut down cleanly");
    Ok(())
}

/// Serves /metrics on `METRICS_ADDR` (default 127.0.0.1:9464), or on a free
/// port when that one is taken.
async fn serve_metrics(metrics: &RpcMetrics) -> anyhow::Result<MetricsEndpoint> {
    let wanted: SocketAddr = std::env::var("METRICS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9464".into())
        .parse()?;
    match MetricsEndpoint::serve(wanted, metrics.registry().clone()).await {
        Ok(endpoint) => Ok(endpoint),
        Err(error) => {
            eprintln!("cannot serve metrics on {wanted} ({error}); using a free port");
            let any = SocketAddr::new(wanted.ip(), 0);
            Ok(MetricsEndpoint::serve(any, metrics.registry().clone()).await?)
        }
    }
}
