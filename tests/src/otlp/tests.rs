//! Exports over every transport and check what the receiver kept.

use std::{io::Write as _, time::Duration};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest},
        trace::v1::{
            trace_service_client::TraceServiceClient, ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        },
    },
    common::v1::{any_value, AnyValue, KeyValue},
    metrics::v1::{
        metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    },
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message as _;
use tonic::{
    codec::CompressionEncoding,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use super::{OtlpReceiver, Protocol, TraceFault};

fn service(name: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(name.into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// One span named `name` from service `svc`.
fn traces(name: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: service("svc"),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    name: name.into(),
                    trace_id: vec![0xab; 16],
                    span_id: vec![0x01; 8],
                    kind: super::SPAN_KIND_SERVER,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One gauge point `name` = `value`.
fn metrics(name: &str, value: f64) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: service("svc"),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: name.into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            value: Some(number_data_point::Value::AsDouble(value)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// POSTs `body` to `base` + `path` as OTLP/HTTP does.
async fn post(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: Vec<u8>,
    gzipped: bool,
) -> reqwest::Result<reqwest::Response> {
    let mut request = client
        .post(format!("{base}{path}"))
        .header("content-type", "application/x-protobuf");
    if gzipped {
        request = request.header("content-encoding", "gzip");
    }
    request.body(body).send().await
}

fn names(receiver: &OtlpReceiver) -> Vec<String> {
    let mut names: Vec<String> = receiver.spans().into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

#[tokio::test]
async fn both_transports_plain_and_gzip_feed_one_store() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    assert_eq!(receiver.endpoint(), receiver.endpoint_for(Protocol::Grpc));
    assert_ne!(receiver.endpoint(), receiver.http_endpoint());
    assert!(receiver.http_endpoint().starts_with("http://127.0.0.1:"));

    let mut grpc = TraceServiceClient::connect(receiver.endpoint()).await?;
    grpc.export(traces("grpc-plain")).await?;
    let mut grpc = grpc.send_compressed(CompressionEncoding::Gzip);
    grpc.export(traces("grpc-gzip")).await?;
    MetricsServiceClient::connect(receiver.endpoint())
        .await?
        .send_compressed(CompressionEncoding::Gzip)
        .export(metrics("grpc.gauge", 1.5))
        .await?;

    let http = reqwest::Client::new();
    let base = receiver.http_endpoint();
    let answer = post(
        &http,
        &base,
        "/v1/traces",
        traces("http-plain").encode_to_vec(),
        false,
    )
    .await?;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/x-protobuf");
    ExportTraceServiceResponse::decode(answer.bytes().await?)?;
    let body = gzip(&traces("http-gzip").encode_to_vec());
    assert_eq!(
        post(&http, &base, "/v1/traces", body, true).await?.status(),
        200
    );
    let body = metrics("http.gauge", 2.0).encode_to_vec();
    assert_eq!(
        post(&http, &base, "/v1/metrics", body, false)
            .await?
            .status(),
        200
    );

    assert_eq!(
        names(&receiver),
        ["grpc-gzip", "grpc-plain", "http-gzip", "http-plain"]
    );
    let span = &receiver.spans()[0];
    assert_eq!(span.service, "svc");
    assert_eq!(span.trace_id, "ab".repeat(16));
    let mut points: Vec<_> = receiver
        .points()
        .into_iter()
        .map(|p| (p.metric, p.value))
        .collect();
    points.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        points,
        [("grpc.gauge".into(), 1.5), ("http.gauge".into(), 2.0)]
    );
    assert_eq!(receiver.export_requests(), 4);
    assert_eq!(receiver.export_requests_over(Protocol::Grpc), 2);
    assert_eq!(receiver.export_requests_over(Protocol::HttpProtobuf), 2);
    // grpc-gzip and http-gzip; metrics exports are not counted.
    assert_eq!(receiver.gzip_requests(), 2);
    assert_eq!(receiver.tls_rejections(), 0);
    Ok(())
}

#[tokio::test]
async fn http_refuses_what_it_cannot_decode() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let http = reqwest::Client::new();
    let base = receiver.http_endpoint();
    let garbage = vec![0xff; 7];
    let answer = post(&http, &base, "/v1/traces", garbage.clone(), false).await?;
    assert_eq!(answer.status(), 400);
    let answer = post(&http, &base, "/v1/traces", garbage, true).await?;
    assert_eq!(answer.status(), 400, "not gzip");
    let answer = http
        .post(format!("{base}/v1/traces"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await?;
    assert_eq!(answer.status(), 415);
    let answer = post(&http, &base, "/", traces("x").encode_to_vec(), false).await?;
    assert_eq!(answer.status(), 404, "the base URL is no route");
    assert!(answer.text().await?.contains("/v1/traces"));
    assert_eq!(receiver.export_requests(), 0);
    assert!(receiver.spans().is_empty());
    Ok(())
}

#[tokio::test]
async fn trace_faults_apply_to_both_transports() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let http = reqwest::Client::new();
    let base = receiver.http_endpoint();
    let mut grpc = TraceServiceClient::connect(receiver.endpoint()).await?;

    receiver.set_trace_fault(TraceFault::Unavailable);
    let status = grpc.export(traces("lost")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let answer = post(
        &http,
        &base,
        "/v1/traces",
        traces("lost").encode_to_vec(),
        false,
    )
    .await?;
    assert_eq!(answer.status(), 503);
    assert!(receiver.spans().is_empty());
    assert_eq!(receiver.export_requests(), 2);
    // Refused, but decoded and listed apart: one span per refused request.
    let refused: Vec<String> = receiver
        .refused_spans()
        .into_iter()
        .map(|span| span.name)
        .collect();
    assert_eq!(refused, ["lost", "lost"]);

    let delay = Duration::from_millis(300);
    receiver.set_trace_fault(TraceFault::Slow(delay));
    let started = tokio::time::Instant::now();
    let answer = post(
        &http,
        &base,
        "/v1/traces",
        traces("slow").encode_to_vec(),
        false,
    )
    .await?;
    assert_eq!(answer.status(), 200);
    assert!(started.elapsed() >= delay);
    receiver.set_trace_fault(TraceFault::Healthy);
    grpc.export(traces("healthy")).await?;
    assert_eq!(names(&receiver), ["healthy", "slow"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_otlp_grpc_exporter_is_received() -> anyhow::Result<()> {
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::WithExportConfig as _;

    let receiver = OtlpReceiver::start().await?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(receiver.endpoint_for(Protocol::Grpc))
        .build()?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .build();
    // The simple processor blocks its thread on the export, which tonic
    // drives on the runtime: keep it off the runtime's threads.
    let provider = tokio::task::spawn_blocking(move || {
        provider.tracer("otlp-test").in_span("from-sdk", |_| {});
        provider
    })
    .await?;
    receiver
        .wait_for(Duration::from_secs(10), "the SDK's span", |spans| {
            spans
                .iter()
                .any(|s| s.name == "from-sdk" && s.trace_id.len() == 32)
        })
        .await?;
    tokio::task::spawn_blocking(move || provider.shutdown()).await??;
    Ok(())
}

/// reqwest and tonic clients trusting the receiver's CA, with the client
/// certificate or without.
async fn tls_clients(
    receiver: &OtlpReceiver,
    with_identity: bool,
) -> anyhow::Result<(reqwest::Client, TraceServiceClient<Channel>)> {
    let ca = std::fs::read(receiver.ca_certificate_path())?;
    let cert = std::fs::read(receiver.client_certificate_path())?;
    let key = std::fs::read(receiver.client_key_path())?;
    let mut http =
        reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(&ca)?]);
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca));
    if with_identity {
        http = http.identity(reqwest::Identity::from_pem(
            &[&cert[..], &key[..]].concat(),
        )?);
        tls = tls.identity(Identity::from_pem(&cert, &key));
    }
    // `connect_lazy`: a rejected handshake shows as the export's error.
    let channel = Channel::from_shared(receiver.endpoint())?
        .tls_config(tls)?
        .connect_lazy();
    Ok((http.build()?, TraceServiceClient::new(channel)))
}

#[tokio::test]
async fn tls_serves_both_transports() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start_tls(false).await?;
    assert!(receiver.endpoint().starts_with("https://127.0.0.1:"));
    assert!(receiver.http_endpoint().starts_with("https://127.0.0.1:"));
    let (http, mut grpc) = tls_clients(&receiver, false).await?;
    grpc.export(traces("grpc-tls")).await?;
    let body = gzip(&traces("http-tls").encode_to_vec());
    let answer = post(&http, &receiver.http_endpoint(), "/v1/traces", body, true).await?;
    assert_eq!(answer.status(), 200);
    // A `localhost` URL verifies too.
    let localhost = receiver.http_endpoint().replace("127.0.0.1", "localhost");
    let body = traces("http-localhost").encode_to_vec();
    assert_eq!(
        post(&http, &localhost, "/v1/traces", body, false)
            .await?
            .status(),
        200
    );
    assert_eq!(names(&receiver), ["grpc-tls", "http-localhost", "http-tls"]);
    assert_eq!(receiver.gzip_requests(), 1);

    // Plain text to a TLS port is a failed handshake.
    let plain = receiver.http_endpoint().replace("https", "http");
    let body = traces("plain").encode_to_vec();
    assert!(
        post(&reqwest::Client::new(), &plain, "/v1/traces", body, false)
            .await
            .is_err()
    );
    crate::eventually(Duration::from_secs(5), "a TLS rejection", || async {
        (receiver.tls_rejections() >= 1).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn tls_can_require_a_client_certificate() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start_tls(true).await?;

    let (http, mut grpc) = tls_clients(&receiver, true).await?;
    grpc.export(traces("grpc-mtls")).await?;
    let body = traces("http-mtls").encode_to_vec();
    let answer = post(&http, &receiver.http_endpoint(), "/v1/traces", body, false).await?;
    assert_eq!(answer.status(), 200);
    assert_eq!(names(&receiver), ["grpc-mtls", "http-mtls"]);
    assert_eq!(receiver.tls_rejections(), 0);

    let (http, mut grpc) = tls_clients(&receiver, false).await?;
    assert!(grpc.export(traces("anonymous")).await.is_err());
    let body = traces("anonymous").encode_to_vec();
    assert!(
        post(&http, &receiver.http_endpoint(), "/v1/traces", body, false)
            .await
            .is_err()
    );
    crate::eventually(Duration::from_secs(5), "two TLS rejections", || async {
        (receiver.tls_rejections() >= 2).then_some(())
    })
    .await?;
    assert_eq!(names(&receiver), ["grpc-mtls", "http-mtls"]);
    Ok(())
}
