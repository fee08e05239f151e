//! Volo HTTP servers: metrics and spans labelled by route template, context
//! read from the headers.

use std::time::Duration;

use rpc_ext_metrics::RpcMetrics;
use tests::otlp::{OtlpReceiver, Protocol, SPAN_KIND_SERVER, STATUS_ERROR};
use tokio::net::TcpListener;
use volo_http::server::{
    route::{get, Router},
    Server,
};

use crate::support::pipeline;

async fn user() -> &'static str {
    "a user"
}

async fn boom() -> http::StatusCode {
    http::StatusCode::INTERNAL_SERVER_ERROR
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_label_metrics_and_name_spans() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let (guard, tracing) = pipeline("web", &receiver, Protocol::HttpProtobuf)?;
    let metrics = RpcMetrics::builder().build()?;
    let router: Router = Router::new()
        .route("/users/{id}", get(user))
        .route("/boom", get(boom));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        Server::new(router)
            .layer(rpc_ext_tracing::volo::HttpTracingLayer::new(&tracing))
            .layer(rpc_ext_metrics::volo::HttpMetricsLayer::new(&metrics))
            .run(volo::net::incoming::DefaultIncoming::from(listener)),
    );

    let http = reqwest::Client::new();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for path in ["/users/1", "/users/2", "/boom", "/no/such/page"] {
        let response = http
            .get(format!("http://{addr}{path}"))
            .header("traceparent", parent)
            .send()
            .await?;
        let want = match path {
            "/boom" => 500,
            "/no/such/page" => 404,
            _ => 200,
        };
        assert_eq!(response.status().as_u16(), want, "{path}");
    }

    let text = rpc_ext_metrics::encode_text(metrics.registry())?;
    for (route, status, count) in [
        ("/users/{id}", "200", 2),
        ("/boom", "500", 1),
        ("_OTHER", "404", 1),
    ] {
        // A server's 5xx is an error; the 404 is the caller's.
        let error = if status == "500" { status } else { "" };
        let series = format!(
            r#"http_server_request_duration_seconds_count{{error_type="{error}",http_request_method="GET",http_response_status_code="{status}",http_route="{route}",url_scheme="http"}} {count}"#
        );
        assert!(text.contains(&series), "missing {series} in\n{text}");
    }
    assert!(!text.contains("/users/1"), "a raw path became a label");

    guard.provider().force_flush()?;
    let spans = receiver
        .wait_for(Duration::from_secs(10), "four server spans", |spans| {
            spans.iter().filter(|s| s.kind == SPAN_KIND_SERVER).count() >= 4
        })
        .await?;
    let users: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "GET /users/{id}")
        .collect();
    assert_eq!(users.len(), 2, "{spans:#?}");
    for span in &users {
        assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.parent_span_id, "00f067aa0ba902b7");
        assert_eq!(span.attr("http.route"), "/users/{id}");
        assert_eq!(span.attr("http.request.method"), "GET");
        assert_eq!(span.attr("http.response.status_code"), "200");
        assert_eq!(span.attr("url.scheme"), "http");
        assert!(span.attr("url.path").starts_with("/users/"), "{span:#?}");
        assert_eq!(span.attr("server.address"), "127.0.0.1");
        assert_eq!(span.attr("server.port"), addr.port().to_string());
    }
    let boom = spans
        .iter()
        .find(|s| s.name == "GET /boom")
        .expect("boom span");
    assert_eq!(boom.status_code, STATUS_ERROR, "5xx is a server error");
    // No route matched: the method alone, never the raw path (that is
    // `url.path`), and no `http.route`.
    let unmatched = spans.iter().find(|s| s.name == "GET").expect("404 span");
    assert_ne!(
        unmatched.status_code, STATUS_ERROR,
        "4xx is the caller's error"
    );
    assert_eq!(unmatched.attr("http.route"), "");
    assert_eq!(unmatched.attr("url.path"), "/no/such/page");
    assert_eq!(unmatched.attr("http.response.status_code"), "404");
    server.abort();
    Ok(())
}

/// A Volo HTTP client with both layers: its span is the parent of the
/// server's, and its calls are counted per host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_volo_http_client_propagates_and_is_measured() -> anyhow::Result<()> {
    use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};

    let receiver = OtlpReceiver::start().await?;
    let (server_guard, server_tracing) = pipeline("web", &receiver, Protocol::HttpProtobuf)?;
    let (client_guard, client_tracing) = pipeline("caller", &receiver, Protocol::Grpc)?;
    let metrics = RpcMetrics::builder().build()?;
    let router: Router = Router::new().route("/users/{id}", get(user));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        Server::new(router)
            .layer(rpc_ext_tracing::volo::HttpTracingLayer::new(
                &server_tracing,
            ))
            .run(volo::net::incoming::DefaultIncoming::from(listener)),
    );
    let client = volo_http::client::Client::builder()
        .layer_outer(rpc_ext_tracing::volo::HttpTracingLayer::new(
            &client_tracing,
        ))
        .layer_outer(rpc_ext_metrics::volo::HttpMetricsLayer::new(&metrics))
        .build()?;

    let root = opentelemetry::Context::current_with_span(
        client_guard.provider().tracer("test").start("root"),
    );
    let trace_id = root.span().span_context().trace_id().to_string();
    let response = opentelemetry::trace::FutureExt::with_context(
        client
            .get(format!("http://{addr}/users/7"))
            .send::<volo_http::body::Body>(),
        root.clone(),
    )
    .await?;
    assert_eq!(response.status(), 200);
    root.span().end();
    client_guard.provider().force_flush()?;
    server_guard.provider().force_flush()?;

    let spans = receiver
        .wait_for(
            Duration::from_secs(10),
            "client and server spans",
            |spans| spans.iter().filter(|s| s.trace_id == trace_id).count() >= 3,
        )
        .await?;
    let client_span = spans
        .iter()
        .find(|s| s.service == "caller" && s.kind == tests::otlp::SPAN_KIND_CLIENT)
        .expect("client span");
    assert_eq!(client_span.name, "GET");
    assert_eq!(
        client_span.attr("url.full"),
        format!("http://{addr}/users/7")
    );
    assert_eq!(client_span.attr("server.address"), "127.0.0.1");
    assert_eq!(client_span.attr("server.port"), addr.port().to_string());
    assert_eq!(client_span.attr("network.peer.address"), "127.0.0.1");
    assert_eq!(client_span.attr("http.route"), "", "server spans only");
    let server_span = spans
        .iter()
        .find(|s| s.service == "web" && s.kind == SPAN_KIND_SERVER)
        .expect("server span");
    assert_eq!(server_span.trace_id, trace_id);
    assert_eq!(server_span.parent_span_id, client_span.span_id);

    let text = rpc_ext_metrics::encode_text(metrics.registry())?;
    assert!(
        text.contains(&format!(
            r#"http_client_request_duration_seconds_count{{error_type="",http_request_method="GET",http_response_status_code="200",server_address="127.0.0.1",server_port="{}"}} 1"#,
            addr.port()
        )),
        "{text}"
    );
    server.abort();
    Ok(())
}
