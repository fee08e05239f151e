//! Metrics from real Volo gRPC and tonic RPCs, scraped by a real Prometheus.

use std::{net::SocketAddr, time::Duration};

use echo::{
    servers::{TonicEcho, FAIL},
    tonic_gen, volo_gen,
};
use rpc_ext_metrics::{MetricsEndpoint, RpcMetrics};
use tests::{eventually, PrometheusServer};
use tokio::{net::TcpListener, sync::watch};
use tower::{Service, ServiceBuilder};

use crate::support::{promtool_check_metrics, serve_volo_echo};

mod exposition;
mod junk;

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
    serve_volo_echo(
        listener,
        rpc_ext_metrics::volo::MetricsLayer::server(metrics),
        shutdown,
    )
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

/// Junk from clients of every kind — gRPC paths (random, 6,000 characters
/// long, non-UTF-8 percent escapes, no service or method, extra segments,
/// unknown methods), HTTP paths and verbs, content types, `:authority`,
/// `:scheme` and `Host` — answered with every gRPC status (valid or not) and
/// an HTTP status of every class: each family keeps within the product of
/// its labels' finite values, and no label carries a client's string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_junk_paths_do_not_grow_the_series() -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    use junk::{Answer, FiniteLabels, Plan, ANSWER_METHOD, ORIGINS};

    let (_stop, shutdown) = stop_pair();
    let metrics = RpcMetrics::builder().build()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(rpc_ext_metrics::tower::MetricsLayer::server(&metrics))
            .add_service(tonic_gen::echo_server::EchoServer::new(TonicEcho {
                served_by: addr,
            }))
            .add_service(Answer)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown(),
            ),
    );
    let mut channels = Vec::new();
    for origin in ORIGINS {
        let origin = origin
            .parse()
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .origin(origin)
                .connect()
                .await?,
        );
    }
    // The real method first, OK: a legitimate series to keep.
    tonic_gen::echo_client::EchoClient::new(channels[0].clone())
        .say(tonic_gen::SayRequest {
            message: "hi".into(),
        })
        .await?;

    let plan = Plan::new(channels.len())?;
    let (grpc_requests, http_requests) = (plan.grpc_requests, plan.http_requests);
    // A 103 is not a final response: the client's HTTP/2 stack resets those
    // streams, after the server has recorded them.
    let (mut answered, mut reset_after_103) = (0u64, 0u64);
    for (origin, request) in plan.requests {
        let answers_103 = request.uri().path().starts_with("/test.Answer/")
            && request
                .headers()
                .get("x-answer-http-status")
                .is_some_and(|status| status == "103");
        let mut channel = channels[origin].clone();
        let result = tower::ServiceExt::ready(&mut channel)
            .await?
            .call(request)
            .await;
        match result {
            Ok(response) => {
                answered += 1;
                response.into_body().collect().await?;
            }
            Err(_) if answers_103 => reset_after_103 += 1,
            Err(error) => return Err(error.into()),
        }
    }

    let text = rpc_ext_metrics::encode_text(metrics.registry())?;
    let series = junk::series_of(&text)?;
    let finite = FiniteLabels::new(&plan.http_statuses);
    for (family, labels) in &series {
        assert!(
            finite.allow(family, labels),
            "a series outside the finite label values: {family} {labels:?}"
        );
        for (_, value) in labels {
            let raw = finite.client_input_in(value, &plan.sent);
            assert!(raw.is_none(), "client input {raw:?} in {family} {labels:?}");
        }
    }
    let mut figures = Vec::new();
    for (family, bound) in finite.bounds() {
        let count = series.iter().filter(|(f, _)| f == family).count();
        figures.push(format!("{family} {count} (bound {bound})"));
        assert!(
            count <= bound,
            "{family}: {count} series, more than {bound}"
        );
    }
    eprintln!(
        "{grpc_requests} gRPC and {http_requests} HTTP junk requests ({} distinct client \
         strings), {answered} answered, {reset_after_103} reset after a 103; series: {}",
        plan.sent.len(),
        figures.join(", ")
    );
    // Every status the handler gave was recorded: each gRPC code of its
    // method, each HTTP status.
    let has = |family: &str, wanted: &[(&str, &str)]| {
        series.iter().any(|(f, labels)| {
            f == family
                && wanted
                    .iter()
                    .all(|&(name, value)| labels.iter().any(|(n, v)| n == name && v == value))
        })
    };
    for (status, _) in finite.grpc_outcomes.iter().filter(|(s, _)| !s.is_empty()) {
        assert!(
            has(
                "rpc_server_call_duration_seconds",
                &[
                    ("rpc_method", ANSWER_METHOD),
                    ("rpc_response_status_code", status)
                ]
            ),
            "no {ANSWER_METHOD} series with {status}"
        );
    }
    for (status, _) in finite.http_outcomes.iter().filter(|(s, _)| !s.is_empty()) {
        assert!(
            has(
                "http_server_request_duration_seconds",
                &[("http_response_status_code", status)]
            ),
            "no HTTP series with status {status}"
        );
    }
    // And every request was recorded, once, under those series.
    assert_eq!(answered + reset_after_103, grpc_requests + http_requests);
    let families = exposition::parse(&text)?;
    let calls = |family: &str| {
        families.get(family).map_or(0.0, |f| {
            f.samples
                .iter()
                .filter(|s| s.name.ends_with("_count"))
                .map(|s| s.value)
                .sum::<f64>()
        })
    };
    assert_eq!(
        calls("rpc_server_call_duration_seconds"),
        (grpc_requests + 1) as f64
    );
    assert_eq!(
        calls("http_server_request_duration_seconds"),
        http_requests as f64
    );
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
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tests::otlp::Protocol;

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

/// Scrapes while serving: every line of every scrape parses (see
/// [`exposition`]), `promtool check metrics` accepts a scrape taken under
/// load, and counters only grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_while_serving_load() -> anyhow::Result<()> {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    };

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
    const SCRAPERS: usize = 4;
    /// Scrapes per scraper at least (more while calls are still served).
    const SCRAPES: usize = 50;
    let completed = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let mut client = tonic_gen::echo_client::EchoClient::new(channel.clone());
        let completed = completed.clone();
        callers.push(tokio::spawn(async move {
            for _ in 0..CALLS {
                client
                    .say(tonic_gen::SayRequest {
                        message: "hi".into(),
                    })
                    .await?;
                completed.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let url = format!("http://{}/metrics", endpoint.local_addr());
    // The first scrape taken entirely while calls were being served, a
    // quarter of them done at least.
    let under_load: Arc<Mutex<Option<(usize, String)>>> = Arc::default();
    let mut scrapers = Vec::new();
    for _ in 0..SCRAPERS {
        let (url, completed, under_load) = (url.clone(), completed.clone(), under_load.clone());
        scrapers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut last = 0.0;
            let mut n = 0;
            // At least SCRAPES each, and on until the last call is served.
            while n < SCRAPES || completed.load(Ordering::Relaxed) < CALLERS * CALLS {
                n += 1;
                let before = completed.load(Ordering::Relaxed);
                let body = http
                    .get(&url)
                    .send()
                    .await?
                    .error_for_status()?
                    .text()
                    .await?;
                let after = completed.load(Ordering::Relaxed);
                let families = exposition::parse(&body)
                    .map_err(|e| anyhow::anyhow!("scrape {n}: {e:#}\n{body}"))?;
                let total: f64 = families
                    .get("rpc_server_call_duration_seconds")
                    .map(|family| {
                        family
                            .samples
                            .iter()
                            .filter(|s| {
                                s.name == "rpc_server_call_duration_seconds_count"
                                    && s.label("rpc_response_status_code") == Some("OK")
                            })
                            .map(|s| s.value)
                            .sum()
                    })
                    .unwrap_or(0.0);
                anyhow::ensure!(total >= last, "counter went backwards: {last} -> {total}");
                last = total;
                if before >= CALLERS * CALLS / 4 && after < CALLERS * CALLS {
                    let mut kept = under_load.lock().unwrap();
                    if kept.is_none() {
                        *kept = Some((before, body));
                    }
                }
            }
            anyhow::Ok(n)
        }));
    }
    for task in callers {
        task.await??;
    }
    let mut scrapes = 0;
    for task in scrapers {
        scrapes += task.await??;
    }
    let (calls_before, body) = under_load
        .lock()
        .unwrap()
        .take()
        .expect("no scrape was taken while calls were being served");
    let checked = promtool_check_metrics(&body)?;
    eprintln!(
        "{scrapes} scrapes parsed; promtool check metrics on a scrape taken after \
         {calls_before} of {} calls ({} lines): {}; {}{}",
        CALLERS * CALLS,
        body.lines().count(),
        checked.status,
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(checked.status.success(), "promtool rejected:\n{body}");

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
