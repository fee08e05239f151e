//! axum: the tower layers label metrics and name spans by the matched route.

use std::time::Duration;

use axum::{routing::get, Router};
use rpc_ext_metrics::RpcMetrics;
use tests::otlp::{OtlpReceiver, Protocol, SPAN_KIND_SERVER};
use tokio::net::TcpListener;

use crate::support::pipeline;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_routes_label_metrics_and_name_spans() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let (guard, tracing) = pipeline("axum", &receiver, Protocol::HttpProtobuf)?;
    let metrics = RpcMetrics::builder().build()?;
    // `Router::layer` wraps each route, after matching: `MatchedPath` is set.
    let app = Router::new()
        .route("/orders/{id}", get(|| async { "an order" }))
        .layer(rpc_ext_metrics::tower::MetricsLayer::server(&metrics))
        .layer(rpc_ext_tracing::tower::TracingLayer::server(&tracing));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let http = reqwest::Client::new();
    for id in 0..3 {
        let response = http
            .get(format!("http://{addr}/orders/{id}"))
            .send()
            .await?;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        http.get(format!("http://{addr}/nowhere/7"))
            .send()
            .await?
            .status(),
        404
    );

    let text = rpc_ext_metrics::encode_text(metrics.registry())?;
    assert!(
        text.contains(r#"http_server_request_duration_seconds_count{error_type="",http_request_method="GET",http_response_status_code="200",http_route="/orders/{id}",url_scheme="http"} 3"#),
        "{text}"
    );
    assert!(!text.contains("/orders/1"), "a raw path became a label");

    guard.provider().force_flush()?;
    let spans = receiver
        .wait_for(Duration::from_secs(10), "three route spans", |spans| {
            spans.iter().filter(|s| s.kind == SPAN_KIND_SERVER).count() >= 3
        })
        .await?;
    assert!(
        spans
            .iter()
            .filter(|s| s.name == "GET /orders/{id}")
            .count()
            == 3,
        "{spans:#?}"
    );
    for span in spans.iter().filter(|s| s.name == "GET /orders/{id}") {
        assert_eq!(span.attr("http.route"), "/orders/{id}");
        assert_eq!(span.attr("url.scheme"), "http");
        assert!(span.attr("url.path").starts_with("/orders/"), "{span:#?}");
        assert_eq!(span.attr("server.address"), "127.0.0.1");
    }
    server.abort();
    Ok(())
}
