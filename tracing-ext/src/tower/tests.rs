//! The tower layer's spans, recorded in memory: names and attributes per
//! the conventions, methods settled on servers, health checks left out.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::{
    trace::{SpanKind, Status},
    KeyValue,
};
use opentelemetry_sdk::trace::SpanData;
use tower::{service_fn, Layer, Service, ServiceExt};

use super::{RouteTemplate, TracingLayer};
use crate::{
    testing::{attr, Recorded, SAMPLED_PARENT},
    RpcTracing,
};

type Body = Full<Bytes>;

/// A gRPC server answering every call with `grpc-status: code`
/// (trailers-only).
fn grpc_server(
    tracing: &RpcTracing,
    code: u8,
) -> impl Service<http::Request<Body>, Response = http::Response<impl http_body::Body>, Error = Infallible>
{
    TracingLayer::server(tracing).layer(service_fn(move |_: http::Request<Body>| async move {
        Ok::<_, Infallible>(
            http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", code.to_string())
                .body(Body::default())
                .unwrap(),
        )
    }))
}

fn grpc_request(authority_and_path: &str, sampled_parent: bool) -> http::Request<Body> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{authority_and_path}"))
        .header("content-type", "application/grpc");
    if sampled_parent {
        request = request.header("traceparent", SAMPLED_PARENT);
    }
    request.body(Body::default()).unwrap()
}

async fn call<S, B>(service: &mut S, request: http::Request<Body>)
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>,
    B: http_body::Body,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    // Reading the body to its end ends the span.
    assert!(response.into_body().collect().await.is_ok());
}

/// One gRPC call to `authority_and_path` through `service`, run to its end.
async fn call_grpc<S, B>(service: &mut S, authority_and_path: &str, sampled_parent: bool)
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>,
    B: http_body::Body,
{
    call(service, grpc_request(authority_and_path, sampled_parent)).await;
}

/// Asserts the value of `key` among `attributes` (`None`: absent).
#[track_caller]
fn assert_attr(attributes: &[KeyValue], key: &str, expected: Option<&str>) {
    assert_eq!(attr(attributes, key).as_deref(), expected, "{key}");
}

/// The span the client ended (the inner server is traced too).
fn client_span(recorded: &Recorded) -> SpanData {
    recorded
        .ended()
        .into_iter()
        .find(|span| span.span_kind == SpanKind::Client)
        .unwrap()
}

#[tokio::test]
async fn an_unknown_server_method_is_other_with_the_name_sent() {
    let (tracing, recorded) = Recorded::tracing(|builder| builder);
    let mut server = grpc_server(&tracing, 12);
    call_grpc(&mut server, "127.0.0.1:50051/echo.Echo/Missing", true).await;
    let (started_as, at_start) = recorded.last_started();
    assert_eq!(started_as, "grpc");
    assert_eq!(
        attr(&at_start, "rpc.method"),
        None,
        "not named before it is known"
    );
    let span = recorded.only();
    assert_eq!(span.name, "grpc");
    assert_eq!(span.span_kind, SpanKind::Server);
    let attributes = &span.attributes;
    assert_attr(attributes, "rpc.method", Some("_OTHER"));
    assert_attr(attributes, "rpc.method_original", Some("echo.Echo/Missing"));
    assert_attr(
        attributes,
        "rpc.response.status_code",
        Some("UNIMPLEMENTED"),
    );
    assert_attr(attributes, "error.type", Some("UNIMPLEMENTED"));
    assert_attr(attributes, "server.address", Some("127.0.0.1"));
    assert_attr(attributes, "server.port", Some("50051"));
    assert!(matches!(span.status, Status::Error { .. }));
}

#[tokio::test]
async fn a_recognized_method_is_named_at_the_start() {
    let (tracing, recorded) =
        Recorded::tracing(|builder| builder.recognized_methods(["/echo.Echo/Say"]));
    let mut server = grpc_server(&tracing, 0);
    call_grpc(&mut server, "echo.internal/echo.Echo/Say", true).await;
    let (started_as, at_start) = recorded.last_started();
    assert_eq!(started_as, "echo.Echo/Say");
    assert_attr(&at_start, "rpc.method", Some("echo.Echo/Say"));
    assert_attr(&at_start, "rpc.system.name", Some("grpc"));
    assert_attr(&at_start, "server.address", Some("echo.internal"));
    assert_eq!(
        attr(&at_start, "server.port"),
        None,
        "no port in the authority"
    );
    let span = recorded.only();
    assert_eq!(span.name, "echo.Echo/Say");
    assert_attr(&span.attributes, "rpc.response.status_code", Some("OK"));
    assert_attr(&span.attributes, "error.type", None);
}

#[tokio::test]
async fn a_method_the_server_answers_ok_is_learned() {
    const SAY: &str = "127.0.0.1:1/echo.Echo/Say";
    let (tracing, recorded) = Recorded::tracing(|builder| builder);
    // A first call that fails shows nothing: a layer in front of the
    // router may have answered it, whatever the path.
    let mut failing = grpc_server(&tracing, 3);
    call_grpc(&mut failing, SAY, true).await;
    assert_eq!(recorded.last_started().0, "grpc");
    let first = recorded.ended().remove(0);
    assert_eq!(first.name, "grpc");
    assert_attr(&first.attributes, "rpc.method", Some("_OTHER"));
    assert_attr(
        &first.attributes,
        "rpc.method_original",
        Some("echo.Echo/Say"),
    );
    recorded.clear();
    let mut answering = grpc_server(&tracing, 0);
    call_grpc(&mut answering, SAY, true).await;
    assert_eq!(recorded.last_started().0, "grpc");
    recorded.clear();
    // INVALID_ARGUMENT: the method exists, the caller erred.
    call_grpc(&mut failing, SAY, true).await;
    let (started_as, at_start) = recorded.last_started();
    assert_eq!(started_as, "echo.Echo/Say");
    assert_attr(&at_start, "rpc.method", Some("echo.Echo/Say"));
    for span in recorded.ended() {
        assert_eq!(span.name, "echo.Echo/Say", "renamed once known");
        assert_attr(&span.attributes, "rpc.method", Some("echo.Echo/Say"));
        assert_eq!(
            attr(&span.attributes, "error.type"),
            None,
            "the caller's error"
        );
        assert_eq!(span.status, Status::Unset);
    }
}

#[tokio::test]
async fn unsampled_calls_through_the_layer_still_teach_the_server_its_methods() {
    // Unsampled calls skip reading their status, except while the method is
    // still to be settled by it.
    let tracing = crate::testing::never_sampled();
    call_grpc(
        &mut grpc_server(&tracing, 12),
        "127.0.0.1:1/echo.Echo/Missing",
        false,
    )
    .await;
    call_grpc(
        &mut grpc_server(&tracing, 0),
        "127.0.0.1:1/echo.Echo/Say",
        false,
    )
    .await;
    assert!(tracing.inner.methods.contains("echo.Echo/Say"));
    assert!(!tracing.inner.methods.contains("echo.Echo/Missing"));
}

#[tokio::test]
async fn past_the_cap_new_methods_are_other() {
    let (tracing, recorded) = Recorded::tracing(|builder| builder.max_methods(1));
    let mut server = grpc_server(&tracing, 0);
    call_grpc(&mut server, "h/a.B/First", false).await;
    call_grpc(&mut server, "h/a.B/Second", false).await;
    let ended = recorded.ended();
    assert_eq!(ended[0].name, "a.B/First");
    assert_eq!(ended[1].name, "grpc");
    assert_attr(&ended[1].attributes, "rpc.method", Some("_OTHER"));
    assert_attr(
        &ended[1].attributes,
        "rpc.method_original",
        Some("a.B/Second"),
    );
}

#[tokio::test]
async fn a_junk_path_is_other_from_the_start() {
    let (tracing, recorded) = Recorded::tracing(|builder| builder);
    let mut server = grpc_server(&tracing, 12);
    call_grpc(&mut server, "h/not/a/method", true).await;
    let (_, at_start) = recorded.last_started();
    assert_attr(&at_start, "rpc.method", Some("_OTHER"));
    assert_attr(&at_start, "rpc.method_original", Some("not/a/method"));
    assert_eq!(recorded.only().name, "grpc");
}

#[tokio::test]
async fn health_checks_are_left_out_unless_asked_for() {
    const CHECK: &str = "h/grpc.health.v1.Health/Check";
    let (tracing, recorded) = Recorded::tracing(|builder| builder);
    let mut server = grpc_server(&tracing, 0);
    call_grpc(&mut server, CHECK, true).await;
    let mut client = TracingLayer::client(&tracing).layer(grpc_server(&tracing, 0));
    call_grpc(&mut client, "h/grpc.health.v1.Health/Watch", false).await;
    assert!(recorded.ended().is_empty(), "{:#?}", recorded.ended());

    let (tracing, recorded) = Recorded::tracing(|builder| builder.trace_health_checks(true));
    let mut server = grpc_server(&tracing, 0);
    call_grpc(&mut server, CHECK, true).await;
    assert_eq!(recorded.only().name, "grpc.health.v1.Health/Check");
    assert_attr(
        &recorded.only().attributes,
        "rpc.method",
        Some("grpc.health.v1.Health/Check"),
    );
}

/// An HTTP server answering 200 to everything, optionally behind a router
/// that matched `route`.
fn http_server(
    tracing: &RpcTracing,
    route: Option<&'static str>,
) -> impl Service<http::Request<Body>, Response = http::Response<impl http_body::Body>, Error = Infallible>
{
    let traced = TracingLayer::server(tracing).layer(service_fn(|_: http::Request<Body>| async {
        Ok::<_, Infallible>(http::Response::new(Body::from("ok")))
    }));
    // The router runs before the layer (axum's `Router::layer`).
    tower::util::MapRequestLayer::new(move |mut request: http::Request<Body>| {
        if let Some(route) = route {
            request.extensions_mut().insert(RouteTemplate(route.into()));
        }
        request
    })
    .layer(traced)
}

fn http_request(method: &str, uri: &str) -> http::Request<Body> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "shop.example:8080")
        .body(Body::default())
        .unwrap()
}

#[tokio::test]
async fn http_server_spans_are_named_by_route_or_method() {
    let (tracing, recorded) = Recorded::tracing(|builder| builder);
    let mut matched = http_server(&tracing, Some("/users/{id}"));
    call(&mut matched, http_request("GET", "/users/7?full=1")).await;
    let mut unmatched = http_server(&tracing, None);
    call(&mut unmatched, http_request("GET", "/no/such/page")).await;
    call(&mut unmatched, http_request("PURGE", "/cache")).await;

    let ended = recorded.ended();
    let [users, nowhere, purge] = &ended[..] else {
        panic!("{ended:#?}")
    };
    assert_eq!(users.name, "GET /users/{id}");
    let attributes = &users.attributes;
    assert_attr(attributes, "http.route", Some("/users/{id}"));
    assert_attr(attributes, "http.request.method", Some("GET"));
    assert_attr(attributes, "url.scheme", Some("http"));
    assert_attr(attributes, "url.path", Some("/users/7"));
    assert_attr(attributes, "url.query", Some("full=1"));
    assert_attr(attributes, "server.address", Some("shop.example"));
    assert_attr(attributes, "server.port", Some("8080"));
    assert_attr(attributes, "http.response.status_code", Some("200"));
    assert_attr(attributes, "rpc.system.name", None);

    assert_eq!(nowhere.name, "GET", "never the raw path");
    assert_attr(&nowhere.attributes, "http.route", None);
    assert_attr(&nowhere.attributes, "url.path", Some("/no/such/page"));
    assert_attr(&nowhere.attributes, "url.query", None);

    assert_eq!(purge.name, "HTTP");
    assert_attr(&purge.attributes, "http.request.method", Some("_OTHER"));
    assert_attr(
        &purge.attributes,
        "http.request.method_original",
        Some("PURGE"),
    );
}

#[tokio::test]
async fn listed_http_routes_are_left_out() {
    let (tracing, recorded) = Recorded::tracing(|builder| builder.skip_http_routes(["/healthz"]));
    let mut matched = http_server(&tracing, Some("/healthz"));
    call(&mut matched, http_request("GET", "/healthz")).await;
    // Before routing, the path is compared with the templates.
    let mut unrouted = http_server(&tracing, None);
    call(&mut unrouted, http_request("GET", "/healthz")).await;
    call(&mut unrouted, http_request("GET", "/orders")).await;
    assert_eq!(recorded.only().name, "GET");
}

#[tokio::test]
async fn http_client_spans_carry_the_full_url_without_credentials() {
    let (tracing, recorded) = Recorded::tracing(|builder| builder);
    let mut client = TracingLayer::client(&tracing).layer(service_fn(
        |request: http::Request<Body>| async move {
            assert!(request.headers().contains_key("traceparent"));
            Ok::<_, Infallible>(
                http::Response::builder()
                    .status(503)
                    .body(Body::default())
                    .unwrap(),
            )
        },
    ));
    let request = http::Request::builder()
        .uri("https://alice:secret@api.example/v1/items?page=2")
        .body(Body::default())
        .unwrap();
    call(&mut client, request).await;
    let span = recorded.only();
    assert_eq!(span.name, "GET");
    assert_eq!(span.span_kind, SpanKind::Client);
    let attributes = &span.attributes;
    assert_attr(
        attributes,
        "url.full",
        Some("https://REDACTED:REDACTED@api.example/v1/items?page=2"),
    );
    assert_attr(attributes, "server.address", Some("api.example"));
    assert_attr(attributes, "server.port", Some("443"));
    assert_eq!(attr(attributes, "url.path"), None, "servers only");
    assert_eq!(attr(attributes, "http.route"), None, "servers only");
    assert_attr(attributes, "error.type", Some("503"));
}

#[tokio::test]
async fn a_grpc_client_names_its_target_and_peer() {
    let (tracing, recorded) = Recorded::tracing(|builder| builder);
    let mut client = TracingLayer::client(&tracing).layer(grpc_server(&tracing, 5));
    call_grpc(&mut client, "10.0.0.7:50051/echo.Echo/Say", false).await;
    // The inner server is traced too: the client's span ends last.
    let span = client_span(&recorded);
    let attributes = &span.attributes;
    assert_eq!(span.name, "echo.Echo/Say");
    assert_attr(attributes, "rpc.method", Some("echo.Echo/Say"));
    assert_attr(attributes, "server.address", Some("10.0.0.7"));
    assert_attr(attributes, "server.port", Some("50051"));
    assert_attr(attributes, "network.peer.address", Some("10.0.0.7"));
    assert_attr(attributes, "network.peer.port", Some("50051"));
    // NOT_FOUND: an error for the client.
    assert_attr(attributes, "error.type", Some("NOT_FOUND"));
}

#[tokio::test]
async fn a_client_can_name_its_target() {
    let (tracing, recorded) = Recorded::tracing(|builder| builder);
    let mut client = TracingLayer::client(&tracing)
        .server_address("echo-backend")
        .layer(grpc_server(&tracing, 0));
    // What a tonic client sends: the path only.
    let request = http::Request::builder()
        .uri("/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .body(Body::default())
        .unwrap();
    call(&mut client, request).await;
    let span = client_span(&recorded);
    assert_attr(&span.attributes, "server.address", Some("echo-backend"));
    assert_attr(&span.attributes, "server.port", None);
}

/// A server whose handler makes one call through a client layer to a
/// backend: the headers the backend received.
async fn relayed_headers(tracing: &RpcTracing, inbound: http::Request<Body>) -> http::HeaderMap {
    let received = std::sync::Arc::new(std::sync::Mutex::new(None));
    let sent = std::sync::Arc::clone(&received);
    let backend =
        TracingLayer::client(tracing).layer(service_fn(move |request: http::Request<Body>| {
            *sent.lock().unwrap() = Some(request.headers().clone());
            async { Ok::<_, Infallible>(http::Response::new(Body::default())) }
        }));
    let mut server =
        TracingLayer::server(tracing).layer(service_fn(move |_: http::Request<Body>| {
            let backend = backend.clone();
            async move {
                let request = http::Request::builder()
                    .uri("http://backend/")
                    .body(Body::default())
                    .unwrap();
                let response = backend.oneshot(request).await?;
                response.into_body().collect().await.unwrap();
                Ok::<_, Infallible>(http::Response::new(Body::default()))
            }
        }));
    call(&mut server, inbound).await;
    let headers = received.lock().unwrap().take();
    headers.expect("the backend was called")
}

#[tokio::test]
async fn a_server_forwards_its_request_id_to_the_calls_it_makes() {
    let inbound = |id: &str| {
        http::Request::builder()
            .uri("http://frontend/users/7")
            .header("traceparent", SAMPLED_PARENT)
            .header("x-request-id", id)
            .body(Body::default())
            .unwrap()
    };
    let (on, _) = Recorded::tracing(|builder| {
        builder
            .mesh(rpc_ext_core::mesh::MeshMode::Off)
            .forward_request_id(true)
    });
    let headers = relayed_headers(&on, inbound("abc-123")).await;
    let ids: Vec<_> = headers.get_all("x-request-id").iter().collect();
    assert_eq!(ids, ["abc-123"]);
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert_eq!(&traceparent[3..35], &SAMPLED_PARENT[3..35]);
    let too_long = relayed_headers(&on, inbound(&"a".repeat(200))).await;
    assert_eq!(too_long.get("x-request-id"), None);

    let (off, _) = Recorded::tracing(|builder| {
        builder
            .mesh(rpc_ext_core::mesh::MeshMode::On)
            .forward_request_id(false)
    });
    let headers = relayed_headers(&off, inbound("abc-123")).await;
    assert_eq!(headers.get("x-request-id"), None);
    assert!(headers.contains_key("traceparent"));
}
