//! Metrics from real Volo gRPC and tonic RPCs, scraped by a real Prometheus.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use echo::{
    servers::{TonicEcho, VoloEcho, FAIL},
    tonic_gen, volo_gen,
};
use tests::{eventually, PrometheusServer};
use rpc_ext_metrics::{MetricsEndpoint, RpcMetrics};
use tokio::{net::TcpListener, sync::watch};
use tower::{Service, ServiceBuilder};

const OK_CALLS: usize = 20;
const FAILED_CALLS: usize = 5;

struct Stop(watch::Sender<bool>);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

fn stop_pair() -> (
    Stop,
    impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let (tx, rx) = watch::channel(false);
    let wait = move || {
        let mut rx = rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    };
    (Stop(tx), wait)
}

async fn tonic_server(
    metrics: &RpcMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tonic::transport::Server::builder()
        .layer(rpc_ext_metrics::tower::MetricsLayer::server(metrics))
        .add_service(tonic_gen::echo_server::EchoServer::new(TonicEcho {
            served_by: addr,
        }))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        );
    tokio::spawn(server);
    Ok(addr)
}

async fn volo_server(
    metrics: &RpcMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = volo_grpc::server::Server::new()
        .layer_front(rpc_ext_metrics::volo::MetricsLayer::server(metrics))
        .add_service(
            volo_grpc::server::ServiceBuilder::new(volo_gen::echo::EchoServer::new(VoloEcho {
                served_by: addr,
            }))
            .build(),
        )
        .run_with_shutdown(
            volo::net::incoming::DefaultIncoming::from(listener),
            async move {
                shutdown.await;
                Ok(())
            },
        );
    tokio::spawn(server);
    Ok(addr)
}

async fn scrape_count(
    prometheus: &PrometheusServer,
    promql: &str,
    want: f64,
) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new(None);
    let result = eventually(Duration::from_secs(30), promql, || async {
        let value = prometheus.query_value(promql).await.ok().flatten();
        *last.lock().unwrap() = value;
        (value == Some(want)).then_some(())
    })
    .await;
    let last = *last.lock().unwrap();
    result.map_err(|e| anyhow::anyhow!("{e}; last value {last:?}, wanted {want}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_server_and_client_metrics_of_real_rpcs() -> anyhow::Result<()> {
    tests::init_test_logging();
    let (_stop, shutdown) = stop_pair();
    // One metrics set (and endpoint) per framework, so each is its own target.
    let tonic_metrics = RpcMetrics::builder().build()?;
    let volo_metrics = RpcMetrics::builder().build()?;
    let tonic_endpoint =
        MetricsEndpoint::serve("127.0.0.1:0".parse()?, tonic_metrics.registry().clone()).await?;
    let volo_endpoint =
        MetricsEndpoint::serve("127.0.0.1:0".parse()?, volo_metrics.registry().clone()).await?;

    let tonic_addr = tonic_server(&tonic_metrics, shutdown()).await?;
    let volo_addr = volo_server(&volo_metrics, shutdown()).await?;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{tonic_addr}"))?
        .connect()
        .await?;
    let mut tonic_client = tonic_gen::echo_client::EchoClient::new(
        ServiceBuilder::new()
            .layer(
                rpc_ext_metrics::tower::MetricsLayer::client(&tonic_metrics)
                    .server_address("echo-tonic"),
            )
            .service(channel),
    );
    let volo_client = volo_gen::echo::EchoClientBuilder::new("echo-volo")
        .layer_outer(rpc_ext_metrics::volo::MetricsLayer::client(&volo_metrics))
        .address(volo_addr)
        .build();

    for i in 0..OK_CALLS + FAILED_CALLS {
        let message = if i < OK_CALLS {
            "hi".to_owned()
        } else {
            FAIL.to_owned()
        };
        let tonic_result = tonic_client
            .say(tonic_gen::SayRequest {
                message: message.clone(),
            })
            .await;
        let volo_result = volo_client
            .say(volo_gen::echo::SayRequest {
                message: message.into(),
            })
            .await;
        assert_eq!(tonic_result.is_ok(), i < OK_CALLS);
        assert_eq!(volo_result.is_ok(), i < OK_CALLS);
    }

    // Prometheus asks for OpenMetrics first; the endpoint answers in kind.
    let scrape = reqwest::Client::new()
        .get(format!("http://{}/metrics", tonic_endpoint.local_addr()))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await?;
    assert!(scrape.headers()["content-type"]
        .to_str()?
        .starts_with("application/openmetrics-text"));
    let body = scrape.text().await?;
    assert!(
        body.contains("# TYPE rpc_server_call_duration_seconds histogram\n"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"));

    let prometheus = PrometheusServer::start(&[
        tonic_endpoint.local_addr().to_string(),
        volo_endpoint.local_addr().to_string(),
    ])
    .await?;
    for endpoint in [&tonic_endpoint, &volo_endpoint] {
        let instance = endpoint.local_addr();
        let server =
            format!(r#"rpc_system_name="grpc",rpc_method="echo.Echo/Say",instance="{instance}""#);
        // The histogram's `_count` is the call count, by status name.
        scrape_count(
            &prometheus,
            &format!(
                r#"rpc_server_call_duration_seconds_count{{{server},rpc_response_status_code="OK",error_type=""}}"#
            ),
            OK_CALLS as f64,
        )
        .await?;
        // INVALID_ARGUMENT: the real status, and the caller's mistake, not a
        // server error (no error_type).
        scrape_count(
            &prometheus,
            &format!(
                r#"rpc_server_call_duration_seconds_count{{{server},rpc_response_status_code="INVALID_ARGUMENT",error_type=""}}"#
            ),
            FAILED_CALLS as f64,
        )
        .await?;
        scrape_count(
            &prometheus,
            &format!(r#"sum(rpc_server_call_duration_seconds_count{{{server}}})"#),
            (OK_CALLS + FAILED_CALLS) as f64,
        )
        .await?;
        scrape_count(
            &prometheus,
            &format!(r#"sum(rpc_server_call_duration_seconds_bucket{{{server},le="+Inf"}})"#),
            (OK_CALLS + FAILED_CALLS) as f64,
        )
        .await?;
        // Sub-millisecond buckets exist (loopback calls land there).
        let fast = prometheus
            .query_value(&format!(
                r#"sum(rpc_server_call_duration_seconds_bucket{{{server},le="0.001"}})"#
            ))
            .await?;
        assert!(fast.is_some(), "no 1 ms bucket");
        scrape_count(
            &prometheus,
            &format!(r#"rpc_server_active_requests{{{server}}}"#),
            0.0,
        )
        .await?;
        scrape_count(
            &prometheus,
            &format!(
                r#"sum(rpc_client_call_duration_seconds_count{{instance="{instance}",rpc_method="echo.Echo/Say"}})"#
            ),
            (OK_CALLS + FAILED_CALLS) as f64,
        )
        .await?;
    }
    // A client counts every non-OK status as a failure. The tonic client's
    // target is the name it was given; the Volo client's its static address.
    scrape_count(
        &prometheus,
        r#"sum(rpc_client_call_duration_seconds_count{server_address="echo-tonic",server_port="",error_type="INVALID_ARGUMENT"})"#,
        FAILED_CALLS as f64,
    )
    .await?;
    scrape_count(
        &prometheus,
        &format!(
            r#"sum(rpc_client_call_duration_seconds_count{{server_address="127.0.0.1",server_port="{}",error_type="INVALID_ARGUMENT"}})"#,
            volo_addr.port()
        ),
        FAILED_CALLS as f64,
    )
    .await?;
    // tonic exposes response bodies: sizes are recorded per call.
    scrape_count(
        &prometheus,
        &format!(
            r#"rpc_server_response_size_bytes_count{{instance="{}",rpc_method="echo.Echo/Say"}}"#,
            tonic_endpoint.local_addr()
        ),
        (OK_CALLS + FAILED_CALLS) as f64,
    )
    .await?;

    // Every query of the shipped Grafana dashboard is valid PromQL against
    // these series, and the server panels have data.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../deploy/grafana/dashboards/rpc.json"))?;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "1m")
                .replace("$system", ".*")
                .replace("$method", ".*");
            prometheus.query(&expr).await?; // fails on invalid PromQL
            if panel["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Server requests"))
            {
                // rate() needs two scrapes in its window.
                eventually(Duration::from_secs(15), &expr, || async {
                    let result = prometheus.query(&expr).await.ok()?;
                    (!result.is_empty()).then_some(())
                })
                .await?;
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_junk_paths_do_not_grow_the_series() -> anyhow::Result<()> {
    let (_stop, shutdown) = stop_pair();
    let metrics = RpcMetrics::builder().build()?;
    let addr = tonic_server(&metrics, shutdown()).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;

    // Real method first, so there is a legitimate series to keep.
    tonic_gen::echo_client::EchoClient::new(channel.clone())
        .say(tonic_gen::SayRequest {
            message: "hi".into(),
        })
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    for i in 0..5_000 {
        grpc.ready().await?;
        let path = http::uri::PathAndQuery::from_str(&format!("/junk{i}.Service/Method{i}"))?;
        let result: Result<tonic::Response<tonic_gen::SayReply>, _> = grpc
            .unary(
                tonic::Request::new(tonic_gen::SayRequest {
                    message: "x".into(),
                }),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await;
        assert_eq!(result.unwrap_err().code(), tonic::Code::Unimplemented);
    }
    // Plain HTTP to unknown paths (no route template): collapsed as well.
    for i in 0..5_000 {
        let request = http::Request::builder()
            .uri(format!("http://{addr}/no/such/page/{i}"))
            .header("content-type", "text/plain")
            .body(tonic::body::Body::empty())?;
        let mut channel = channel.clone();
        let _ = tower::ServiceExt::ready(&mut channel)
            .await?
            .call(request)
            .await;
    }

    let text = rpc_ext_metrics::encode_text(metrics.registry())?;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("rpc_server_call_duration_seconds_count"))
        .collect();
    assert!(series.len() <= 4, "series grew: {series:#?}");
    assert!(series
        .iter()
        .any(|s| s.contains(r#"rpc_method="echo.Echo/Say""#)));
    assert!(text.contains(r#"rpc_server_call_duration_seconds_count{error_type="UNIMPLEMENTED",rpc_method="_OTHER",rpc_response_status_code="UNIMPLEMENTED",rpc_system_name="grpc"} 5000"#), "{text}");
    let http: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
        .collect();
    assert!(http.len() <= 2, "series grew: {http:#?}");
    assert!(
        http.iter().all(|s| s.contains(r#"http_route="_OTHER""#)),
        "{http:#?}"
    );
    assert!(!text.contains("/no/such/page"), "a raw path became a label");
    Ok(())
}

/// The same instruments, mirrored into OpenTelemetry and exported over
/// OTLP/HTTP and OTLP/gRPC to a real receiver, with the exporters as
/// opentelemetry-otlp builds them by default (an application with
/// rpc-ext-tracing in it, whose own HTTP client must not change that default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_calls_are_exported_as_opentelemetry_metrics() -> anyhow::Result<()> {
    for protocol in tests::otlp::Protocol::ALL {
        exported_as_opentelemetry_metrics_over(protocol).await?;
    }
    Ok(())
}

async fn exported_as_opentelemetry_metrics_over(
    protocol: tests::otlp::Protocol,
) -> anyhow::Result<()> {
    use tests::otlp::Protocol;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;

    let receiver = tests::otlp::OtlpReceiver::start().await?;
    let builder = opentelemetry_otlp::MetricExporter::builder();
    let exporter = match protocol {
        Protocol::Grpc => builder
            .with_tonic()
            .with_endpoint(receiver.endpoint_for(protocol))
            .build()?,
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_endpoint(format!("{}/v1/metrics", receiver.endpoint_for(protocol)))
            .build()?,
    };
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_periodic_exporter(exporter)
        .build();
    let metrics = RpcMetrics::builder()
        .otel_meter(provider.meter("rpc-ext-metrics"))
        .build()?;
    let (_stop, shutdown) = stop_pair();
    let addr = tonic_server(&metrics, shutdown()).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = tonic_gen::echo_client::EchoClient::new(channel);
    for i in 0..OK_CALLS + FAILED_CALLS {
        let message = if i < OK_CALLS { "hi" } else { FAIL };
        let _ = client
            .say(tonic_gen::SayRequest {
                message: message.into(),
            })
            .await;
    }
    let flush = provider.clone();
    tokio::task::spawn_blocking(move || flush.force_flush()).await??;

    let points = eventually(Duration::from_secs(10), "OTLP metric points", || async {
        let points = receiver.points();
        points
            .iter()
            .any(|p| p.metric == "rpc.server.call.duration")
            .then_some(points)
    })
    .await?;
    let calls = |code: &str| {
        points
            .iter()
            .filter(|p| {
                p.metric == "rpc.server.call.duration"
                    && p.attributes
                        .get("rpc.response.status_code")
                        .map(String::as_str)
                        == Some(code)
            })
            .map(|p| p.value)
            .fold(0.0, f64::max)
    };
    assert_eq!(calls("OK"), OK_CALLS as f64, "{points:#?}");
    assert_eq!(
        calls("INVALID_ARGUMENT"),
        FAILED_CALLS as f64,
        "{points:#?}"
    );
    let duration = points
        .iter()
        .find(|p| p.metric == "rpc.server.call.duration")
        .expect("duration");
    assert_eq!(duration.unit, "s");
    // The attributes of the Prometheus labels; absent, not empty, when a
    // label would be empty (no error.type on calls that did not fail).
    assert_eq!(duration.attributes["rpc.method"], "echo.Echo/Say");
    assert_eq!(duration.attributes["rpc.system.name"], "grpc");
    assert!(!duration.attributes.contains_key("rpc.service"));
    assert!(points
        .iter()
        .filter(|p| p.metric == "rpc.server.call.duration")
        .all(|p| !p.attributes.contains_key("error.type")));
    let active = points
        .iter()
        .rfind(|p| {
            p.metric == "rpc.server.active_requests"
                && p.attributes.get("rpc.method").map(String::as_str) == Some("echo.Echo/Say")
        })
        .expect("active requests");
    assert_eq!(active.value, 0.0);
    tokio::task::spawn_blocking(move || provider.shutdown()).await??;
    Ok(())
}

/// Scrapes while serving: every scrape answers a well-formed exposition, and
/// counters only grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_while_serving_load() -> anyhow::Result<()> {
    let (_stop, shutdown) = stop_pair();
    let metrics = RpcMetrics::builder().build()?;
    let endpoint =
        MetricsEndpoint::serve("127.0.0.1:0".parse()?, metrics.registry().clone()).await?;
    let addr = tonic_server(&metrics, shutdown()).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;

    const CALLERS: usize = 4;
    const CALLS: usize = 250;
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let mut client = tonic_gen::echo_client::EchoClient::new(channel.clone());
        callers.push(tokio::spawn(async move {
            for _ in 0..CALLS {
                client
                    .say(tonic_gen::SayRequest {
                        message: "hi".into(),
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    let url = format!("http://{}/metrics", endpoint.local_addr());
    let mut scrapers = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        scrapers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut last = 0.0;
            for _ in 0..50 {
                let body = http
                    .get(&url)
                    .send()
                    .await?
                    .error_for_status()?
                    .text()
                    .await?;
                let total: f64 = body
                    .lines()
                    .filter(|l| {
                        l.starts_with("rpc_server_call_duration_seconds_count{")
                            && l.contains(r#"rpc_response_status_code="OK""#)
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                anyhow::ensure!(total >= last, "counter went backwards: {last} -> {total}");
                last = total;
            }
            anyhow::Ok(())
        }));
    }
    for task in callers.into_iter().chain(scrapers) {
        task.await??;
    }
    let text = rpc_ext_metrics::encode_text(metrics.registry())?;
    assert!(
        text.contains(&format!(
            r#"rpc_server_call_duration_seconds_count{{error_type="",rpc_method="echo.Echo/Say",rpc_response_status_code="OK",rpc_system_name="grpc"}} {}"#,
            CALLERS * CALLS
        )),
        "{text}"
    );
    Ok(())
}
