//! The README's wiring, compiled and run: every line of the README's Rust
//! snippets appears here, in order (a test in `tests/` checks it), inside a
//! program that serves and calls.
//!
//! ```text
//! cargo run -p examples --bin wiring                      # metrics and tracing: Volo gRPC, Thrift and HTTP, tonic
//! cargo run -p examples --features etcd --bin wiring -- etcd   # + registry wiring (etcd on 127.0.0.1:2379)
//! cargo run -p examples --features fastrace --bin wiring -- fastrace   # + a tonic call on the fastrace path
//! ```
//!
//! Spans go to stdout unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set;
//! `METRICS_ADDR` overrides the metrics address.

use std::net::SocketAddr;

use echo::{
    servers::{ThriftEcho, TonicEcho, VoloEcho},
    tonic_gen::{echo_client::EchoClient, echo_server::EchoServer, SayRequest},
    volo_gen::echo::EchoClientBuilder,
};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let volo_listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = volo_listener.local_addr()?;
    let tonic_listener = TcpListener::bind("127.0.0.1:0").await?;
    let tonic_addr = tonic_listener.local_addr()?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{tonic_addr}"))?.connect_lazy();
    let thrift_listener = TcpListener::bind("127.0.0.1:0").await?;
    let thrift_addr = thrift_listener.local_addr()?;
    let http_listener = TcpListener::bind("127.0.0.1:0").await?;
    let http_addr = http_listener.local_addr()?;
    let router: volo_http::server::route::Router = volo_http::server::route::Router::new().route(
        "/users/{id}",
        volo_http::server::route::get(|| async { "a user" }),
    );

    // README: rpc-ext-metrics with Volo and with tonic
    use rpc_ext_metrics::{MetricsEndpoint, RpcMetrics};

    let metrics = RpcMetrics::builder().build()?; // once per process
    let metrics_addr: SocketAddr = "0.0.0.0:9464".parse()?;
    let metrics_addr = std::env::var("METRICS_ADDR").map_or(Ok(metrics_addr), |a| a.parse())?;
    let endpoint = MetricsEndpoint::serve(metrics_addr, metrics.registry().clone()).await?;

    // Volo gRPC
    let volo_server = volo_grpc::server::Server::new()
        .layer_front(rpc_ext_metrics::volo::MetricsLayer::server(&metrics));
    let volo_client = EchoClientBuilder::new("echo")
        .layer_outer(rpc_ext_metrics::volo::MetricsLayer::client(&metrics));
    // tonic: Server::builder().layer(tonic_metrics)
    let tonic_metrics = rpc_ext_metrics::tower::MetricsLayer::server(&metrics);
    let tonic_client = EchoClient::new(
        tower::ServiceBuilder::new()
            .layer(rpc_ext_metrics::tower::MetricsLayer::client(&metrics).server_address("echo"))
            .service(channel.clone()),
    );

    // README: rpc-ext-tracing with Volo and with tonic
    use rpc_ext_tracing::{otlp::OtlpTracing, RpcTracing};

    let guard = OtlpTracing::new().service_name("echo").install()?; // OTEL_* env honoured
    let guard = stdout_unless_otlp(guard);
    let tracing = RpcTracing::builder()
        .tracer_provider(guard.provider()) // called directly, not through the global provider
        .build(); // propagators from OTEL_PROPAGATORS

    // Volo gRPC
    let volo_server =
        volo_server.layer_front(rpc_ext_tracing::volo::GrpcTracingLayer::server(&tracing));
    let volo_client = volo_client
        .layer_outer_front(rpc_ext_tracing::volo::GrpcTracingLayer::client(&tracing))
        .address(addr) // or .discover(...): see rpc-ext-registry
        .build();
    // tonic: the first layer is the outermost
    let mut tonic_server = tonic::transport::Server::builder()
        .layer(rpc_ext_tracing::tower::TracingLayer::server(&tracing))
        .layer(tonic_metrics);
    let mut traced_client = EchoClient::new(
        tower::ServiceBuilder::new()
            .layer(rpc_ext_tracing::tower::TracingLayer::client(&tracing))
            .service(channel),
    );

    // README: Volo Thrift and Volo HTTP
    use echo::thrift::volo_thrift_gen::echo::{ThriftEchoClientBuilder, ThriftEchoServer};

    let thrift_server = ThriftEchoServer::new(ThriftEcho {
        served_by: thrift_addr,
    })
    .layer_front(rpc_ext_metrics::volo::MetricsLayer::server(&metrics))
    .layer_front(rpc_ext_tracing::volo::ThriftTracingLayer::server(&tracing));
    let thrift_client = ThriftEchoClientBuilder::new("echo-thrift")
        .layer_outer(rpc_ext_tracing::volo::ThriftTracingLayer::client(&tracing))
        .layer_outer(rpc_ext_metrics::volo::MetricsLayer::client(&metrics))
        .address(thrift_addr)
        .build();
    let http_server = volo_http::server::Server::new(router)
        .layer(rpc_ext_tracing::volo::HttpTracingLayer::new(&tracing))
        .layer(rpc_ext_metrics::volo::HttpMetricsLayer::new(&metrics));
    let http_client = volo_http::client::Client::builder()
        .layer_outer(rpc_ext_tracing::volo::HttpTracingLayer::new(&tracing))
        .layer_outer(rpc_ext_metrics::volo::HttpMetricsLayer::new(&metrics))
        .build()?;

    // README: export counters next to the RPC metrics
    metrics.registry().register(Box::new(
        rpc_ext_tracing::prometheus::ExportStatsCollector::new(guard.stats().clone()),
    ))?;

    // Serve, call each server once through each client, stop.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let volo = tokio::spawn(
        volo_server
            .add_service(
                volo_grpc::server::ServiceBuilder::new(echo::volo_gen::echo::EchoServer::new(
                    VoloEcho { served_by: addr },
                ))
                .build(),
            )
            .run_with_shutdown(volo::net::incoming::DefaultIncoming::from(volo_listener), {
                let mut stopped = stopped.clone();
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                    Ok(())
                }
            }),
    );
    let tonic = tokio::spawn(
        tonic_server
            .add_service(EchoServer::new(TonicEcho {
                served_by: tonic_addr,
            }))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(tonic_listener),
                async move {
                    let mut stopped = stopped;
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ),
    );
    let thrift = tokio::spawn(
        thrift_server.run(volo::net::incoming::DefaultIncoming::from(thrift_listener)),
    );
    let http =
        tokio::spawn(http_server.run(volo::net::incoming::DefaultIncoming::from(http_listener)));
    let reply = volo_client
        .say(echo::volo_gen::echo::SayRequest {
            message: "hi".into(),
        })
        .await?;
    println!("volo  -> served by {}", reply.into_inner().served_by);

    // README: a Volo client's streaming reply
    use rpc_ext_tracing::volo::ObservedStream;

    let request = echo::volo_gen::echo::CountRequest {
        message: "tick".into(),
        count: 3,
        interval_ms: 10,
    };
    let mut replies = ObservedStream::new(volo_client.count(request).await?);
    while let Some(reply) = replies.message().await? {
        println!("volo  stream -> {}", reply.message);
    }

    let reply = thrift_client
        .say(echo::thrift::volo_thrift_gen::echo::SayRequest {
            message: "hi".into(),
        })
        .await?;
    if let volo_thrift::MaybeException::Ok(reply) = reply {
        println!("thrift -> served by {}", reply.served_by);
    }
    let response = http_client
        .get(format!("http://{http_addr}/users/7"))
        .send::<volo_http::body::Body>()
        .await?;
    println!("http  -> served by {http_addr} ({})", response.status());
    let reply = tonic_client
        .clone()
        .say(SayRequest {
            message: "hi".into(),
        })
        .await?;
    println!(
        "tonic -> served by {} (metrics)",
        reply.into_inner().served_by
    );
    let reply = traced_client
        .say(SayRequest {
            message: "hi".into(),
        })
        .await?;
    println!(
        "tonic -> served by {} (tracing)",
        reply.into_inner().served_by
    );
    let _ = stop.send(true);
    let _ = volo.await;
    let _ = tonic.await;
    thrift.abort();
    http.abort();
    let text = rpc_ext_metrics::encode_text(metrics.registry())?;
    let calls = text
        .lines()
        .filter(|l| l.starts_with("rpc_client_call_duration_seconds_count"))
        .count();
    println!("client series: {calls}");
    endpoint.shutdown().await;

    guard.shutdown()?; // export what is queued, within 5 s

    #[cfg(feature = "etcd")]
    if std::env::args().nth(1).as_deref() == Some("etcd") {
        registry_with_volo().await?;
        registry_with_tonic().await?;
        registry_in_mesh_mode().await?;
    }
    #[cfg(feature = "fastrace")]
    if std::env::args().nth(1).as_deref() == Some("fastrace") {
        fastrace_path().await?;
    }
    Ok(())
}

/// README: the fastrace path, a tonic server and client traced with it.
#[cfg(feature = "fastrace")]
async fn fastrace_path() -> anyhow::Result<()> {
    use rpc_ext_tracing::{otlp::OtlpTracing, tower::TracingLayer, RpcTracing};

    let _guard = OtlpTracing::new().service_name("echo").install_fastrace()?;
    let tracing = RpcTracing::builder().fastrace().build();

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(TracingLayer::server(&tracing))
            .add_service(EchoServer::new(TonicEcho { served_by: addr }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = EchoClient::new(
        tower::ServiceBuilder::new()
            .layer(TracingLayer::client(&tracing))
            .service(channel),
    );
    let reply = client
        .say(SayRequest {
            message: "hi".into(),
        })
        .await?;
    println!(
        "tonic -> served by {} (fastrace)",
        reply.into_inner().served_by
    );
    server.abort();
    Ok(())
}

/// Spans to stdout when no collector is configured, so the example runs
/// anywhere.
fn stdout_unless_otlp(
    guard: rpc_ext_tracing::otlp::TracingGuard,
) -> rpc_ext_tracing::otlp::TracingGuard {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        return guard;
    }
    drop(guard);
    rpc_ext_tracing::otlp::OtlpTracing::new()
        .service_name("echo")
        .install_with_exporter(opentelemetry_stdout::SpanExporter::default())
}

/// README: rpc-ext-registry with Volo.
#[cfg(feature = "etcd")]
async fn registry_with_volo() -> anyhow::Result<()> {
    use rpc_ext_registry::{
        etcd::{EtcdRegistry, EtcdResolver},
        volo::VoloDiscover,
        Instance, Registry,
    };

    // server: register, serve, deregister on shutdown
    let registry = EtcdRegistry::builder(["http://127.0.0.1:2379"])
        .build()
        .await?;
    let registration = registry
        .register(Instance::new("echo", "0.0.0.0:50051".parse()?))
        .await?;
    // ... Server::new().add_service(...).run_with_shutdown(incoming, signal).await
    registration.deregister().await?;

    // client: the load balancer follows etcd
    let resolver = EtcdResolver::builder(["http://127.0.0.1:2379"])
        .build()
        .await?;
    let client = EchoClientBuilder::new("echo")
        .discover(VoloDiscover::new(resolver))
        .build();
    let _ = client;
    Ok(())
}

/// README: rpc-ext-registry with tonic.
#[cfg(feature = "etcd")]
async fn registry_with_tonic() -> anyhow::Result<()> {
    use rpc_ext_registry::{etcd::EtcdResolver, tonic::balanced_channel};

    let resolver = EtcdResolver::builder(["http://127.0.0.1:2379"])
        .build()
        .await?;
    let channel = balanced_channel(&resolver, "echo").await?; // a tonic Channel over the live set
    let client = EchoClient::new(channel);
    let _ = client;
    Ok(())
}

/// README: Mesh mode.
#[cfg(feature = "etcd")]
async fn registry_in_mesh_mode() -> anyhow::Result<()> {
    use rpc_ext_registry::{
        etcd::{EtcdRegistry, EtcdResolver},
        volo::VoloDiscover,
        Instance, Registry,
    };
    let etcd_registry = EtcdRegistry::builder(["http://127.0.0.1:2379"])
        .build()
        .await?;
    let etcd_resolver = EtcdResolver::builder(["http://127.0.0.1:2379"])
        .build()
        .await?;

    use rpc_ext_registry::mesh::{MeshAware, MeshMode};

    // MeshMode::Auto (the default): on in a pod with Istio's sidecar, or with RPC_EXT_MESH=on
    let registry = MeshAware::builder(etcd_registry)
        .mode(MeshMode::Auto)
        .build(); // in mesh mode register() writes nothing
    let registration = registry
        .register(Instance::new("echo", "0.0.0.0:50051".parse()?))
        .await?;
    // in mesh mode "echo" resolves to echo.<namespace>.svc.cluster.local:50051
    let resolver = MeshAware::builder(etcd_resolver).port(50051).build();
    let client = EchoClientBuilder::new("echo")
        .discover(VoloDiscover::new(resolver))
        .build();
    registration.deregister().await?;
    let _ = client;
    Ok(())
}
