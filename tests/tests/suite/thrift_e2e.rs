//! Volo Thrift: trace context in the TTHeader, one trace from a Thrift client
//! through a Thrift server to a tonic backend; Thrift metrics by outcome.

use std::time::Duration;

use echo::{servers::TonicEcho, thrift::volo_thrift_gen::echo as thrift, tonic_gen};
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
use rpc_ext_metrics::RpcMetrics;
use tests::otlp::{OtlpReceiver, Protocol, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use crate::support::{pipeline, TracedTonicClient};
use volo_thrift::MaybeException;

/// A Thrift Echo that relays to a tonic backend, or throws on "fail".
#[derive(Clone)]
struct ThriftRelay {
    backend: TracedTonicClient,
}

impl thrift::ThriftEcho for ThriftRelay {
    async fn say(
        &self,
        request: thrift::SayRequest,
    ) -> Result<
        MaybeException<thrift::SayReply, thrift::ThriftEchoSayException>,
        volo_thrift::ServerError,
    > {
        if request.message == echo::servers::FAIL {
            return Ok(MaybeException::Exception(
                thrift::ThriftEchoSayException::Error(thrift::EchoError {
                    reason: "asked to fail".into(),
                }),
            ));
        }
        let reply = self
            .backend
            .clone()
            .say(tonic_gen::SayRequest {
                message: request.message.to_string(),
            })
            .await
            .map_err(|status| anyhow::anyhow!("backend: {status}"))?
            .into_inner();
        Ok(MaybeException::Ok(thrift::SayReply {
            message: reply.message.into(),
            served_by: reply.served_by.into(),
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_a_thrift_client_through_a_thrift_server_to_tonic() -> anyhow::Result<()> {
    tests::init_test_logging();
    let receiver = OtlpReceiver::start().await?;
    let (caller_guard, caller_tracing) = pipeline("caller", &receiver, Protocol::HttpProtobuf)?;
    let (frontend_guard, frontend_tracing) = pipeline("frontend", &receiver, Protocol::Grpc)?;
    let (backend_guard, backend_tracing) = pipeline("backend", &receiver, Protocol::HttpProtobuf)?;
    let metrics = RpcMetrics::builder().build()?;

    let backend_listener = TcpListener::bind("127.0.0.1:0").await?;
    let backend_addr = backend_listener.local_addr()?;
    let backend_server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(
                &backend_tracing,
            ))
            .add_service(tonic_gen::echo_server::EchoServer::new(TonicEcho {
                served_by: backend_addr,
            }))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(backend_listener)
                    .with_nodelay(Some(true)),
            ),
    );
    let backend = tonic_gen::echo_client::EchoClient::new(
        ServiceBuilder::new()
            .layer(rpc_ext_tracing::tower::TracingLayer::client(
                &frontend_tracing,
            ))
            .service(
                tonic::transport::Endpoint::from_shared(format!("http://{backend_addr}"))?
                    .connect_lazy(),
            ),
    );

    let frontend_listener = TcpListener::bind("127.0.0.1:0").await?;
    let frontend_addr = frontend_listener.local_addr()?;
    let frontend_server = tokio::spawn(
        thrift::ThriftEchoServer::new(ThriftRelay { backend })
            .layer_front(rpc_ext_metrics::volo::MetricsLayer::server(&metrics))
            .layer_front(rpc_ext_tracing::volo::ThriftTracingLayer::server(
                &frontend_tracing,
            ))
            .run(volo::net::incoming::DefaultIncoming::from(
                frontend_listener,
            )),
    );

    let client = thrift::ThriftEchoClientBuilder::new("frontend")
        .layer_outer(rpc_ext_tracing::volo::ThriftTracingLayer::client(
            &caller_tracing,
        ))
        .layer_outer(rpc_ext_metrics::volo::MetricsLayer::client(&metrics))
        .address(frontend_addr)
        .build();

    let root_cx = opentelemetry::Context::current_with_span(
        caller_guard.provider().tracer("test").start("checkout"),
    );
    let trace_id = root_cx.span().span_context().trace_id().to_string();
    let reply = opentelemetry::trace::FutureExt::with_context(
        client.say(thrift::SayRequest {
            message: "hi".into(),
        }),
        root_cx.clone(),
    )
    .await?;
    let MaybeException::Ok(reply) = reply else {
        panic!("unexpected exception")
    };
    assert_eq!(reply.served_by, backend_addr.to_string());
    // A declared exception is an answer, not a failure.
    let thrown = client
        .say(thrift::SayRequest {
            message: echo::servers::FAIL.into(),
        })
        .await?;
    assert!(matches!(thrown, MaybeException::Exception(_)));
    root_cx.span().end();
    for guard in [&caller_guard, &frontend_guard, &backend_guard] {
        guard.provider().force_flush()?;
    }

    let spans = receiver
        .wait_for(Duration::from_secs(10), "the relayed trace", |spans| {
            spans.iter().filter(|s| s.trace_id == trace_id).count() >= 5
        })
        .await?;
    let traced: Vec<_> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let find = |service: &str, kind: i32| {
        traced
            .iter()
            .find(|s| s.service == service && s.kind == kind)
            .unwrap_or_else(|| panic!("no {service} span of kind {kind}: {traced:#?}"))
    };
    let root = traced.iter().find(|s| s.name == "checkout").expect("root");
    let caller = find("caller", SPAN_KIND_CLIENT);
    let thrift_server = find("frontend", SPAN_KIND_SERVER);
    let relay = find("frontend", SPAN_KIND_CLIENT);
    let backend = find("backend", SPAN_KIND_SERVER);
    assert_eq!(caller.parent_span_id, root.span_id);
    assert_eq!(
        thrift_server.parent_span_id, caller.span_id,
        "context crossed the TTHeader"
    );
    assert_eq!(relay.parent_span_id, thrift_server.span_id);
    assert_eq!(backend.parent_span_id, relay.span_id);
    // The IDL service name: the generated client sets it and sends it in
    // the TTHeader, so both ends name the method `ThriftEcho/say`.
    for span in [caller, thrift_server] {
        assert_eq!(span.name, "ThriftEcho/say");
        assert_eq!(span.attr("rpc.system.name"), "apache_thrift");
        assert_eq!(span.attr("rpc.method"), "ThriftEcho/say");
        assert_eq!(span.attr("rpc.response.status_code"), "", "Thrift has none");
        assert_ne!(span.status_code, STATUS_ERROR);
    }
    assert_eq!(caller.attr("server.address"), "127.0.0.1");
    assert_eq!(caller.attr("server.port"), frontend_addr.port().to_string());
    assert_eq!(caller.attr("network.peer.address"), "127.0.0.1");

    let text = rpc_ext_metrics::encode_text(metrics.registry())?;
    let server_ok = text
        .lines()
        .find(|l| {
            l.starts_with("rpc_server_call_duration_seconds_count")
                && l.contains(r#"rpc_system_name="apache_thrift""#)
        })
        .unwrap_or_else(|| panic!("no thrift server series: {text}"));
    // Named like the spans: the IDL service name, which the client sent in
    // the TTHeader. Thrift has no status codes; a declared exception is not
    // an error.
    assert!(
        server_ok.contains(r#"rpc_method="ThriftEcho/say""#)
            && server_ok.contains(r#"rpc_response_status_code="""#)
            && server_ok.contains(r#"error_type="""#),
        "{server_ok}"
    );
    assert!(server_ok.ends_with(" 2"), "{server_ok}");
    // The client's target: its static address.
    assert!(
        text.contains(&format!(
            r#"rpc_client_call_duration_seconds_count{{error_type="",rpc_method="ThriftEcho/say",rpc_response_status_code="",rpc_system_name="apache_thrift",server_address="127.0.0.1",server_port="{}"}} 2"#,
            frontend_addr.port()
        )),
        "{text}"
    );

    frontend_server.abort();
    backend_server.abort();
    Ok(())
}
