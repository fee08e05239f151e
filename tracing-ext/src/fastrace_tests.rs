//! The fastrace path against the SDK path: the same calls give the same
//! spans (names, kinds, attributes with their types, status), and context
//! travels both ways between our spans and the application's own fastrace
//! spans. Spans go through fastrace's real collector, fastrace-opentelemetry
//! and [`FastraceSpanExporter`] into an in-memory exporter.

use std::{
    borrow::Cow,
    collections::HashMap,
    net::SocketAddr,
    sync::{Mutex, OnceLock},
};

use fastrace::{
    collector::{SpanContext, SpanId, TraceId},
    local::LocalSpan,
    Span,
};
use opentelemetry::{trace::Status, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};

use crate::{
    semconv::Conventions, testing::Recorded, CallInfo, FastraceSampler, FastraceSpanExporter,
    GrpcCode, Host, Outcome, RpcTracing, RpcTracingBuilder, INT_ATTRIBUTES,
};

/// fastrace's reporter is process-wide: set once, into this exporter.
fn exported() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let reporter = fastrace_opentelemetry::OpenTelemetryReporter::new(
            FastraceSpanExporter::new(exporter.clone()),
            Cow::Owned(opentelemetry_sdk::Resource::builder_empty().build()),
            opentelemetry::InstrumentationScope::builder(crate::INSTRUMENTATION_NAME).build(),
        );
        fastrace::set_reporter(reporter, fastrace::collector::Config::default());
        exporter
    })
}

/// The spans of one trace reported so far.
fn trace(trace_id: u128) -> Vec<SpanData> {
    fastrace::flush();
    exported()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|span| span.span_context.trace_id() == trace_id.into())
        .collect()
}

/// Tests flush the one collector: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the tests that report through the process's one fastrace
/// reporter to one at a time, the reporter set.
fn serialized() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = exported();
    guard
}

fn sampled_parent(trace_id: u128) -> HashMap<String, String> {
    HashMap::from([(
        "traceparent".to_owned(),
        format!("00-{trace_id:032x}-00f067aa0ba902b7-01"),
    )])
}

fn peer() -> SocketAddr {
    "10.1.2.3:40000".parse().unwrap()
}

/// Calls of every kind: servers under `inbound`, clients inside `client`
/// (an enclosing context the caller sets up).
fn calls(tracing: &RpcTracing, inbound: &HashMap<String, String>, client: &dyn Fn(&dyn Fn())) {
    let server = |info: CallInfo<'_>, outcome: Outcome, route: Option<&str>| {
        let call = tracing.start_server(&info, inbound);
        if let Some(route) = route {
            call.set_http_route(route);
        }
        call.finish(&outcome);
    };
    let grpc = |code| Outcome {
        grpc_code: Some(code),
        response_size: Some(12),
        ..Outcome::default()
    };
    let at = |info: CallInfo<'static>| {
        info.with_server(Host::Ip([127, 0, 0, 1].into()), Some(50051))
            .with_peer(Some(peer()))
            .with_request_size(Some(7))
    };
    // Settled at the end: learned, then `_OTHER`.
    server(
        at(CallInfo::grpc("/echo.Echo/Say")),
        grpc(GrpcCode::OK),
        None,
    );
    server(
        at(CallInfo::grpc("/echo.Echo/Nope")),
        grpc(GrpcCode::UNIMPLEMENTED),
        None,
    );
    server(
        at(CallInfo::grpc("/echo.Echo/Say")),
        grpc(GrpcCode::INTERNAL),
        None,
    );
    server(
        CallInfo::rpc(crate::RpcSystem::Thrift, "ThriftEcho", "say"),
        Outcome {
            error_type: Some("application".into()),
            ..Outcome::default()
        },
        None,
    );
    let url = "http://example.com:8080/users/7?page=2"
        .parse::<http::Uri>()
        .unwrap();
    server(
        CallInfo::http("GET", "").with_url(crate::UrlParts::of(&url)),
        Outcome {
            http_status: Some(503),
            peer_addr: Some(peer()),
            ..Outcome::default()
        },
        Some("/users/{id}"),
    );
    client(&|| {
        let mut headers = HashMap::new();
        let call = tracing.start_client(
            &CallInfo::grpc("/echo.Backend/Get").with_server(Host::Name("backend"), Some(443)),
            &mut headers,
        );
        call.finish(&Outcome {
            grpc_code: Some(GrpcCode::DEADLINE_EXCEEDED),
            peer_addr: Some(peer()),
            ..Outcome::default()
        });
        let call = tracing.start_client(
            &CallInfo::http("GET", "").with_url(crate::UrlParts::of(&url)),
            &mut headers,
        );
        call.finish(&Outcome {
            http_status: Some(404),
            ..Outcome::default()
        });
        // Dropped unfinished: cancelled.
        drop(tracing.start_client(&CallInfo::grpc("/echo.Backend/Put"), &mut headers));
    });
}

/// A span as compared across paths: name, kind, attributes (sorted, with
/// their types), status.
type Shape = (String, String, Vec<(String, Value)>, Status);

fn shapes(spans: &[SpanData]) -> Vec<Shape> {
    let mut shapes: Vec<Shape> = spans
        .iter()
        .map(|span| {
            let mut attributes: Vec<(String, Value)> = span
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.clone()))
                .collect();
            attributes.sort_by(|a, b| a.0.cmp(&b.0));
            (
                span.name.to_string(),
                format!("{:?}", span.span_kind),
                attributes,
                span.status.clone(),
            )
        })
        .collect();
    shapes.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    shapes
}

fn configure(builder: RpcTracingBuilder, conventions: Conventions) -> RpcTracingBuilder {
    builder
        .conventions(conventions)
        .record_sizes(true)
        .forward_request_id(true)
        .tracing_span(false)
}

#[test]
fn both_paths_record_the_same_spans() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (n, conventions) in [Conventions::Current, Conventions::Old, Conventions::Dup]
        .into_iter()
        .enumerate()
    {
        let trace_id = 0x5eed_0000_0000_0000_0000_0000_0000_0001 + n as u128;
        let mut inbound = sampled_parent(trace_id);
        inbound.insert("x-request-id".into(), "req-1".into());

        let (sdk, recorded) = Recorded::tracing(|b| configure(b, conventions));
        calls(&sdk, &inbound, &|client| client());
        let sdk_spans = recorded.ended();

        let _ = exported();
        let fast = configure(RpcTracing::builder(), conventions)
            .fastrace()
            .build();
        let user = SpanContext::new(TraceId(trace_id), SpanId(0x0bad_cafe)).sampled(true);
        calls(&fast, &inbound, &|client| {
            // Clients need a parent to be found by trace id; on the SDK
            // path they are roots. The enclosing span is left out below.
            let root = Span::root("user", user);
            let _guard = root.set_local_parent();
            client();
        });
        let fast_spans: Vec<SpanData> = trace(trace_id)
            .into_iter()
            .filter(|span| span.name != "user")
            .collect();

        assert_eq!(fast_spans.len(), 8, "{conventions:?}: {fast_spans:#?}");
        assert_eq!(shapes(&fast_spans), shapes(&sdk_spans), "{conventions:?}");
        for span in &sdk_spans {
            for kv in &span.attributes {
                if matches!(kv.value, Value::I64(_)) {
                    assert!(
                        INT_ATTRIBUTES.contains(&kv.key.as_str()),
                        "{} is an integer but not in INT_ATTRIBUTES",
                        kv.key
                    );
                }
            }
        }
        assert!(fast_spans.iter().all(|s| s.span_context.is_sampled()));
    }
}

#[test]
fn context_travels_both_ways_between_our_spans_and_the_applications() {
    let _serial = serialized();
    let tracing = RpcTracing::builder().fastrace().tracing_span(false).build();
    let trace_id = 0x7ace_0000_0000_0000_0000_0000_0000_0001;
    let server = tracing.start_server(&CallInfo::grpc("/echo.Echo/Say"), &sampled_parent(trace_id));
    let outbound = futures_executor::block_on(server.run(async {
        let _local = LocalSpan::enter_with_local_parent("handler");
        let mut headers = HashMap::new();
        let client = tracing.start_client(&CallInfo::grpc("/echo.Backend/Get"), &mut headers);
        client.finish(&Outcome::default());
        headers
    }));
    server.finish(&Outcome {
        grpc_code: Some(GrpcCode::OK),
        ..Outcome::default()
    });
    let spans = trace(trace_id);
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|span| span.name == name)
            .unwrap_or_else(|| panic!("no {name} in {spans:#?}"))
    };
    let server = by_name("echo.Echo/Say");
    let handler = by_name("handler");
    let client = by_name("echo.Backend/Get");
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert_eq!(server.parent_span_id, 0x00f0_67aa_0ba9_02b7u64.into());
    assert!(server.parent_span_is_remote);
    assert_eq!(handler.parent_span_id, server.span_context.span_id());
    assert_eq!(client.parent_span_id, handler.span_context.span_id());
    assert_eq!(
        outbound["traceparent"],
        format!("00-{trace_id:032x}-{}-01", client.span_context.span_id())
    );

    // The application's span around a client call made outside any of ours.
    let trace_id = trace_id + 1;
    let root = Span::root(
        "job",
        SpanContext::new(TraceId(trace_id), SpanId(0)).sampled(true),
    );
    let mut headers = HashMap::new();
    {
        let _guard = root.set_local_parent();
        let client = tracing.start_client(&CallInfo::grpc("/echo.Backend/Get"), &mut headers);
        client.finish(&Outcome::default());
    }
    drop(root);
    let spans = trace(trace_id);
    let job = spans
        .iter()
        .find(|s| s.name == "job")
        .expect("the job span");
    let client = spans
        .iter()
        .find(|s| s.name == "echo.Backend/Get")
        .expect("the client span");
    assert_eq!(client.parent_span_id, job.span_context.span_id());
    assert!(headers["traceparent"].ends_with("-01"));
}

#[test]
fn an_unsampled_call_is_propagated_but_not_recorded() {
    let _serial = serialized();
    let tracing = RpcTracing::builder().fastrace().tracing_span(false).build();
    let trace_id = 0x0ff0_0000_0000_0000_0000_0000_0000_0001u128;
    let inbound = format!("00-{trace_id:032x}-00f067aa0ba902b7-00");
    let sent = sent_on(&tracing, "/echo.Echo/Say", &inbound);
    assert!(sent.starts_with(&format!("00-{trace_id:032x}-")), "{sent}");
    assert!(sent.ends_with("-00"), "{sent}");
    assert!(trace(trace_id).is_empty());

    // A new trace the sampler does not keep: propagated unsampled.
    let never = RpcTracing::builder()
        .fastrace_sampler(FastraceSampler::ParentBased { root_ratio: 0.0 })
        .build();
    let mut headers = HashMap::new();
    let client = never.start_client(&CallInfo::grpc("/echo.Backend/Get"), &mut headers);
    client.finish(&Outcome::default());
    assert!(headers["traceparent"].ends_with("-00"), "{headers:?}");
    // ... and one it keeps is sampled.
    let always = RpcTracing::builder()
        .fastrace_sampler(FastraceSampler::TraceIdRatio(1.0))
        .build();
    let inbound = HashMap::from([("traceparent".to_owned(), inbound)]);
    let server = always.start_server(&CallInfo::grpc("/echo.Echo/Say"), &inbound);
    let outbound = futures_executor::block_on(server.run(async {
        let mut headers = HashMap::new();
        drop(always.start_client(&CallInfo::grpc("/echo.Backend/Get"), &mut headers));
        headers
    }));
    drop(server);
    assert!(outbound["traceparent"].ends_with("-01"), "{outbound:?}");
    assert_eq!(trace(trace_id).len(), 2);
}

/// What a client call made inside a server call to `path` sends on, the
/// server called with `traceparent`.
fn sent_on(tracing: &RpcTracing, path: &str, traceparent: &str) -> String {
    let inbound = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let server = tracing.start_server(&CallInfo::grpc(path), &inbound);
    let outbound = futures_executor::block_on(server.run(async {
        let mut headers = HashMap::new();
        let client = tracing.start_client(&CallInfo::grpc("/echo.Backend/Get"), &mut headers);
        client.finish(&Outcome::default());
        headers
    }));
    server.finish(&Outcome::default());
    outbound.get("traceparent").cloned().unwrap_or_default()
}

#[test]
fn server_calls_left_out_still_carry_the_callers_trace() {
    let _serial = serialized();
    let filtered = RpcTracing::builder()
        .fastrace()
        .tracing_span(false)
        .filter(|call| call.service != "echo.Internal")
        .build();
    let trace_id = 0x0ff0_0000_0000_0000_0000_0000_0000_0002u128;
    for flags in ["00", "01"] {
        let inbound = format!("00-{trace_id:032x}-00f067aa0ba902b7-{flags}");
        // Filtered out, and a health check (left out by default).
        for path in ["/echo.Internal/Ping", "/grpc.health.v1.Health/Check"] {
            let sent = sent_on(&filtered, path, &inbound);
            assert!(
                sent.starts_with(&format!("00-{trace_id:032x}-")),
                "{path}, inbound {flags}: {sent}"
            );
            assert!(
                sent.ends_with(&format!("-{flags}")),
                "{path}, inbound {flags}: {sent}"
            );
        }
    }
    // The client spans under the sampled caller are recorded, as its
    // children; the calls left out record nothing.
    let spans = trace(trace_id);
    assert_eq!(spans.len(), 2, "{spans:?}");
    for span in spans {
        assert_eq!(span.name, "echo.Backend/Get");
        assert_eq!(
            span.parent_span_id,
            opentelemetry::trace::SpanId::from(0x00f0_67aa_0ba9_02b7)
        );
    }
}
