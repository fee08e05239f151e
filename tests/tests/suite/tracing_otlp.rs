//! Spans of real Volo gRPC and tonic calls, exported over OTLP/gRPC to a
//! real receiver: one trace across three services.

use std::{net::SocketAddr, time::Duration};

use echo::{servers::TonicEcho, tonic_gen, volo_gen};
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
use rpc_ext_tracing::{otlp::OtlpTracing, RpcTracing};
use tests::otlp::{
    OtlpReceiver, Protocol, ReceivedSpan, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR,
};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceBuilder;

use crate::support::{pipeline, TracedTonicClient};

/// The frontend: a Volo gRPC Echo that relays to the backend over tonic.
#[derive(Clone)]
struct VoloRelay {
    backend: TracedTonicClient,
}

impl volo_gen::echo::Echo for VoloRelay {
    async fn say(
        &self,
        request: volo_grpc::Request<volo_gen::echo::SayRequest>,
    ) -> Result<volo_grpc::Response<volo_gen::echo::SayReply>, volo_grpc::Status> {
        let message = request.into_inner().message.to_string();
        let reply = self
            .backend
            .clone()
            .say(tonic_gen::SayRequest { message })
            .await
            .map_err(|s| {
                volo_grpc::Status::new(
                    volo_grpc::Code::from_i32(s.code() as i32),
                    s.message().to_owned(),
                )
            })?
            .into_inner();
        Ok(volo_grpc::Response::new(volo_gen::echo::SayReply {
            message: reply.message.into(),
            served_by: reply.served_by.into(),
        }))
    }

    // Only `Say` is relayed: these tests make no streaming calls
    // (streaming.rs does).
    async fn count(
        &self,
        _: volo_grpc::Request<volo_gen::echo::CountRequest>,
    ) -> Result<volo_grpc::Response<echo::servers::VoloReplies>, volo_grpc::Status> {
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
    ) -> Result<volo_grpc::Response<echo::servers::VoloReplies>, volo_grpc::Status> {
        Err(volo_grpc::Status::unimplemented("not relayed"))
    }
}

struct Topology {
    frontend: SocketAddr,
    backend: SocketAddr,
    _stop: watch::Sender<bool>,
}

async fn start_topology(
    frontend_tracing: &RpcTracing,
    backend_tracing: &RpcTracing,
) -> anyhow::Result<Topology> {
    let (stop, stopped) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let backend_listener = TcpListener::bind("127.0.0.1:0").await?;
    let backend = backend_listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(
                backend_tracing,
            ))
            .add_service(tonic_gen::echo_server::EchoServer::new(TonicEcho {
                served_by: backend,
            }))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(backend_listener)
                    .with_nodelay(Some(true)),
                wait(stopped.clone()),
            ),
    );

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{backend}"))?.connect_lazy();
    let backend_client = tonic_gen::echo_client::EchoClient::new(
        ServiceBuilder::new()
            .layer(rpc_ext_tracing::tower::TracingLayer::client(
                frontend_tracing,
            ))
            .service(channel),
    );
    let frontend_listener = TcpListener::bind("127.0.0.1:0").await?;
    let frontend = frontend_listener.local_addr()?;
    let stop_frontend = wait(stopped.clone());
    tokio::spawn(
        volo_grpc::server::Server::new()
            .layer_front(rpc_ext_tracing::volo::GrpcTracingLayer::server(
                frontend_tracing,
            ))
            .add_service(
                volo_grpc::server::ServiceBuilder::new(volo_gen::echo::EchoServer::new(
                    VoloRelay {
                        backend: backend_client,
                    },
                ))
                .build(),
            )
            .run_with_shutdown(
                volo::net::incoming::DefaultIncoming::from(frontend_listener),
                async move {
                    stop_frontend.await;
                    Ok(())
                },
            ),
    );
    Ok(Topology {
        frontend,
        backend,
        _stop: stop,
    })
}

fn one<'a>(spans: &'a [ReceivedSpan], service: &str, kind: i32) -> &'a ReceivedSpan {
    let matching: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.kind == kind)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one {service} span of kind {kind}: {spans:#?}"
    );
    matching[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_a_tonic_client_a_volo_relay_and_a_tonic_backend() -> anyhow::Result<()> {
    tests::init_test_logging();
    let receiver = OtlpReceiver::start().await?;
    let (client_guard, client_tracing) = pipeline("caller", &receiver, Protocol::HttpProtobuf)?;
    let (frontend_guard, frontend_tracing) = pipeline("frontend", &receiver, Protocol::Grpc)?;
    let (backend_guard, backend_tracing) = pipeline("backend", &receiver, Protocol::HttpProtobuf)?;
    let topology = start_topology(&frontend_tracing, &backend_tracing).await?;

    // The caller: a Volo client with the client layer, inside a root span.
    let caller = volo_gen::echo::EchoClientBuilder::new("frontend")
        .layer_outer(rpc_ext_tracing::volo::GrpcTracingLayer::client(
            &client_tracing,
        ))
        .address(topology.frontend)
        .build();
    let tracer = client_guard.provider().tracer("test");
    let root = tracer.start("checkout");
    let root_cx = opentelemetry::Context::current_with_span(root);
    let root_trace = root_cx.span().span_context().trace_id().to_string();
    let reply = opentelemetry::trace::FutureExt::with_context(
        caller.say(volo_gen::echo::SayRequest {
            message: "hi".into(),
        }),
        root_cx.clone(),
    )
    .await?
    .into_inner();
    assert_eq!(reply.served_by, topology.backend.to_string());
    root_cx.span().end();
    for guard in [&client_guard, &frontend_guard, &backend_guard] {
        guard.provider().force_flush()?;
    }

    let spans = receiver
        .wait_for(Duration::from_secs(10), "five spans", |spans| {
            spans.len() >= 5
        })
        .await?;
    assert!(
        spans.iter().all(|s| s.trace_id == root_trace),
        "one trace id: {spans:#?}"
    );
    for protocol in Protocol::ALL {
        assert!(
            receiver.export_requests_over(protocol) > 0,
            "none over {protocol}"
        );
    }
    let root = spans
        .iter()
        .find(|s| s.name == "checkout")
        .expect("root span");
    let caller_client = one(&spans, "caller", SPAN_KIND_CLIENT);
    let frontend_server = one(&spans, "frontend", SPAN_KIND_SERVER);
    let frontend_client = one(&spans, "frontend", SPAN_KIND_CLIENT);
    let backend_server = one(&spans, "backend", SPAN_KIND_SERVER);
    assert_eq!(caller_client.parent_span_id, root.span_id);
    assert_eq!(frontend_server.parent_span_id, caller_client.span_id);
    assert_eq!(frontend_client.parent_span_id, frontend_server.span_id);
    assert_eq!(backend_server.parent_span_id, frontend_client.span_id);
    for span in [
        caller_client,
        frontend_server,
        frontend_client,
        backend_server,
    ] {
        // Semantic conventions v1.44: the full method, the status name.
        assert_eq!(span.name, "echo.Echo/Say");
        assert_eq!(span.attr("rpc.system.name"), "grpc");
        assert_eq!(span.attr("rpc.method"), "echo.Echo/Say");
        assert_eq!(span.attr("rpc.response.status_code"), "OK");
        assert_eq!(span.attr("rpc.system"), "", "no names before v1.38");
        assert_eq!(span.attr("rpc.service"), "");
        assert_eq!(span.attr("error.type"), "");
        assert_ne!(span.status_code, STATUS_ERROR);
    }
    // The Volo caller names its target, its static address. (The tonic
    // relay's requests carry no authority: its channel adds it further in.)
    assert_eq!(caller_client.attr("server.address"), "127.0.0.1");
    assert_eq!(
        caller_client.attr("server.port"),
        topology.frontend.port().to_string()
    );
    assert_eq!(caller_client.attr("network.peer.address"), "127.0.0.1");
    // The server knows its own address from the request's authority.
    assert_eq!(backend_server.attr("server.address"), "127.0.0.1");
    assert_eq!(
        backend_server.attr("server.port"),
        topology.backend.port().to_string()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_set_status_per_the_conventions() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let (frontend_guard, frontend_tracing) = pipeline("frontend", &receiver, Protocol::Grpc)?;
    let (backend_guard, backend_tracing) = pipeline("backend", &receiver, Protocol::HttpProtobuf)?;
    let topology = start_topology(&frontend_tracing, &backend_tracing).await?;
    let caller = volo_gen::echo::EchoClientBuilder::new("frontend")
        .address(topology.frontend)
        .build();

    // A call that succeeds first: servers learn a method's name from an OK
    // call (a failed one may come from any layer, for any path).
    caller
        .say(volo_gen::echo::SayRequest {
            message: "hi".into(),
        })
        .await?;
    // INVALID_ARGUMENT (3): an error for clients, not for servers.
    let status = caller
        .say(volo_gen::echo::SayRequest {
            message: echo::servers::FAIL.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code() as i32, 3);
    // UNIMPLEMENTED (12) on the backend: an error on both sides.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", topology.backend))?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(
        ServiceBuilder::new()
            .layer(rpc_ext_tracing::tower::TracingLayer::client(
                &frontend_tracing,
            ))
            .service(channel),
    );
    grpc.ready().await?;
    let result: Result<tonic::Response<tonic_gen::SayReply>, _> = grpc
        .unary(
            tonic::Request::new(tonic_gen::SayRequest {
                message: "x".into(),
            }),
            http::uri::PathAndQuery::from_static("/echo.Echo/Missing"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_eq!(result.unwrap_err().code(), tonic::Code::Unimplemented);
    frontend_guard.provider().force_flush()?;
    backend_guard.provider().force_flush()?;

    let spans = receiver
        .wait_for(Duration::from_secs(10), "eight spans", |spans| {
            spans.len() >= 8
        })
        .await?;
    // The spans of the failed calls.
    let by = |service: &str, kind: i32, method: &str| {
        spans
            .iter()
            .find(|s| {
                s.service == service
                    && s.kind == kind
                    && s.attr("rpc.method") == method
                    && s.attr("rpc.response.status_code") != "OK"
            })
            .unwrap_or_else(|| panic!("no {service}/{kind}/{method} span: {spans:#?}"))
            .clone()
    };
    let backend_say = by("backend", SPAN_KIND_SERVER, "echo.Echo/Say");
    assert_eq!(
        backend_say.attr("rpc.response.status_code"),
        "INVALID_ARGUMENT"
    );
    assert_ne!(
        backend_say.status_code, STATUS_ERROR,
        "INVALID_ARGUMENT is the caller's fault, not the server's"
    );
    assert_eq!(backend_say.attr("error.type"), "");
    let relay_client = by("frontend", SPAN_KIND_CLIENT, "echo.Echo/Say");
    assert_eq!(relay_client.status_code, STATUS_ERROR);
    assert_eq!(relay_client.attr("error.type"), "INVALID_ARGUMENT");
    let frontend_say = by("frontend", SPAN_KIND_SERVER, "echo.Echo/Say");
    assert_eq!(
        frontend_say.attr("rpc.response.status_code"),
        "INVALID_ARGUMENT"
    );
    // A method the server does not serve: `_OTHER`, never the name the
    // client made up, which is kept in `rpc.method_original`.
    let missing_server = by("backend", SPAN_KIND_SERVER, "_OTHER");
    assert_eq!(missing_server.name, "grpc");
    assert_eq!(
        missing_server.attr("rpc.method_original"),
        "echo.Echo/Missing"
    );
    assert_eq!(missing_server.status_code, STATUS_ERROR);
    assert_eq!(
        missing_server.attr("rpc.response.status_code"),
        "UNIMPLEMENTED"
    );
    assert_eq!(missing_server.attr("error.type"), "UNIMPLEMENTED");
    // The client named the method itself (its own code's).
    let missing_client = by("frontend", SPAN_KIND_CLIENT, "echo.Echo/Missing");
    assert_eq!(missing_client.name, "echo.Echo/Missing");
    assert_eq!(missing_client.status_code, STATUS_ERROR);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_trace_headers_start_a_new_trace_and_the_call_succeeds() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let (backend_guard, backend_tracing) = pipeline("backend", &receiver, Protocol::HttpProtobuf)?;
    let (_frontend_guard, frontend_tracing) = pipeline("frontend", &receiver, Protocol::Grpc)?;
    let topology = start_topology(&frontend_tracing, &backend_tracing).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", topology.backend))?
        .connect()
        .await?;
    let mut client = tonic_gen::echo_client::EchoClient::new(channel);
    let junk = [
        "garbage".to_owned(),
        "00-zzzz-zzzz-01".to_owned(),
        "00-00000000000000000000000000000000-0000000000000000-01".to_owned(),
        format!("00-{}-{}-01", "a".repeat(32), "b".repeat(4000)),
        "\u{1}\u{2}".to_owned(),
    ];
    for value in &junk {
        let mut request = tonic::Request::new(tonic_gen::SayRequest {
            message: "hi".into(),
        });
        if let Ok(value) = value.parse() {
            request.metadata_mut().insert("traceparent", value);
        }
        if let Ok(baggage) = "=;;=,\u{7f}".parse() {
            request.metadata_mut().insert("baggage", baggage);
        }
        let reply = client.say(request).await?;
        assert_eq!(reply.into_inner().message, "hi");
    }
    backend_guard.provider().force_flush()?;
    let spans = receiver
        .wait_for(Duration::from_secs(10), "server spans", |spans| {
            spans.iter().filter(|s| s.kind == SPAN_KIND_SERVER).count() >= junk.len()
        })
        .await?;
    for span in spans.iter().filter(|s| s.kind == SPAN_KIND_SERVER) {
        assert!(
            span.parent_span_id.is_empty(),
            "junk became a parent: {span:#?}"
        );
        assert_ne!(span.trace_id, "0".repeat(32));
    }
    Ok(())
}

/// A collector that accepts connections and never answers: calls go on,
/// and the spans the processor holds, by its own counters, stay within its
/// bounds. The heap they take is measured in `tests/export_memory.rs`, a
/// process of its own; exact drop counting is tested with a gated exporter
/// in rpc-ext-tracing's unit tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_collector_neither_fails_calls_nor_grows_memory() -> anyhow::Result<()> {
    for protocol in Protocol::ALL {
        a_hung_collector_over(protocol).await?;
    }
    Ok(())
}

async fn a_hung_collector_over(protocol: Protocol) -> anyhow::Result<()> {
    let hung = TcpListener::bind("127.0.0.1:0").await?;
    let hung_addr = hung.local_addr()?;
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = hung.accept().await {
            holder.lock().unwrap().push(socket); // keep open, never answer
        }
    });
    let guard = OtlpTracing::new()
        .service_name("backend")
        .transport(crate::support::transport(protocol))
        .endpoint(format!("http://{hung_addr}"))
        .timeout(Duration::from_millis(300))
        .max_queue_size(256)
        .scheduled_delay(Duration::from_millis(50))
        .install_global(false)
        .install()?;
    let tracing = RpcTracing::builder()
        .tracer_provider(guard.provider())
        .build();
    let (stop, stopped) = watch::channel(false);
    let mut client = tests::traced_tonic_echo(&tracing, stopped).await?;
    const CALLS: u64 = 3_000;
    for _ in 0..CALLS {
        client
            .say(tonic_gen::SayRequest {
                message: "hi".into(),
            })
            .await?;
    }
    let stats = guard.stats();
    assert_eq!(stats.ended(), CALLS, "{protocol}");
    assert_eq!(stats.exported(), 0);
    // Whatever the timing, the processor holds at most the queue (256) and
    // one batch being exported (512): every other span was dropped or lost
    // with a failed export, and counted.
    let held = stats.ended() - stats.dropped() - stats.failed() - stats.exported();
    assert!(held <= 256 + 512, "{held} spans held: {stats:?}");
    let _ = stop.send(true);
    let _ = guard.shutdown(); // the flush itself times out against the hung collector
    Ok(())
}
