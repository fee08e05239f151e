//! The fastrace path (`RpcTracingBuilder::fastrace`, `install_fastrace`)
//! end to end: the semantic-conventions conformance run of the suite (the
//! same expectations and calls, `shared/semconv_spans.rs`) over OTLP/gRPC
//! and OTLP/HTTP, the application's own fastrace spans in one trace with
//! ours, and log lines carrying the exported span's ids. Spans are decoded
//! by the in-process OTLP receiver, never by the code under test.
//!
//! A binary of its own: fastrace's reporter and the `tracing` subscriber
//! are process-wide, so one test function runs everything in order.

#[path = "shared/semconv_spans.rs"]
mod semconv_spans;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use echo::{servers::TonicEcho, tonic_gen};
use fastrace::{
    collector::{SpanContext, SpanId, TraceId},
    future::FutureExt as _,
    local::LocalSpan,
    Span,
};
use rpc_ext_metrics::RpcMetrics;
use rpc_ext_tracing::{
    otlp::{FastraceGuard, OtlpTracing, Transport},
    RpcTracing,
};
use semconv_spans::{check_span, wait_for_expected_spans, Calls};
use tests::otlp::{
    OtlpReceiver, Protocol, ReceivedSpan, TraceFault, SPAN_KIND_CLIENT, SPAN_KIND_SERVER,
};
use tokio::net::TcpListener;

/// What the log lines of the whole process say.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn transport(protocol: Protocol) -> Transport {
    match protocol {
        Protocol::Grpc => Transport::Grpc,
        Protocol::HttpProtobuf => Transport::HttpProtobuf,
    }
}

/// fastrace's reporter for one service (the OTLP resource tells the stacks
/// apart, as in the suite's run).
fn install(
    service: &str,
    receiver: &OtlpReceiver,
    protocol: Protocol,
) -> anyhow::Result<FastraceGuard> {
    Ok(OtlpTracing::new()
        .service_name(service)
        .transport(transport(protocol))
        .endpoint(receiver.endpoint_for(protocol))
        .scheduled_delay(Duration::from_millis(100))
        .install_global(false)
        .install_fastrace()?)
}

/// Reports and exports what this service recorded (a server span ends just
/// after its client got the response: a moment for it first).
async fn finish(guard: FastraceGuard) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::spawn_blocking(move || guard.shutdown()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fastrace_path_conforms_and_joins_the_applications_trace() -> anyhow::Result<()> {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_env_filter("info")
            .finish(),
    )?;
    for protocol in Protocol::ALL {
        conformance(protocol).await?;
    }
    one_trace_and_log_correlation(&logs).await?;
    a_hung_collector_costs_bounded_memory_and_no_latency().await
}

/// The suite's conformance run, on the fastrace path.
async fn conformance(protocol: Protocol) -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let metrics = RpcMetrics::builder().build()?;
    let services = ["tonic", "volo", "thrift", "volo-http", "axum"];
    let tracing: HashMap<&'static str, RpcTracing> = services
        .iter()
        .map(|service| (*service, RpcTracing::builder().fastrace().build()))
        .collect();
    let calls = Calls {
        metrics: &metrics,
        tracing: &tracing,
    };
    for service in services {
        let guard = install(service, &receiver, protocol)?;
        match service {
            "tonic" => calls.tonic().await?,
            "volo" => calls.volo_grpc().await?,
            "thrift" => calls.volo_thrift().await?,
            "volo-http" => calls.volo_http().await?,
            _ => calls.axum().await?,
        }
        finish(guard).await?;
    }
    let spans = wait_for_expected_spans(&receiver, &format!("{protocol:?}: ")).await?;
    for span in &spans {
        check_span(span);
    }
    // Every server span of the gRPC and Thrift stacks is the child of a
    // client span of the same run, in its trace.
    for server in spans.iter().filter(|s| {
        s.kind == SPAN_KIND_SERVER && ["tonic", "volo", "thrift"].contains(&&*s.service)
    }) {
        let client = parent_of(&spans, server)
            .unwrap_or_else(|| panic!("{protocol:?}: no client parent for {server:#?}"));
        assert_eq!(client.kind, SPAN_KIND_CLIENT, "{client:#?}");
        assert_eq!(client.service, server.service);
        assert_eq!(
            client.parent_span_id, "",
            "the client span is a root: {client:#?}"
        );
    }
    Ok(())
}

fn parent_of<'a>(spans: &'a [ReceivedSpan], child: &ReceivedSpan) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.trace_id == child.trace_id && s.span_id == child.parent_span_id)
}

/// The application's fastrace span around a client call, a `LocalSpan`
/// inside our server call, and a log line inside it: one trace, and the
/// line carries the exported server span's ids.
async fn one_trace_and_log_correlation(logs: &Logs) -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let guard = install("one-trace", &receiver, Protocol::HttpProtobuf)?;
    let tracing = RpcTracing::builder().fastrace().build();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(&tracing))
            .layer(tower::util::MapRequestLayer::new(
                |request: http::Request<_>| {
                    // The application's own span, inside our server call.
                    let _step = LocalSpan::enter_with_local_parent("handler-step");
                    tracing::info!("fastrace handler called");
                    request
                },
            ))
            .add_service(tonic_gen::echo_server::EchoServer::new(TonicEcho {
                served_by: addr,
            }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let service = tower::ServiceBuilder::new()
        .layer(
            rpc_ext_tracing::tower::TracingLayer::client(&tracing).server_address(addr.to_string()),
        )
        .service(channel);
    let trace_id = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdefu128;
    // The application's own span around the call, fastrace's way: its
    // local parent while the call's future is polled.
    let job = Span::root(
        "job",
        SpanContext::new(TraceId(trace_id), SpanId(0)).sampled(true),
    );
    tonic_gen::echo_client::EchoClient::new(service)
        .say(tonic_gen::SayRequest {
            message: "one trace".into(),
        })
        .in_span(job)
        .await?;
    finish(guard).await?;
    let trace_hex = format!("{trace_id:032x}");
    let spans = receiver
        .wait_for(
            Duration::from_secs(20),
            "the four spans of the trace",
            |spans| spans.iter().filter(|s| s.trace_id == trace_hex).count() >= 4,
        )
        .await?;
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.trace_id == trace_hex && s.name == name)
            .unwrap_or_else(|| panic!("no {name}: {spans:#?}"))
    };
    let job = named("job");
    let client = named("echo.Echo/Say");
    let server = spans
        .iter()
        .find(|s| s.trace_id == trace_hex && s.kind == SPAN_KIND_SERVER)
        .expect("the server span");
    let step = named("handler-step");
    assert_eq!(client.kind, SPAN_KIND_CLIENT);
    assert_eq!(job.parent_span_id, "");
    assert_eq!(client.parent_span_id, job.span_id);
    assert_eq!(server.parent_span_id, client.span_id);
    assert_eq!(step.parent_span_id, server.span_id);
    assert_eq!(
        spans.iter().filter(|s| s.trace_id == trace_hex).count(),
        4,
        "{spans:#?}"
    );

    let text = String::from_utf8(logs.0.lock().unwrap().clone())?;
    let line = text
        .lines()
        .find(|l| l.contains("fastrace handler called"))
        .unwrap_or_else(|| panic!("the handler did not log: {text}"));
    assert!(
        line.contains(&format!("trace_id={}", server.trace_id)),
        "{line}"
    );
    assert!(
        line.contains(&format!("span_id={}", server.span_id)),
        "{line}"
    );
    Ok(())
}

/// A collector that accepts exports but never answers: 2,000 sampled calls
/// still finish at once (fastrace's collector thread only hands spans to
/// the bounded queue), the queue keeps at most its 64 spans plus the batch
/// stuck in export, the rest are dropped and counted, and shutdown gives
/// up at its deadline with the loss reported.
async fn a_hung_collector_costs_bounded_memory_and_no_latency() -> anyhow::Result<()> {
    const CALLS: u64 = 2_000;
    const QUEUE: u64 = 64;
    let receiver = OtlpReceiver::start().await?;
    receiver.set_trace_fault(TraceFault::Slow(Duration::from_secs(60)));
    let guard = OtlpTracing::new()
        .service_name("hung")
        .transport(Transport::HttpProtobuf)
        .endpoint(receiver.endpoint_for(Protocol::HttpProtobuf))
        .timeout(Duration::from_secs(60))
        .max_queue_size(QUEUE as usize)
        .scheduled_delay(Duration::from_millis(10))
        .shutdown_timeout(Duration::from_secs(1))
        .install_global(false)
        .install_fastrace()?;
    let tracing = RpcTracing::builder().fastrace().tracing_span(false).build();
    let inbound = HashMap::from([(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    )]);
    let started = std::time::Instant::now();
    for _ in 0..CALLS {
        let call =
            tracing.start_server(&rpc_ext_tracing::CallInfo::grpc("/echo.Echo/Say"), &inbound);
        call.finish(&rpc_ext_tracing::Outcome::default());
    }
    let elapsed = started.elapsed();
    // Everything recorded reaches the queue's counters, export stuck or not.
    let stats = Arc::clone(guard.stats());
    tokio::task::spawn_blocking(fastrace::flush).await?;
    assert!(
        elapsed < Duration::from_secs(10),
        "{CALLS} calls took {elapsed:?}"
    );
    assert_eq!(stats.ended(), CALLS);
    assert_eq!(stats.exported(), 0);
    assert!(
        stats.dropped() >= CALLS - 2 * QUEUE,
        "dropped {} of {CALLS}, queue {QUEUE}",
        stats.dropped()
    );
    let shutdown = tokio::task::spawn_blocking(move || guard.shutdown()).await?;
    assert!(
        matches!(
            shutdown,
            Err(rpc_ext_tracing::otlp::Error::SpansLost { .. })
        ),
        "{shutdown:?}"
    );
    Ok(())
}
