//! The tower layer on tonic-style gRPC and plain HTTP requests: what is
//! left out when asked.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};

use super::{MetricsLayer, RouteTemplate};
use crate::{Conventions, RpcMetrics};

fn metrics(
    configure: impl FnOnce(crate::RpcMetricsBuilder) -> crate::RpcMetricsBuilder,
) -> RpcMetrics {
    configure(RpcMetrics::builder().conventions(Conventions::Current))
        .build()
        .unwrap()
}

/// The samples recorded (no `# HELP`, `# TYPE`).
fn samples(metrics: &RpcMetrics) -> Vec<String> {
    crate::encode_text(metrics.registry())
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A tonic-style unary gRPC request to `path`: one message, no
/// `content-length`.
fn grpc_request(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap()
}

/// What a tonic server answers: a message, then `grpc-status: 0` in the
/// trailers.
async fn grpc_ok<B>(
    _: Request<B>,
) -> Result<Response<impl http_body::Body<Data = Bytes, Error = Infallible>>, Infallible> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]))
        .with_trailers(async { Some(Ok(trailers)) });
    Ok(Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap())
}

/// Calls `layer` around a tonic-style service and drains the response
/// body, as a server does.
async fn grpc_call(layer: &MetricsLayer, path: &str) {
    let response = layer
        .layer(service_fn(grpc_ok))
        .oneshot(grpc_request(path))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
}

const HEALTH: &str = "/grpc.health.v1.Health/Check";

#[tokio::test]
async fn health_checks_are_recorded_by_default() {
    for layer in [MetricsLayer::server, MetricsLayer::client] {
        let metrics = metrics(|builder| builder);
        grpc_call(&layer(&metrics), HEALTH).await;
        let recorded = samples(&metrics);
        assert!(
            recorded
                .iter()
                .any(|line| line.contains("_call_duration_seconds_count{")
                    && line.contains(r#"rpc_method="grpc.health.v1.Health/Check""#)
                    && line.ends_with(" 1")),
            "{recorded:#?}"
        );
    }
}

#[tokio::test]
async fn skipped_health_checks_record_nothing() {
    for layer in [MetricsLayer::server, MetricsLayer::client] {
        let metrics = metrics(|builder| builder.skip_health_checks(true));
        let layer = layer(&metrics);
        // In flight: nothing either (not even under `_OTHER`).
        let response = layer
            .clone()
            .layer(service_fn(grpc_ok))
            .oneshot(grpc_request(HEALTH))
            .await
            .unwrap();
        assert_eq!(samples(&metrics), Vec::<String>::new());
        response.into_body().collect().await.unwrap();
        grpc_call(&layer, "/grpc.health.v1.Health/Watch").await;
        assert_eq!(samples(&metrics), Vec::<String>::new());
        // Other methods are recorded.
        grpc_call(&layer, "/echo.Echo/Say").await;
        let recorded = samples(&metrics);
        assert!(
            recorded
                .iter()
                .any(|line| line.contains(r#"rpc_method="echo.Echo/Say""#)),
            "{recorded:#?}"
        );
        assert!(
            !recorded.iter().any(|line| line.contains("grpc.health")),
            "{recorded:#?}"
        );
    }
}

/// An HTTP request to `path`, routed to `route` when given (as axum's
/// `Router::layer` or an outer layer tells the route).
fn http_request(path: &str, route: Option<&'static str>) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .uri(path)
        .body(Full::new(Bytes::from_static(b"hi")))
        .unwrap();
    if let Some(route) = route {
        request.extensions_mut().insert(RouteTemplate(route.into()));
    }
    request
}

async fn http_ok<B>(_: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

#[tokio::test]
async fn listed_http_routes_record_nothing() {
    let metrics = metrics(|builder| builder.skip_http_routes(["/healthz", "/debug/{name}"]));
    let server = MetricsLayer::server(&metrics).layer(service_fn(http_ok));
    let skipped = [
        // Inside the router: by the route template.
        http_request("/healthz", Some("/healthz")),
        http_request("/debug/x", Some("/debug/{name}")),
        // Before routing: by the path, for templates without parameters.
        http_request("/healthz", None),
    ];
    let mut responses = Vec::new();
    for request in skipped {
        responses.push(server.clone().oneshot(request).await.unwrap());
    }
    // Not in flight, nor recorded once done.
    assert_eq!(samples(&metrics), Vec::<String>::new());
    for response in responses {
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(samples(&metrics), Vec::<String>::new());

    for request in [
        http_request("/orders", Some("/orders")),
        // Before routing, a template with parameters matches no path: the
        // call is recorded, under `_OTHER`.
        http_request("/debug/x", None),
    ] {
        let response = server.clone().oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    let recorded = samples(&metrics);
    for route in ["/orders", "_OTHER"] {
        let series = format!(
            r#"http_server_request_duration_seconds_count{{error_type="",http_request_method="GET",http_response_status_code="200",http_route="{route}",url_scheme="http"}} 1"#
        );
        assert!(
            recorded.contains(&series),
            "missing {series} in {recorded:#?}"
        );
    }
    assert!(
        !recorded
            .iter()
            .any(|line| line.contains("healthz") || line.contains("debug")),
        "{recorded:#?}"
    );
}

#[tokio::test]
async fn listed_routes_do_not_apply_to_clients() {
    let metrics = metrics(|builder| builder.skip_http_routes(["/healthz"]));
    let client = MetricsLayer::client(&metrics).layer(service_fn(http_ok));
    let request = Request::builder()
        .uri("http://api:8080/healthz")
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap();
    let recorded = samples(&metrics);
    assert!(
        recorded
            .iter()
            .any(|line| line.starts_with("http_client_request_duration_seconds_count{")),
        "{recorded:#?}"
    );
}

/// A gRPC client call to `uri` through `layer`.
async fn grpc_call_to(layer: &MetricsLayer, uri: &str) {
    let mut request = grpc_request("/echo.Echo/Say");
    *request.uri_mut() = uri.parse().unwrap();
    let response = layer
        .layer(service_fn(grpc_ok))
        .oneshot(request)
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn calls_seen_again_keep_their_own_labels() {
    // One thread, one method, two metrics, three targets: however often a
    // call repeats, it is recorded under its own labels.
    let first = metrics(|builder| builder);
    let second = metrics(|builder| builder);
    let by_uri = MetricsLayer::client(&first);
    let named = MetricsLayer::client(&first).server_address("echo:50051");
    let other = MetricsLayer::client(&second);
    for _ in 0..3 {
        grpc_call_to(&by_uri, "http://a.internal:1/echo.Echo/Say").await;
        grpc_call_to(&by_uri, "http://b.internal:2/echo.Echo/Say").await;
        grpc_call_to(&named, "http://a.internal:1/echo.Echo/Say").await;
        grpc_call_to(&other, "http://a.internal:1/echo.Echo/Say").await;
    }
    let series = |address: &str, port: u16| {
        format!(
            r#"rpc_client_call_duration_seconds_count{{error_type="",rpc_method="echo.Echo/Say",rpc_response_status_code="OK",rpc_system_name="grpc",server_address="{address}",server_port="{port}"}} 3"#
        )
    };
    let recorded = samples(&first);
    for expected in [
        series("a.internal", 1),
        series("b.internal", 2),
        series("echo", 50051),
    ] {
        assert!(recorded.contains(&expected), "{expected} in {recorded:#?}");
    }
    let recorded = samples(&second);
    assert!(recorded.contains(&series("a.internal", 1)), "{recorded:#?}");
}
