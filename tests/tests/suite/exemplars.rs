//! Exemplars of real tonic and Volo gRPC calls traced by rpc-ext-tracing,
//! scraped by a real Prometheus with exemplar storage: the trace ids and
//! span ids Prometheus holds are those of the spans the OTLP receiver got
//! for the same calls, server series with server spans, client series with
//! client spans. Calls under an unsampled parent leave none. The Grafana
//! dashboard's latency panels ask for exemplars, and its Prometheus data
//! source links them to the Jaeger data source.

use std::{collections::HashSet, time::Duration};

use echo::{tonic_gen, volo_gen};
use opentelemetry::trace::{
    FutureExt as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use rpc_ext_metrics::{Conventions, MetricsEndpoint, RpcMetrics};
use rpc_ext_tracing::{otlp::TracingGuard, RpcTracing};
use serde_json::Value;
use tests::{
    eventually,
    otlp::{OtlpReceiver, Protocol, ReceivedSpan, SPAN_KIND_CLIENT, SPAN_KIND_SERVER},
    PrometheusServer,
};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceBuilder;

use crate::support::{
    observed_volo_echo_client, pipeline, promtool_check_metrics, serve_observed_tonic_echo,
    serve_volo_echo, until_stopped,
};

/// Calls made at the root of a trace: sampled (the SDK's default sampler,
/// parent-based always-on).
const TRACED_CALLS: usize = 20;
/// Calls made under an unsampled parent: parent-based sampling drops both
/// spans, and there is no exemplar to make.
const UNSAMPLED_CALLS: usize = 10;
/// The unsampled parent's trace.
const UNSAMPLED_TRACE: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";

/// Generous: Prometheus scrapes every second, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// One framework's server and client, traced and measured, with the
/// metrics endpoint Prometheus scrapes.
struct Stack {
    /// The service name of its spans: `tonic` or `volo`.
    name: &'static str,
    guard: TracingGuard,
    metrics: RpcMetrics,
    endpoint: MetricsEndpoint,
    client: Client,
}

/// The client of a stack (boxed: the tonic one is large).
enum Client {
    Tonic(Box<TonicClient>),
    Volo(volo_gen::echo::EchoClient),
}

type TonicClient = tonic_gen::echo_client::EchoClient<
    rpc_ext_tracing::tower::TracingService<
        rpc_ext_metrics::tower::MetricsService<tonic::transport::Channel>,
    >,
>;

impl Stack {
    async fn new(
        name: &'static str,
        receiver: &OtlpReceiver,
        stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let (guard, tracing) = pipeline(name, receiver, Protocol::Grpc)?;
        let metrics = RpcMetrics::builder()
            .conventions(Conventions::Current)
            .build()?;
        let endpoint =
            MetricsEndpoint::serve("127.0.0.1:0".parse()?, metrics.registry().clone()).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = match name {
            "tonic" => tonic_stack(&tracing, &metrics, listener, stopped).await?,
            _ => volo_stack(&tracing, &metrics, listener, stopped)?,
        };
        Ok(Self {
            name,
            guard,
            metrics,
            endpoint,
            client,
        })
    }

    /// One Echo call, inside `context`.
    async fn say(&mut self, context: opentelemetry::Context) -> anyhow::Result<()> {
        match &mut self.client {
            Client::Tonic(client) => {
                let request = tonic_gen::SayRequest {
                    message: "hi".into(),
                };
                client.say(request).with_context(context).await?;
            }
            Client::Volo(client) => {
                let request = volo_gen::echo::SayRequest {
                    message: "hi".into(),
                };
                // Taking the message ends the client call.
                client
                    .say(request)
                    .with_context(context)
                    .await?
                    .into_inner();
            }
        }
        Ok(())
    }

    fn instance(&self) -> String {
        self.endpoint.local_addr().to_string()
    }
}

/// tonic: the tracing layer outside the metrics layer on both sides (a
/// `ServiceBuilder`'s first layer is the outer one).
async fn tonic_stack(
    tracing: &RpcTracing,
    metrics: &RpcMetrics,
    listener: TcpListener,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<Client> {
    let addr = serve_observed_tonic_echo(listener, tracing, metrics, stopped)?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(Client::Tonic(Box::new(
        tonic_gen::echo_client::EchoClient::new(
            ServiceBuilder::new()
                .layer(rpc_ext_tracing::tower::TracingLayer::client(tracing))
                .layer(rpc_ext_metrics::tower::MetricsLayer::client(metrics).server_address("echo"))
                .service(channel),
        ),
    )))
}

/// Volo: the tracing layer outside the metrics layer on both sides.
fn volo_stack(
    tracing: &RpcTracing,
    metrics: &RpcMetrics,
    listener: TcpListener,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<Client> {
    // A stack of `(inner, outer)`.
    let server_layers = motore::layer::Stack::new(
        rpc_ext_metrics::volo::MetricsLayer::server(metrics),
        rpc_ext_tracing::volo::GrpcTracingLayer::server(tracing),
    );
    let addr = serve_volo_echo(listener, server_layers, until_stopped(stopped))?;
    Ok(Client::Volo(observed_volo_echo_client(
        addr, tracing, metrics,
    )))
}

/// A context whose span is a remote parent that was not sampled.
fn unsampled_parent() -> opentelemetry::Context {
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex(UNSAMPLED_TRACE).expect("trace id"),
        SpanId::from_hex("5ca1ab1e5ca1ab1e").expect("span id"),
        TraceFlags::default(),
        true,
        TraceState::default(),
    ))
}

/// Waits until Prometheus has scraped `calls` calls on each duration
/// series of `stack`.
async fn wait_for_counts(
    prometheus: &PrometheusServer,
    stack: &Stack,
    calls: usize,
) -> anyhow::Result<()> {
    for side in ["server", "client"] {
        let promql = format!(
            r#"sum(rpc_{side}_call_duration_seconds_count{{instance="{}",rpc_method="echo.Echo/Say"}})"#,
            stack.instance()
        );
        eventually(DEADLINE, &promql, || async {
            let value = prometheus.query_value(&promql).await.ok()??;
            (value == calls as f64).then_some(())
        })
        .await?;
    }
    Ok(())
}

/// One exemplar as Prometheus returns it.
#[derive(Debug)]
struct StoredExemplar {
    /// The bucket's upper bound.
    le: f64,
    trace_id: String,
    span_id: String,
    value: f64,
    /// Seconds since the epoch.
    timestamp: f64,
    /// Every label name of the exemplar.
    label_names: Vec<String>,
}

fn stored(series: &[Value]) -> anyhow::Result<Vec<StoredExemplar>> {
    let mut all = Vec::new();
    for one in series {
        let le = one["seriesLabels"]["le"]
            .as_str()
            .map(|le| {
                if le == "+Inf" {
                    Ok(f64::INFINITY)
                } else {
                    le.parse()
                }
            })
            .transpose()?
            .unwrap_or(f64::NAN);
        for exemplar in one["exemplars"].as_array().into_iter().flatten() {
            let labels = exemplar["labels"].as_object().cloned().unwrap_or_default();
            let label = |name: &str| labels.get(name).and_then(Value::as_str).unwrap_or_default();
            all.push(StoredExemplar {
                le,
                trace_id: label("trace_id").to_owned(),
                span_id: label("span_id").to_owned(),
                value: exemplar["value"].as_str().unwrap_or_default().parse()?,
                timestamp: exemplar["timestamp"].as_f64().unwrap_or_default(),
                label_names: labels.keys().cloned().collect(),
            });
        }
    }
    Ok(all)
}

/// The exemplars Prometheus holds for `promql`, once there is at least one.
async fn exemplars_of(
    prometheus: &PrometheusServer,
    promql: &str,
) -> anyhow::Result<Vec<StoredExemplar>> {
    eventually(DEADLINE, &format!("exemplars of {promql}"), || async {
        let series = prometheus
            .query_exemplars(promql, Duration::from_secs(600))
            .await
            .ok()?;
        let exemplars = stored(&series).ok()?;
        (!exemplars.is_empty()).then_some(exemplars)
    })
    .await
}

/// Checks that every exemplar is a span the receiver decoded, of
/// `service` and `kind`, from the traced calls, and was made while that
/// span lasted.
fn check_against_spans(
    exemplars: &[StoredExemplar],
    spans: &[ReceivedSpan],
    service: &str,
    kind: i32,
) {
    for exemplar in exemplars {
        let mut names = exemplar.label_names.clone();
        names.sort();
        assert_eq!(names, ["span_id", "trace_id"], "{exemplar:?}");
        assert_ne!(
            exemplar.trace_id, UNSAMPLED_TRACE,
            "unsampled call: {exemplar:?}"
        );
        let span = spans
            .iter()
            .find(|s| s.trace_id == exemplar.trace_id && s.span_id == exemplar.span_id)
            .unwrap_or_else(|| panic!("no span received for {exemplar:?}"));
        assert_eq!(
            (span.service.as_str(), span.kind),
            (service, kind),
            "{exemplar:?}"
        );
        assert_eq!(span.attr("rpc.method"), "echo.Echo/Say");
        // In the bucket it was counted in.
        assert!(exemplar.value <= exemplar.le, "{exemplar:?}");
        // Made at the call's end, inside the span (both clocks of one
        // machine; a second of slack).
        let start = span.start_time_unix_nano as f64 / 1e9;
        let end = span.end_time_unix_nano as f64 / 1e9;
        assert!(
            exemplar.timestamp >= start - 1.0 && exemplar.timestamp <= end + 1.0,
            "{exemplar:?} not within {start}..{end}"
        );
    }
}

/// A counter of Prometheus's own, read from its `/metrics`.
async fn prometheus_counter(prometheus: &PrometheusServer, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{}/metrics", prometheus.url()))
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {name} in Prometheus's own metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_holds_the_trace_ids_the_otlp_receiver_got() -> anyhow::Result<()> {
    tests::init_test_logging();
    let receiver = OtlpReceiver::start().await?;
    let (stop, stopped) = watch::channel(false);
    let mut stacks = [
        Stack::new("tonic", &receiver, stopped.clone()).await?,
        Stack::new("volo", &receiver, stopped.clone()).await?,
    ];
    let targets: Vec<String> = stacks.iter().map(Stack::instance).collect();
    let prometheus = PrometheusServer::start_with_exemplars(&targets).await?;

    // Unsampled first, scraped before anything else is recorded: had
    // they left exemplars, Prometheus would hold them.
    for stack in &mut stacks {
        for _ in 0..UNSAMPLED_CALLS {
            stack.say(unsampled_parent()).await?;
        }
    }
    for stack in &stacks {
        wait_for_counts(&prometheus, stack, UNSAMPLED_CALLS).await?;
    }
    // Each call the root of its own trace, sampled.
    for stack in &mut stacks {
        for _ in 0..TRACED_CALLS {
            stack.say(opentelemetry::Context::new()).await?;
        }
        stack.guard.provider().force_flush()?;
    }
    let spans = receiver
        .wait_for(
            DEADLINE,
            "a server and a client span per traced call",
            |spans| spans.len() >= 2 * 2 * TRACED_CALLS,
        )
        .await?;
    assert_eq!(spans.len(), 2 * 2 * TRACED_CALLS, "{spans:#?}");
    assert!(
        spans.iter().all(|s| s.trace_id != UNSAMPLED_TRACE),
        "an unsampled call was exported"
    );
    for stack in &stacks {
        wait_for_counts(&prometheus, stack, UNSAMPLED_CALLS + TRACED_CALLS).await?;
    }

    // Through the real exemplar API: each duration series of each stack
    // holds exemplars, and each is the span of its own side.
    for stack in &stacks {
        let instance = stack.instance();
        for (side, kind) in [("server", SPAN_KIND_SERVER), ("client", SPAN_KIND_CLIENT)] {
            let promql = format!(
                r#"rpc_{side}_call_duration_seconds_bucket{{instance="{instance}",rpc_method="echo.Echo/Say"}}"#
            );
            let exemplars = exemplars_of(&prometheus, &promql).await?;
            eprintln!("{} {side}: {} exemplars", stack.name, exemplars.len());
            check_against_spans(&exemplars, &spans, stack.name, kind);
        }
        // The text format, which has no exemplars, is what promtool reads.
        let text = rpc_ext_metrics::encode_text(stack.metrics.registry())?;
        assert!(!text.contains("trace_id"), "{text}");
        promtool_accepts(&text)?;
    }
    // Prometheus took every exemplar in order: their times never went back.
    assert_eq!(
        prometheus_counter(
            &prometheus,
            "prometheus_target_scrapes_exemplar_out_of_order_total"
        )
        .await?,
        0.0
    );

    // The dashboard: each latency panel asks for exemplars with one of its
    // queries (they all select the same series), and the RPC latency
    // panels' find the traced calls'.
    let traced: HashSet<String> = spans.iter().map(|s| s.trace_id.clone()).collect();
    let dashboard: Value =
        serde_json::from_str(include_str!("../../../deploy/grafana/dashboards/rpc.json"))?;
    let latency_panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|panel| {
            panel["title"]
                .as_str()
                .is_some_and(|t| t.contains("latency"))
        })
        .collect();
    assert_eq!(
        latency_panels.len(),
        4,
        "server, client, HTTP server, HTTP client"
    );
    for panel in latency_panels {
        let title = panel["title"].as_str().unwrap_or_default();
        let asking: Vec<&Value> = panel["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .filter(|target| target["exemplar"] == true)
            .collect();
        assert_eq!(asking.len(), 1, "{title}");
        let expr = asking[0]["expr"]
            .as_str()
            .expect("expr")
            .replace("$__rate_interval", "1m")
            .replace("$system", ".*")
            .replace("$method", ".*");
        let found = stored(
            &prometheus
                .query_exemplars(&expr, Duration::from_secs(600))
                .await?,
        )?;
        if title.starts_with("HTTP") {
            // No HTTP calls here: the query need only be valid.
            assert!(found.is_empty(), "{title}");
        } else {
            assert!(!found.is_empty(), "{title}: {expr}");
            assert!(
                found.iter().all(|e| traced.contains(&e.trace_id)),
                "{title}"
            );
        }
    }
    check_grafana_datasources()?;
    let _ = stop.send(true);
    Ok(())
}

/// `promtool check metrics` on a text exposition.
fn promtool_accepts(text: &str) -> anyhow::Result<()> {
    let checked = promtool_check_metrics(text)?;
    anyhow::ensure!(
        checked.status.success(),
        "promtool rejected: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(())
}

/// The provisioned Prometheus data source links an exemplar's `trace_id`
/// to the provisioned Jaeger data source (docker-compose's `jaeger`).
fn check_grafana_datasources() -> anyhow::Result<()> {
    let provisioning =
        include_str!("../../../deploy/grafana/provisioning/datasources/prometheus.yml");
    // The entries of `datasources:`, each from its `- name:` line.
    let entries: Vec<&str> = provisioning.split("\n  - name: ").skip(1).collect();
    let field = |entry: &str, key: &str| {
        entry
            .lines()
            .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix(": "))
            .map(str::to_owned)
    };
    let by_type = |kind: &str| {
        entries
            .iter()
            .find(|entry| field(entry, "type").as_deref() == Some(kind))
            .copied()
    };
    let jaeger = by_type("jaeger").ok_or_else(|| anyhow::anyhow!("no Jaeger data source"))?;
    let jaeger_uid = field(jaeger, "uid").expect("Jaeger uid");
    assert_eq!(field(jaeger, "url").as_deref(), Some("http://jaeger:16686"));
    let prometheus =
        by_type("prometheus").ok_or_else(|| anyhow::anyhow!("no Prometheus data source"))?;
    let destinations = prometheus
        .split_once("exemplarTraceIdDestinations:")
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("no exemplarTraceIdDestinations"))?;
    let destination = destinations
        .split("- ")
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no destination"))?;
    let value = |key: &str| {
        destination
            .lines()
            .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix(": "))
            .map(str::trim)
    };
    assert_eq!(value("name"), Some("trace_id"));
    assert_eq!(value("datasourceUid"), Some(jaeger_uid.as_str()));
    let compose = include_str!("../../../docker-compose.yml");
    assert!(compose.contains("--enable-feature=exemplar-storage"));
    assert!(compose.contains("\n  jaeger:\n"));
    Ok(())
}
