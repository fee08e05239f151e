//! `x-request-id` forwarding through the framework-free core: what a
//! server call reads, what the calls made inside it write, when, and what
//! the server span records.

use std::collections::HashMap;

use http::{HeaderMap, HeaderValue};
use opentelemetry::{propagation::Extractor, Array, KeyValue, StringValue, Value};
use rpc_ext_core::{mesh::MeshMode, semconv::Conventions};

use crate::{
    semconv,
    testing::{Recorded, SAMPLED_PARENT},
    CallInfo, HeaderExtractor, HeaderInjector, Outcome, RequestId, RpcSystem, RpcTracing,
    RpcTracingBuilder,
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Request headers with a sampled parent and `x-request-id: abc-123`.
fn inbound() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", HeaderValue::from_static(SAMPLED_PARENT));
    headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
    headers
}

/// A server call of `system` receiving `inbound`, making one client call
/// inside it into `outbound`: the request id the handler saw, and the
/// attributes of the server span.
fn serve(
    tracing: &RpcTracing,
    recorded: &Recorded,
    system: RpcSystem,
    inbound: &dyn Extractor,
    outbound: &mut HeaderMap,
) -> (Option<RequestId>, Vec<KeyValue>) {
    let info = match system {
        RpcSystem::Http => CallInfo::http("GET", "/users/{id}"),
        _ => CallInfo::rpc(system, "echo.Echo", "Say"),
    };
    let server = tracing.start_server(&info, inbound);
    let seen = futures_executor::block_on(server.run(async {
        let client = tracing.start_client(
            &CallInfo::rpc(RpcSystem::Grpc, "echo.Backend", "Get"),
            &mut HeaderInjector(outbound),
        );
        client.finish(&Outcome::default());
        RequestId::current()
    }));
    server.finish(&Outcome::default());
    let server_span = recorded
        .ended()
        .into_iter()
        .find(|span| span.span_kind == opentelemetry::trace::SpanKind::Server)
        .expect("a server span");
    recorded.clear();
    (seen, server_span.attributes)
}

fn forwarding(forward: bool) -> (RpcTracing, Recorded) {
    Recorded::tracing(|builder| builder.mesh(MeshMode::Off).forward_request_id(forward))
}

fn ids(attributes: &[KeyValue]) -> Vec<(String, Value)> {
    attributes
        .iter()
        .filter(|kv| kv.key.as_str().ends_with("x-request-id"))
        .map(|kv| (kv.key.to_string(), kv.value.clone()))
        .collect()
}

fn array(id: &str) -> Value {
    Value::Array(Array::String(vec![StringValue::from(id.to_owned())]))
}

#[test]
fn forwarding_is_on_in_mesh_mode_unless_set() {
    let forwards = |configure: fn(RpcTracingBuilder) -> RpcTracingBuilder| {
        configure(RpcTracing::builder())
            .build()
            .inner
            .forward_request_id
    };
    assert!(forwards(|b| b.mesh(MeshMode::On)));
    assert!(!forwards(|b| b.mesh(MeshMode::Off)));
    assert!(!forwards(|b| b
        .mesh(MeshMode::On)
        .forward_request_id(false)));
    assert!(forwards(|b| b.mesh(MeshMode::Off).forward_request_id(true)));
}

#[test]
fn a_server_call_carries_its_id_to_the_calls_it_makes() {
    let (tracing, recorded) = forwarding(true);
    let mut outbound = HeaderMap::new();
    let (seen, attributes) = serve(
        &tracing,
        &recorded,
        RpcSystem::Grpc,
        &HeaderExtractor(&inbound()),
        &mut outbound,
    );
    assert_eq!(seen.as_ref().map(RequestId::as_str), Some("abc-123"));
    assert_eq!(outbound.get_all("x-request-id").iter().count(), 1);
    assert_eq!(outbound["x-request-id"], "abc-123");
    // Alongside the trace context, in the same trace.
    let traceparent = outbound["traceparent"].to_str().unwrap();
    assert_eq!(&traceparent[3..35], TRACE_ID);
    assert_eq!(
        ids(&attributes),
        [(
            semconv::RPC_REQUEST_METADATA_X_REQUEST_ID.to_owned(),
            array("abc-123")
        )]
    );
}

#[test]
fn an_id_the_caller_set_is_kept() {
    let (tracing, recorded) = forwarding(true);
    let mut outbound = HeaderMap::new();
    outbound.insert("x-request-id", HeaderValue::from_static("mine"));
    serve(
        &tracing,
        &recorded,
        RpcSystem::Http,
        &HeaderExtractor(&inbound()),
        &mut outbound,
    );
    let sent: Vec<_> = outbound.get_all("x-request-id").iter().collect();
    assert_eq!(sent, ["mine"]);
}

#[test]
fn nothing_is_forwarded_when_off() {
    let (tracing, recorded) = forwarding(false);
    let mut outbound = HeaderMap::new();
    let (seen, attributes) = serve(
        &tracing,
        &recorded,
        RpcSystem::Grpc,
        &HeaderExtractor(&inbound()),
        &mut outbound,
    );
    assert_eq!(seen, None);
    assert!(!outbound.contains_key("x-request-id"));
    assert!(outbound.contains_key("traceparent"));
    assert_eq!(ids(&attributes), []);
    // Nor an id the application put in the context itself.
    let id = RequestId::parse("own").unwrap();
    let _guard = opentelemetry::Context::current_with_value(id).attach();
    let mut headers = HashMap::new();
    let call = tracing.start_client(&CallInfo::grpc("/echo.Echo/Say"), &mut headers);
    call.finish(&Outcome::default());
    assert_eq!(headers.get("x-request-id"), None);
}

#[test]
fn an_invalid_or_missing_id_is_not_forwarded() {
    let (tracing, recorded) = forwarding(true);
    let long = "a".repeat(200);
    for id in [
        None,
        Some(long.as_str()),
        Some("abc\u{1}123"),
        Some("abc\t123"),
        Some("a b"),
        Some(""),
        Some("é"),
    ] {
        // A map, not headers: a TTHeader carries any bytes, control
        // characters included.
        let mut headers = HashMap::from([("traceparent".to_owned(), SAMPLED_PARENT.to_owned())]);
        if let Some(id) = id {
            headers.insert("x-request-id".to_owned(), id.to_owned());
        }
        let mut outbound = HeaderMap::new();
        let (seen, attributes) = serve(
            &tracing,
            &recorded,
            RpcSystem::Http,
            &headers,
            &mut outbound,
        );
        assert_eq!(seen, None, "{id:?}");
        assert!(!outbound.contains_key("x-request-id"), "{id:?}");
        assert!(outbound.contains_key("traceparent"), "{id:?}");
        assert_eq!(ids(&attributes), [], "{id:?}");
    }
}

#[test]
fn the_server_span_records_the_id_under_the_conventions_name() {
    let expect = |system: RpcSystem, conventions: Conventions, keys: &[&str]| {
        let (tracing, recorded) = Recorded::tracing(|builder| {
            builder
                .conventions(conventions)
                .mesh(MeshMode::Off)
                .forward_request_id(true)
        });
        let (_, attributes) = serve(
            &tracing,
            &recorded,
            system,
            &HeaderExtractor(&inbound()),
            &mut HeaderMap::new(),
        );
        let expected: Vec<_> = keys
            .iter()
            .map(|key| ((*key).to_owned(), array("abc-123")))
            .collect();
        assert_eq!(ids(&attributes), expected, "{system:?} {conventions:?}");
    };
    let http = semconv::HTTP_REQUEST_HEADER_X_REQUEST_ID;
    let current = semconv::RPC_REQUEST_METADATA_X_REQUEST_ID;
    let old = semconv::RPC_GRPC_REQUEST_METADATA_X_REQUEST_ID;
    expect(RpcSystem::Http, Conventions::Current, &[http]);
    expect(RpcSystem::Http, Conventions::Old, &[http]);
    expect(RpcSystem::Grpc, Conventions::Current, &[current]);
    expect(RpcSystem::Grpc, Conventions::Old, &[old]);
    expect(RpcSystem::Grpc, Conventions::Dup, &[current, old]);
    expect(RpcSystem::Thrift, Conventions::Current, &[current]);
    expect(RpcSystem::Thrift, Conventions::Old, &[]);
}

#[test]
fn an_extractor_without_the_header_reads_nothing() {
    // The server asks the carrier for the id only when forwarding is on.
    struct Counting(std::cell::Cell<u32>);
    impl Extractor for Counting {
        fn get(&self, key: &str) -> Option<&str> {
            if key == "x-request-id" {
                self.0.set(self.0.get() + 1);
            }
            None
        }
        fn keys(&self) -> Vec<&str> {
            Vec::new()
        }
    }
    for forward in [false, true] {
        let (tracing, _) = forwarding(forward);
        let carrier = Counting(std::cell::Cell::new(0));
        let call = tracing.start_server(&CallInfo::grpc("/echo.Echo/Say"), &carrier);
        assert_eq!(call.context().get::<RequestId>(), None);
        call.finish(&Outcome::default());
        assert_eq!(carrier.0.get(), u32::from(forward), "forward {forward}");
    }
}
