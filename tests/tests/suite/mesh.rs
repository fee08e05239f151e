//! Mesh mode end to end: real clients and servers, every one traced by
//! rpc-ext-tracing in mesh mode and discovering through the mesh-mode
//! wrapper around a real etcd, with a stand-in sidecar
//! ([`tests::sidecar`], not Envoy) in front of each server.
//!
//! Two chains, each `client → sidecar → relay → sidecar → backend`:
//! Volo → tonic → Volo, and tonic → Volo → tonic. Each test asserts one
//! trace across every span the OTLP receiver decoded and every hop the
//! sidecars recorded, the exact parent chain through the sidecars' spans,
//! the `x-request-id` the first sidecar generated reaching the backend,
//! and etcd holding no key after the servers registered.

use std::{net::SocketAddr, time::Duration};

use echo::{
    servers::{TonicEcho, TonicReplies, VoloReplies},
    tonic_gen, volo_gen,
};
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue};
use rpc_ext_registry::{
    etcd::{EtcdRegistry, EtcdResolver},
    mesh::{MeshAware, MeshMode},
    volo::VoloDiscover,
    Instance, Registration, Registry, Resolver,
};
use rpc_ext_tracing::{
    otlp::{OtlpTracing, TracingGuard},
    RpcTracing,
};
use tests::{
    otlp::{OtlpReceiver, Protocol, ReceivedSpan, SPAN_KIND_CLIENT, SPAN_KIND_SERVER},
    sidecar::{Hop, Sidecar, TraceFormat},
    EtcdServer,
};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceBuilder;

use crate::support::{transport, until_stopped, TracedTonicClient};

/// Generous on a loaded 2-core machine: a fresh client connects and its
/// balancer learns its one endpoint before the call is answered.
const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// How long the four spans may take to reach the receiver.
const EXPORT_DEADLINE: Duration = Duration::from_secs(15);

/// Which framework serves where.
#[derive(Debug, Clone, Copy)]
enum Chain {
    /// Volo client → tonic relay → Volo backend.
    VoloTonicVolo,
    /// tonic client → Volo relay → tonic backend.
    TonicVoloTonic,
}

/// The relay: serves Echo's `Say` by making the same call to "backend".
#[derive(Clone)]
struct TonicRelay {
    backend: TracedTonicClient,
}

#[tonic::async_trait]
impl tonic_gen::echo_server::Echo for TonicRelay {
    async fn say(
        &self,
        request: tonic::Request<tonic_gen::SayRequest>,
    ) -> Result<tonic::Response<tonic_gen::SayReply>, tonic::Status> {
        self.backend.clone().say(request.into_inner()).await
    }

    type CountStream = TonicReplies;

    // Only `Say` is relayed: the chains make unary calls.
    async fn count(
        &self,
        _: tonic::Request<tonic_gen::CountRequest>,
    ) -> Result<tonic::Response<TonicReplies>, tonic::Status> {
        Err(tonic::Status::unimplemented("not relayed"))
    }

    async fn collect(
        &self,
        _: tonic::Request<tonic::Streaming<tonic_gen::SayRequest>>,
    ) -> Result<tonic::Response<tonic_gen::SayReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("not relayed"))
    }

    type ChatStream = TonicReplies;

    async fn chat(
        &self,
        _: tonic::Request<tonic::Streaming<tonic_gen::SayRequest>>,
    ) -> Result<tonic::Response<TonicReplies>, tonic::Status> {
        Err(tonic::Status::unimplemented("not relayed"))
    }
}

/// The relay, for Volo.
#[derive(Clone)]
struct VoloRelay {
    backend: volo_gen::echo::EchoClient,
}

impl volo_gen::echo::Echo for VoloRelay {
    async fn say(
        &self,
        request: volo_grpc::Request<volo_gen::echo::SayRequest>,
    ) -> Result<volo_grpc::Response<volo_gen::echo::SayReply>, volo_grpc::Status> {
        self.backend.say(request.into_inner()).await
    }

    async fn count(
        &self,
        _: volo_grpc::Request<volo_gen::echo::CountRequest>,
    ) -> Result<volo_grpc::Response<VoloReplies>, volo_grpc::Status> {
        Err(volo_grpc::Status::unimplemented("not relayed"))
    }

    async fn collect(
        &self,
        _: volo_grpc::Request<volo_grpc::RecvStream<volo_gen::echo::SayRequest>>,
    ) -> Result<volo_grpc::Response<volo_gen::echo::SayReply>, volo_grpc::Status> {
        Err(volo_grpc::Status::unimplemented("not relayed"))
    }

    async fn chat(
        &self,
        _: volo_grpc::Request<volo_grpc::RecvStream<volo_gen::echo::SayRequest>>,
    ) -> Result<volo_grpc::Response<VoloReplies>, volo_grpc::Status> {
        Err(volo_grpc::Status::unimplemented("not relayed"))
    }
}

/// W3C trace context with baggage, what `OTEL_PROPAGATORS` defaults to.
fn w3c() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
        Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
    ])
}

/// B3 multi-header: the opentelemetry-zipkin propagator that
/// `OTEL_PROPAGATORS=b3multi` selects with rpc-ext-tracing's feature `b3`,
/// set in code here.
// opentelemetry-zipkin is deprecated for its exporter; its propagator is
// still the maintained B3 implementation.
#[allow(deprecated)]
fn b3_multi() -> opentelemetry_zipkin::Propagator {
    opentelemetry_zipkin::Propagator::with_encoding(
        opentelemetry_zipkin::B3Encoding::MultipleHeader,
    )
}

/// One service's tracing in mesh mode, exporting to the receiver,
/// propagating in the format the sidecars write.
fn mesh_tracing(
    service: &str,
    receiver: &OtlpReceiver,
    format: TraceFormat,
) -> anyhow::Result<(TracingGuard, RpcTracing)> {
    let guard = OtlpTracing::new()
        .service_name(service)
        .transport(transport(Protocol::Grpc))
        .endpoint(receiver.endpoint_for(Protocol::Grpc))
        .scheduled_delay(Duration::from_millis(100))
        .install_global(false)
        .install()?;
    let builder = RpcTracing::builder()
        .tracer_provider(guard.provider())
        .mesh(rpc_ext_tracing::MeshMode::On);
    let builder = match format {
        TraceFormat::B3Multi => builder.propagator(b3_multi()),
        TraceFormat::W3c | TraceFormat::Both => builder.propagator(w3c()),
    };
    Ok((guard, builder.build()))
}

/// Serves a tonic Echo (`TonicEcho`, or a relay) on `listener`, traced.
fn serve_tonic<S>(
    listener: TcpListener,
    tracing: &RpcTracing,
    service: S,
    stopped: watch::Receiver<bool>,
) where
    S: tonic_gen::echo_server::Echo,
{
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(tracing))
            .add_service(tonic_gen::echo_server::EchoServer::new(service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                until_stopped(stopped),
            ),
    );
}

/// Serves a Volo Echo (`VoloEcho`, or a relay) on `listener`, traced.
fn serve_volo<S>(
    listener: TcpListener,
    tracing: &RpcTracing,
    service: S,
    stopped: watch::Receiver<bool>,
) where
    S: volo_gen::echo::Echo + Send + Sync + 'static,
{
    tokio::spawn(
        volo_grpc::server::Server::new()
            .layer_front(rpc_ext_tracing::volo::GrpcTracingLayer::server(tracing))
            .add_service(
                volo_grpc::server::ServiceBuilder::new(volo_gen::echo::EchoServer::new(service))
                    .build(),
            )
            .run_with_shutdown(
                volo::net::incoming::DefaultIncoming::from(listener),
                async move {
                    until_stopped(stopped).await;
                    Ok(())
                },
            ),
    );
}

/// A traced tonic Echo client of `service`, through the resolver.
async fn tonic_client<R: Resolver>(
    resolver: &R,
    service: &str,
    tracing: &RpcTracing,
) -> anyhow::Result<TracedTonicClient> {
    let channel = rpc_ext_registry::tonic::balanced_channel(resolver, service).await?;
    Ok(tonic_gen::echo_client::EchoClient::new(
        ServiceBuilder::new()
            .layer(rpc_ext_tracing::tower::TracingLayer::client(tracing))
            .service(channel),
    ))
}

/// A traced Volo Echo client of `service`, through the resolver.
fn volo_client<R>(
    resolver: &R,
    service: &'static str,
    tracing: &RpcTracing,
) -> volo_gen::echo::EchoClient
where
    R: Resolver + Clone + Send + Sync + 'static,
{
    volo_gen::echo::EchoClientBuilder::new(service)
        .layer_outer(rpc_ext_tracing::volo::GrpcTracingLayer::client(tracing))
        .discover(VoloDiscover::new(resolver.clone()))
        .build()
}

/// Every key etcd holds.
async fn etcd_keys(etcd: &EtcdServer) -> anyhow::Result<Vec<String>> {
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let response = raw
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect())
}

/// The only span of `service` of `kind`.
fn one<'a>(spans: &'a [ReceivedSpan], service: &str, kind: i32) -> &'a ReceivedSpan {
    let matching: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.kind == kind)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one {service} span of kind {kind}: {spans:#?}"
    );
    matching[0]
}

/// The only hop a sidecar recorded.
fn only_hop(sidecar: &Sidecar, which: &str) -> Hop {
    let hops = sidecar.hops();
    assert_eq!(hops.len(), 1, "{which} sidecar: {hops:#?}");
    hops[0].clone()
}

/// The receiver's rendering of a one-string array attribute.
fn string_array(value: &str) -> String {
    format!(
        "{:?}",
        any_value::Value::ArrayValue(ArrayValue {
            values: vec![AnyValue {
                value: Some(any_value::Value::StringValue(value.to_owned())),
            }],
        })
    )
}

/// UUID text form, version 4, RFC 4122 variant (Envoy's request ids).
fn is_uuid_v4(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
        })
        && bytes[14] == b'4'
        && matches!(bytes[19], b'8' | b'9' | b'a' | b'b')
}

/// Runs one call down `chain` with sidecars writing `format`, and asserts
/// what the module's documentation says.
async fn one_call_down(chain: Chain, format: TraceFormat) -> anyhow::Result<()> {
    tests::init_test_logging();
    let receiver = OtlpReceiver::start().await?;
    let etcd = EtcdServer::start().await?;
    let (caller_guard, caller_tracing) = mesh_tracing("caller", &receiver, format)?;
    let (relay_guard, relay_tracing) = mesh_tracing("relay", &receiver, format)?;
    let (backend_guard, backend_tracing) = mesh_tracing("backend", &receiver, format)?;
    let (stop, stopped) = watch::channel(false);

    // The servers' addresses first: each sidecar stands in front of one.
    let backend_listener = TcpListener::bind("127.0.0.1:0").await?;
    let backend = backend_listener.local_addr()?;
    let relay_listener = TcpListener::bind("127.0.0.1:0").await?;
    let relay = relay_listener.local_addr()?;
    let relay_sidecar = Sidecar::start(relay, format).await?;
    let backend_sidecar = Sidecar::start(backend, format).await?;

    // Discovery in mesh mode, a real etcd behind it: each name resolves to
    // the sidecar the mesh routes it to.
    let resolver = MeshAware::builder(EtcdResolver::builder([etcd.endpoint()]).build().await?)
        .mode(MeshMode::On)
        .route("relay", relay_sidecar.address().to_string())
        .route("backend", backend_sidecar.address().to_string())
        .build();
    let routed = |sidecar: &Sidecar| vec![sidecar.address()];
    let resolved = |instances: std::sync::Arc<[std::sync::Arc<Instance>]>| {
        instances
            .iter()
            .map(|i| i.address)
            .collect::<Vec<SocketAddr>>()
    };
    assert_eq!(
        resolved(resolver.resolve("relay").await?),
        routed(&relay_sidecar)
    );
    assert_eq!(
        resolved(resolver.resolve("backend").await?),
        routed(&backend_sidecar)
    );

    match chain {
        Chain::VoloTonicVolo => {
            serve_volo(
                backend_listener,
                &backend_tracing,
                echo::servers::VoloEcho { served_by: backend },
                stopped.clone(),
            );
            let to_backend = tonic_client(&resolver, "backend", &relay_tracing).await?;
            serve_tonic(
                relay_listener,
                &relay_tracing,
                TonicRelay {
                    backend: to_backend,
                },
                stopped.clone(),
            );
        }
        Chain::TonicVoloTonic => {
            serve_tonic(
                backend_listener,
                &backend_tracing,
                TonicEcho { served_by: backend },
                stopped.clone(),
            );
            serve_volo(
                relay_listener,
                &relay_tracing,
                VoloRelay {
                    backend: volo_client(&resolver, "backend", &relay_tracing),
                },
                stopped.clone(),
            );
        }
    }

    // The servers register as they would without a mesh; in mesh mode
    // nothing reaches etcd.
    let registry = MeshAware::builder(EtcdRegistry::builder([etcd.endpoint()]).build().await?)
        .mode(MeshMode::On)
        .build();
    let registrations: Vec<Registration> = vec![
        registry.register(Instance::new("backend", backend)).await?,
        registry.register(Instance::new("relay", relay)).await?,
    ];
    assert_eq!(
        etcd_keys(&etcd).await?,
        Vec::<String>::new(),
        "etcd holds keys"
    );

    let served_by = match chain {
        Chain::VoloTonicVolo => {
            let client = volo_client(&resolver, "relay", &caller_tracing);
            let call = client.say(volo_gen::echo::SayRequest {
                message: "through the mesh".into(),
            });
            let reply = tokio::time::timeout(CALL_DEADLINE, call)
                .await??
                .into_inner();
            assert_eq!(reply.message, "through the mesh");
            reply.served_by.to_string()
        }
        Chain::TonicVoloTonic => {
            let mut client = tonic_client(&resolver, "relay", &caller_tracing).await?;
            let call = client.say(tonic_gen::SayRequest {
                message: "through the mesh".into(),
            });
            let reply = tokio::time::timeout(CALL_DEADLINE, call)
                .await??
                .into_inner();
            assert_eq!(reply.message, "through the mesh");
            reply.served_by
        }
    };
    assert_eq!(served_by, backend.to_string());

    for guard in [&caller_guard, &relay_guard, &backend_guard] {
        guard.provider().force_flush()?;
    }
    let spans = receiver
        .wait_for(EXPORT_DEADLINE, "four spans", |spans| spans.len() >= 4)
        .await?;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let caller_client = one(&spans, "caller", SPAN_KIND_CLIENT);
    let relay_server = one(&spans, "relay", SPAN_KIND_SERVER);
    let relay_client = one(&spans, "relay", SPAN_KIND_CLIENT);
    let backend_server = one(&spans, "backend", SPAN_KIND_SERVER);
    let front = only_hop(&relay_sidecar, "relay's");
    let back = only_hop(&backend_sidecar, "backend's");
    let front_span = front.span.clone().expect("the first sidecar's span");
    let back_span = back.span.clone().expect("the second sidecar's span");

    // One trace: every span decoded, every hop recorded.
    let trace = &caller_client.trace_id;
    assert!(spans.iter().all(|s| &s.trace_id == trace), "{spans:#?}");
    assert_eq!(&front_span.trace_id, trace);
    assert_eq!(&back_span.trace_id, trace);

    // The parent chain, through both sidecars' spans.
    assert_eq!(
        caller_client.parent_span_id, "",
        "the caller starts the trace"
    );
    assert_eq!(
        front_span.parent_span_id.as_deref(),
        Some(&*caller_client.span_id)
    );
    assert_eq!(relay_server.parent_span_id, front_span.span_id);
    assert_eq!(relay_client.parent_span_id, relay_server.span_id);
    assert_eq!(
        back_span.parent_span_id.as_deref(),
        Some(&*relay_client.span_id)
    );
    assert_eq!(backend_server.parent_span_id, back_span.span_id);
    assert!(front_span.sampled && back_span.sampled);

    // The first sidecar generated the request id; the relay forwarded it,
    // the second sidecar kept it, the backend got it.
    assert!(front.request_id_generated, "{front:#?}");
    assert!(is_uuid_v4(&front.request_id), "{}", front.request_id);
    assert!(!back.request_id_generated, "{back:#?}");
    assert_eq!(back.request_id, front.request_id);
    let recorded = string_array(&front.request_id);
    assert_eq!(
        relay_server.attr("rpc.request.metadata.x-request-id"),
        recorded
    );
    assert_eq!(
        backend_server.attr("rpc.request.metadata.x-request-id"),
        recorded
    );

    for hop in [&front, &back] {
        assert_eq!(hop.path, "/echo.Echo/Say");
        assert_eq!(
            (hop.status, hop.grpc_status.as_deref()),
            (Some(200), Some("0"))
        );
    }

    // Still nothing in etcd once the calls are done; then deregistering
    // in mesh mode succeeds.
    assert_eq!(
        etcd_keys(&etcd).await?,
        Vec::<String>::new(),
        "etcd holds keys"
    );
    for registration in registrations {
        registration.deregister().await?;
    }
    let _ = stop.send(true);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volo_to_tonic_relay_to_volo_through_sidecars_is_one_trace() -> anyhow::Result<()> {
    one_call_down(Chain::VoloTonicVolo, TraceFormat::W3c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_to_volo_relay_to_tonic_through_sidecars_is_one_trace() -> anyhow::Result<()> {
    one_call_down(Chain::TonicVoloTonic, TraceFormat::W3c).await
}

/// Sidecars writing B3 only (Envoy's Zipkin tracer), services propagating
/// B3 multi-header: the same chain, the same assertions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_sidecars_and_b3multi_services_are_one_trace() -> anyhow::Result<()> {
    one_call_down(Chain::VoloTonicVolo, TraceFormat::B3Multi).await
}
