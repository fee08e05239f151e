//! Conformance with the OpenTelemetry semantic conventions, v1.44.0: one
//! run of real calls through every stack the suite instruments — Volo gRPC,
//! Volo Thrift, Volo HTTP, tonic and axum, unary calls, and the three kinds
//! of streaming call on Volo gRPC and tonic — with the defaults a user gets
//! (no options, no environment). Spans are read from the OTLP receiver,
//! the OpenTelemetry metrics from the same receiver, and the Prometheus
//! series from a real Prometheus that scraped `/metrics`; every span name,
//! attribute, instrument and label is compared with the list of current
//! names kept in this file (not read from the code under test), and every
//! Prometheus series must have an OpenTelemetry point with the same
//! attributes, as the OpenTelemetry → Prometheus translation would give.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use anyhow::Context as _;
use opentelemetry::metrics::MeterProvider as _;
use rpc_ext_metrics::{MetricsEndpoint, RpcMetrics};
use tests::{
    otlp::{OtlpReceiver, Protocol},
    PrometheusServer,
};

use crate::support::pipeline;

#[path = "../shared/semconv_spans.rs"]
mod semconv_spans;
use semconv_spans::{check_span, wait_for_expected_spans, Calls};

/// An OpenTelemetry instrument: its name, unit and the attributes it may
/// carry.
struct Instrument {
    name: &'static str,
    unit: &'static str,
    attributes: &'static [&'static str],
}

const RPC_CALL: &[&str] = &[
    "rpc.system.name",
    "rpc.method",
    "rpc.response.status_code",
    "error.type",
];
const RPC_CLIENT_CALL: &[&str] = &[
    "rpc.system.name",
    "rpc.method",
    "rpc.response.status_code",
    "error.type",
    "server.address",
    "server.port",
];
const RPC_METHOD: &[&str] = &["rpc.system.name", "rpc.method"];

/// The instruments: the conventions' call durations, then the suite's own
/// (in-flight calls, message sizes), named the same way.
const INSTRUMENTS: &[Instrument] = &[
    Instrument {
        name: "rpc.server.call.duration",
        unit: "s",
        attributes: RPC_CALL,
    },
    Instrument {
        name: "rpc.client.call.duration",
        unit: "s",
        attributes: RPC_CLIENT_CALL,
    },
    Instrument {
        name: "http.server.request.duration",
        unit: "s",
        attributes: &[
            "http.request.method",
            "http.route",
            "http.response.status_code",
            "url.scheme",
            "error.type",
        ],
    },
    Instrument {
        name: "http.client.request.duration",
        unit: "s",
        attributes: &[
            "http.request.method",
            "server.address",
            "server.port",
            "http.response.status_code",
            "error.type",
        ],
    },
    Instrument {
        name: "http.server.active_requests",
        unit: "{request}",
        attributes: &["http.request.method", "url.scheme"],
    },
    Instrument {
        name: "rpc.server.active_requests",
        unit: "{request}",
        attributes: RPC_METHOD,
    },
    Instrument {
        name: "rpc.client.active_requests",
        unit: "{request}",
        attributes: RPC_METHOD,
    },
    Instrument {
        name: "rpc.server.request.size",
        unit: "By",
        attributes: RPC_METHOD,
    },
    Instrument {
        name: "rpc.server.response.size",
        unit: "By",
        attributes: RPC_METHOD,
    },
    Instrument {
        name: "rpc.client.request.size",
        unit: "By",
        attributes: RPC_METHOD,
    },
    Instrument {
        name: "rpc.client.response.size",
        unit: "By",
        attributes: RPC_METHOD,
    },
];

/// The Prometheus family of an instrument, by the OpenTelemetry →
/// Prometheus translation: dots become underscores, the unit a suffix
/// (`s` → `_seconds`, `By` → `_bytes`; annotations like `{request}` none).
fn prometheus_family(instrument: &Instrument) -> String {
    let base = instrument.name.replace('.', "_");
    match instrument.unit {
        "s" => format!("{base}_seconds"),
        "By" => format!("{base}_bytes"),
        _ => base,
    }
}

/// The Prometheus label of an attribute (same translation).
fn prometheus_label(attribute: &str) -> String {
    attribute.replace('.', "_")
}

// ---- The run ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_emits_the_current_semantic_conventions() -> anyhow::Result<()> {
    tests::init_test_logging();
    let receiver = OtlpReceiver::start().await?;
    let meter_provider = meter_provider(&receiver)?;
    let metrics = RpcMetrics::builder()
        .otel_meter(meter_provider.meter("rpc-ext-metrics"))
        .build()?;
    let endpoint =
        MetricsEndpoint::serve("127.0.0.1:0".parse()?, metrics.registry().clone()).await?;
    let prometheus = PrometheusServer::start(&[endpoint.local_addr().to_string()]).await?;

    let mut guards = Vec::new();
    let mut tracing = HashMap::new();
    for service in ["tonic", "volo", "thrift", "volo-http", "axum"] {
        let (guard, service_tracing) = pipeline(service, &receiver, Protocol::HttpProtobuf)?;
        guards.push(guard);
        tracing.insert(service, service_tracing);
    }
    let calls = Calls {
        metrics: &metrics,
        tracing: &tracing,
    };
    calls.tonic().await?;
    calls.volo_grpc().await?;
    calls.volo_thrift().await?;
    calls.volo_http().await?;
    calls.axum().await?;

    for guard in &guards {
        guard.provider().force_flush()?;
    }
    let flush = meter_provider.clone();
    tokio::task::spawn_blocking(move || flush.force_flush()).await??;

    let spans = wait_for_expected_spans(&receiver, "").await?;
    for span in &spans {
        check_span(span);
    }

    check_otel_points(&receiver)?;
    check_prometheus(&prometheus, &receiver).await?;
    tokio::task::spawn_blocking(move || meter_provider.shutdown()).await??;
    Ok(())
}

/// Every OpenTelemetry point is of a listed instrument, with its unit and
/// only its attributes; the call durations of every system arrived.
fn check_otel_points(receiver: &OtlpReceiver) -> anyhow::Result<()> {
    let points = receiver.points();
    for point in &points {
        let instrument = INSTRUMENTS
            .iter()
            .find(|i| i.name == point.metric)
            .with_context(|| format!("{} is not a listed instrument", point.metric))?;
        assert_eq!(point.unit, instrument.unit, "{point:#?}");
        for key in point.attributes.keys() {
            assert!(
                instrument.attributes.contains(&key.as_str()),
                "{key} on {}: {point:#?}",
                point.metric
            );
        }
    }
    for (metric, key, value) in [
        ("rpc.server.call.duration", "rpc.system.name", "grpc"),
        ("rpc.client.call.duration", "rpc.system.name", "grpc"),
        (
            "rpc.server.call.duration",
            "rpc.system.name",
            "apache_thrift",
        ),
        (
            "rpc.client.call.duration",
            "rpc.system.name",
            "apache_thrift",
        ),
        ("http.server.request.duration", "http.route", "/users/{id}"),
        ("http.server.request.duration", "http.route", "/orders/{id}"),
        (
            "http.client.request.duration",
            "server.address",
            "127.0.0.1",
        ),
        ("rpc.server.call.duration", "rpc.method", "echo.Echo/Chat"),
        ("rpc.client.call.duration", "rpc.method", "echo.Echo/Count"),
    ] {
        assert!(
            points
                .iter()
                .any(|p| p.metric == metric
                    && p.attributes.get(key).map(String::as_str) == Some(value)),
            "no {metric} point with {key}={value}: {points:#?}"
        );
    }
    Ok(())
}

/// Every series Prometheus scraped is of a listed instrument's family, has
/// only its labels, and has an OpenTelemetry point with the same
/// attributes.
async fn check_prometheus(
    prometheus: &PrometheusServer,
    receiver: &OtlpReceiver,
) -> anyhow::Result<()> {
    // Scraped once the calls were made: the Thrift client series is among
    // the last recorded.
    let series = tests::eventually(
        Duration::from_secs(20),
        "the series in Prometheus",
        || async {
            let series = prometheus
                .query(r#"{__name__=~"(rpc|http)_.+", job="rpc"}"#)
                .await
                .ok()?;
            series
                .iter()
                .any(|s| {
                    s["metric"]["__name__"] == "rpc_client_call_duration_seconds_count"
                        && s["metric"]["rpc_system_name"] == "apache_thrift"
                })
                .then_some(series)
        },
    )
    .await?;
    let points = receiver.points();
    let otel_sets: BTreeSet<(String, BTreeMap<String, String>)> = points
        .iter()
        .map(|p| {
            let labels = p
                .attributes
                .iter()
                .map(|(k, v)| (prometheus_label(k), v.clone()))
                .collect();
            (p.metric.clone(), labels)
        })
        .collect();
    let mut families = BTreeSet::new();
    for sample in &series {
        let metric = sample["metric"].as_object().context("a labelled sample")?;
        let name = metric["__name__"].as_str().context("a name")?;
        let (instrument, histogram) = INSTRUMENTS
            .iter()
            .find_map(|i| {
                let family = prometheus_family(i);
                if name == family {
                    return Some((i, false));
                }
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name == format!("{family}{suffix}"))
                    .then_some((i, true))
            })
            .with_context(|| format!("{name} is no listed instrument's family"))?;
        families.insert(prometheus_family(instrument));
        let allowed: Vec<String> = instrument
            .attributes
            .iter()
            .map(|a| prometheus_label(a))
            .collect();
        let mut labels = BTreeMap::new();
        for (label, value) in metric {
            match label.as_str() {
                "__name__" | "job" | "instance" => {}
                "le" if histogram => {}
                _ => {
                    assert!(
                        allowed.contains(label),
                        "{label} on {name} is not one of {allowed:?}"
                    );
                    labels.insert(label.clone(), value.as_str().unwrap_or_default().to_owned());
                }
            }
        }
        // A Prometheus series exists from the moment its label set is first
        // resolved (a method's handles are made before its first record);
        // OpenTelemetry has a point only once something was recorded.
        let observed = sample["value"][1].as_str() != Some("0");
        if observed && (name.ends_with("_count") || !histogram) {
            assert!(
                otel_sets.contains(&(instrument.name.to_owned(), labels.clone())),
                "{name}{labels:?} has no OpenTelemetry point with the same attributes"
            );
        }
    }
    for family in [
        "rpc_server_call_duration_seconds",
        "rpc_client_call_duration_seconds",
        "http_server_request_duration_seconds",
        "http_client_request_duration_seconds",
    ] {
        assert!(
            families.contains(family),
            "no {family} series: {families:?}"
        );
    }
    Ok(())
}

fn meter_provider(
    receiver: &OtlpReceiver,
) -> anyhow::Result<opentelemetry_sdk::metrics::SdkMeterProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(format!(
            "{}/v1/metrics",
            receiver.endpoint_for(Protocol::HttpProtobuf)
        ))
        .build()?;
    Ok(opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_periodic_exporter(exporter)
        .build())
}
