//! End-to-end throughput and latency of real Volo gRPC and tonic Echo calls
//! over loopback TCP, with the layers off and on: a closed-loop load
//! generator sends a fixed number of requests at a fixed concurrency and
//! reports QPS and latency percentiles, and their ratios to the bare case of
//! the same stack.
//!
//! ```text
//! cargo bench -p tests --bench e2e
//! ```
//!
//! Per stack (Volo gRPC server + Volo client; tonic server + tonic client),
//! four cases, each with its own server on its own loopback port and its own
//! client (one HTTP/2 connection, cloned into every load task):
//!
//! - `bare`: no layer;
//! - `metrics`: `rpc-ext-metrics` on the server and on the client;
//! - `tracing`: `rpc-ext-tracing` on the server and on the client, 100% sampled
//!   (the client's span is the parent of the server's, carried in
//!   `traceparent`), exported through `BoundedBatchProcessor` (default
//!   limits) to an exporter that drops the batch: no network sink;
//! - `both`: metrics and tracing.
//!
//! The tonic server sets `TCP_NODELAY` on accepted connections, as tonic's
//! own `Server::serve` does and as Volo always does (`E2E_TONIC_NODELAY=0`
//! leaves Nagle on, as a plain `TcpListenerStream` does).
//!
//! Client and server run in this process on one multi-thread tokio runtime
//! (one worker per core); the export worker is its own thread. Every case is
//! warmed up first; then the cases run one after another in rounds, forward
//! in rounds 1, 3, ... and backward in rounds 2, 4, ... (ABCD DCBA ...), so
//! that slow drifts of a shared machine hit every case alike. Reported per
//! case: the median over rounds of QPS, p50 and p99, and their ratios to the
//! bare case of the same stack; and the process's CPU time per request (all
//! threads, from `/proc/self/task/*/schedstat`). On a shared machine both
//! move with whatever else runs (other tenants slow the cores down, not
//! only take them); for a repeatable comparison count instructions with
//! callgrind, one case at a time (`E2E_CASES`, `E2E_STACKS`; see
//! BENCHMARKS.md).
//!
//! Environment: `E2E_REQUESTS` (per case and round, default 30,000),
//! `E2E_CONCURRENCY` (in-flight requests, default 32), `E2E_ROUNDS` (default
//! 7), `E2E_WARMUP` (requests per case before measuring, default 5,000),
//! `E2E_STACKS` (`volo,tonic` by default), `E2E_WORKERS` (tokio worker
//! threads, default one per core), `E2E_CASES` (`bare,metrics,
//! tracing,both` by default; `tracing-discard` adds a diagnostic case:
//! tracing sampled, but ended spans are dropped by a processor that does
//! nothing, which isolates the cost of handing every span to the export
//! thread; `tracing-unsampled` is tracing alone with no sampled parent;
//! `both-unsampled`, `both-1pct` and `both-10pct` add metrics and
//! tracing under a parent-based sampler that keeps none, 1% or 10% of the
//! client's root spans, the server following the `traceparent` flag;
//! `tracing-fastrace` and `both-fastrace` are `tracing` and `both` on the
//! fastrace path, 100% sampled, reported through fastrace-opentelemetry to
//! the same no-op exporter; they need `--features fastrace`, and every
//! count of such a build includes fastant's start-up TSC calibration, a
//! varying number of instructions: subtract the inclusive count of
//! `fastant::tsc_now::___init___ctor` from each total). The tracing cases' batch processor takes its limits from
//! `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` and
//! `OTEL_BSP_SCHEDULE_DELAY`, as an application's would.

use std::{
    future::Future,
    hint::black_box,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use tests::bench_report::{fmt_thousands, median};

use echo::{
    servers::{TonicEcho, VoloEcho},
    tonic_gen, volo_gen,
};
use futures::future::BoxFuture;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor},
};
use rpc_ext_metrics::RpcMetrics;
use rpc_ext_tracing::{BatchLimits, BoundedBatchProcessor, ExportStats, RpcTracing};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceBuilder;

/// Exports nowhere, instantly: measures the pipeline, not a network.
#[derive(Debug)]
struct NoopExporter;

impl SpanExporter for NoopExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

/// Which layers a case puts on its server and client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layers {
    Bare,
    Metrics,
    Tracing,
    Both,
    /// Diagnostic, not run by default: tracing sampled, but ended spans are
    /// dropped by a processor that does nothing (no queue, no export
    /// thread), to separate the cost of handing spans to the export worker.
    TracingDiscard,
    /// Metrics and tracing with a parent-based sampler whose root decision
    /// keeps this share of traces (per mille): the client's spans are roots,
    /// the server's follow the `traceparent` flag. 0 is "no sampled parent"
    /// on either side.
    BothSampled(u16),
    /// Tracing alone under a parent-based sampler that keeps no root: what
    /// `both-unsampled` adds to `metrics`, measured apart.
    TracingUnsampled,
    /// Diagnostic: no layer, but the client adds a
    /// `traceparent` with a new value to every request, as any propagating
    /// tracer must (never indexed in HPACK, as rpc-ext-tracing sends it):
    /// the floor under every traced case, paid in HTTP/2 header coding.
    BareTraceparent,
    /// rpc-ext-tracing on its fastrace path, 100% sampled, reported through
    /// fastrace-opentelemetry to the same no-op exporter.
    Fastrace,
    /// Metrics and tracing on the fastrace path, 100% sampled.
    BothFastrace,
}

impl Layers {
    const ALL: [Self; 12] = [
        Self::Bare,
        Self::Metrics,
        Self::Tracing,
        Self::Both,
        Self::TracingDiscard,
        Self::BothSampled(0),
        Self::BothSampled(10),
        Self::BothSampled(100),
        Self::TracingUnsampled,
        Self::BareTraceparent,
        Self::Fastrace,
        Self::BothFastrace,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Metrics => "metrics",
            Self::Tracing => "tracing",
            Self::Both => "both",
            Self::TracingDiscard => "tracing-discard",
            Self::BothSampled(0) => "both-unsampled",
            Self::BothSampled(10) => "both-1pct",
            Self::BothSampled(100) => "both-10pct",
            Self::BothSampled(_) => "both-sampled",
            Self::TracingUnsampled => "tracing-unsampled",
            Self::BareTraceparent => "bare-traceparent",
            Self::Fastrace => "tracing-fastrace",
            Self::BothFastrace => "both-fastrace",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Bare => "bare (no layer)",
            Self::Metrics => "rpc-ext-metrics server + client",
            Self::Tracing => "rpc-ext-tracing server + client, 100% sampled",
            Self::Both => "rpc-ext-metrics + rpc-ext-tracing (sampled)",
            Self::TracingDiscard => "rpc-ext-tracing sampled, spans discarded at end (diagnostic)",
            Self::BothSampled(0) => "rpc-ext-metrics + rpc-ext-tracing, no sampled parent",
            Self::BothSampled(_) => {
                "rpc-ext-metrics + rpc-ext-tracing, parent-based ratio sampling"
            }
            Self::TracingUnsampled => "rpc-ext-tracing server + client, no sampled parent",
            Self::BareTraceparent => "no layer; the client sends a new traceparent (diagnostic)",
            Self::Fastrace => "rpc-ext-tracing on fastrace, 100% sampled",
            Self::BothFastrace => "rpc-ext-metrics + rpc-ext-tracing on fastrace (sampled)",
        }
    }
}

/// One measured run of a case.
struct Run {
    elapsed: Duration,
    /// CPU time of the whole process (every thread: runtime workers, export
    /// threads) during the run, if `/proc` could be read.
    cpu: Option<Duration>,
    /// Per-request latencies in nanoseconds, sorted.
    latencies: Vec<u64>,
    errors: u64,
}

impl Run {
    fn qps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Process CPU time per request, in microseconds.
    fn cpu_us(&self) -> f64 {
        self.cpu.map_or(f64::NAN, |cpu| {
            cpu.as_secs_f64() * 1e6 / self.latencies.len() as f64
        })
    }

    /// Nearest-rank percentile, in microseconds.
    fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = (p * self.latencies.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies.len()) - 1;
        self.latencies[index] as f64 / 1_000.0
    }
}

/// CPU time consumed so far by the threads of this process: the sum of
/// `/proc/self/task/*/schedstat` (nanoseconds on the CPU, user and kernel).
/// This process's threads all live for the whole bench, so none is lost
/// between two readings.
fn process_cpu() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let Ok(text) = std::fs::read_to_string(path) else {
            continue; // the thread ended meanwhile
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// Drives a case: `requests` calls with `concurrency` of them in flight.
type Load = Box<dyn Fn(u64, usize) -> BoxFuture<'static, Run> + Send + Sync>;

/// A closed-loop load over `client`: `concurrency` tasks, each with its own
/// clone of the client, take request numbers from a shared counter until
/// `requests` have been sent, and time every call.
fn load<C, F, Fut>(client: C, call: F) -> Load
where
    C: Clone + Send + Sync + 'static,
    F: Fn(C) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = (C, bool)> + Send + 'static,
{
    Box::new(move |requests, concurrency| {
        let client = client.clone();
        let call = call.clone();
        Box::pin(async move {
            let next = Arc::new(AtomicU64::new(0));
            let per_task = usize::try_from(requests).unwrap_or(usize::MAX) / concurrency + 1;
            let cpu_before = process_cpu();
            let start = Instant::now();
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let mut client = client.clone();
                    let call = call.clone();
                    let next = next.clone();
                    tokio::spawn(async move {
                        let mut latencies = Vec::with_capacity(per_task);
                        let mut errors = 0u64;
                        while next.fetch_add(1, Ordering::Relaxed) < requests {
                            let sent = Instant::now();
                            let (returned, ok) = call(client).await;
                            latencies.push(sent.elapsed().as_nanos() as u64);
                            client = returned;
                            errors += u64::from(!ok);
                        }
                        (latencies, errors)
                    })
                })
                .collect();
            let mut latencies = Vec::with_capacity(per_task * concurrency);
            let mut errors = 0;
            for task in tasks {
                let (task_latencies, task_errors) = task.await.expect("load task panicked");
                latencies.extend(task_latencies);
                errors += task_errors;
            }
            let elapsed = start.elapsed();
            let cpu = process_cpu()
                .zip(cpu_before)
                .map(|(after, before)| after.saturating_sub(before));
            latencies.sort_unstable();
            Run {
                elapsed,
                cpu,
                latencies,
                errors,
            }
        })
    })
}

/// A traced case's tracer provider and its processor's counters.
struct Traced {
    provider: SdkTracerProvider,
    /// The batch processor's counters (none for the discarding processor).
    stats: Option<Arc<ExportStats>>,
}

/// Drops every ended span on the calling thread (the diagnostic case).
#[derive(Debug)]
struct DiscardProcessor;

impl SpanProcessor for DiscardProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}
    fn on_end(&self, span: SpanData) {
        black_box(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn traced(discard: bool, sampler: Sampler) -> (Traced, RpcTracing) {
    let builder = SdkTracerProvider::builder().with_sampler(sampler);
    let (provider, stats) = if discard {
        (builder.with_span_processor(DiscardProcessor).build(), None)
    } else {
        let processor = BoundedBatchProcessor::new(NoopExporter, BatchLimits::from_env());
        let stats = processor.stats();
        (builder.with_span_processor(processor).build(), Some(stats))
    };
    // Defaults otherwise: W3C trace context + baggage, the `tracing` span
    // (no subscriber is installed, so it costs next to nothing).
    let tracing = RpcTracing::builder().tracer_provider(&provider).build();
    (Traced { provider, stats }, tracing)
}

/// fastrace's reporter is process-wide: one pipeline for every fastrace
/// case, exporting to the no-op exporter.
#[cfg(feature = "fastrace")]
fn fastrace_traced() -> (Traced, RpcTracing) {
    static GUARD: std::sync::OnceLock<rpc_ext_tracing::otlp::FastraceGuard> =
        std::sync::OnceLock::new();
    let guard = GUARD.get_or_init(|| {
        rpc_ext_tracing::otlp::OtlpTracing::new()
            .install_global(false)
            .install_fastrace_with_exporter(NoopExporter)
    });
    let tracing = RpcTracing::builder()
        .fastrace_sampler(rpc_ext_tracing::FastraceSampler::TraceIdRatio(1.0))
        .build();
    (
        Traced {
            // No SDK spans on this path: a provider with nothing to shut down.
            provider: SdkTracerProvider::builder().build(),
            stats: Some(Arc::clone(guard.stats())),
        },
        tracing,
    )
}

struct Case {
    stack: &'static str,
    layers: Layers,
    load: Load,
    traced: Option<Traced>,
    runs: Vec<Run>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .replace(['_', ','], "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid value")),
        Err(_) => default,
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

const MESSAGE: &str = "hello from the e2e load generator";

/// A `traceparent` whose ids change with every request, written without
/// `format!` as a tracer writes it and sent never-indexed, as
/// rpc-ext-tracing sends it: what the diagnostic `bare-traceparent` case
/// adds to every request.
fn new_traceparent() -> Option<http::HeaderValue> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mixed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    for (field, at) in [(mixed, 3), (n, 19), (mixed.rotate_left(17), 36)] {
        for (i, byte) in text[at..at + 16].iter_mut().enumerate() {
            *byte = b"0123456789abcdef"[((field >> (60 - 4 * i)) & 0xf) as usize];
        }
    }
    let mut value = http::HeaderValue::from_bytes(&text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The tonic client's side of `bare-traceparent`.
fn with_new_traceparent(
    mut request: http::Request<tonic::body::Body>,
) -> http::Request<tonic::body::Body> {
    if let Some(value) = new_traceparent() {
        request.headers_mut().insert(TRACEPARENT, value);
    }
    request
}

/// The Volo client's side of `bare-traceparent`.
#[derive(Clone, Copy)]
struct NewTraceparentLayer;

impl<S> motore::layer::Layer<S> for NewTraceparentLayer {
    type Service = NewTraceparent<S>;

    fn layer(self, inner: S) -> Self::Service {
        NewTraceparent(inner)
    }
}

#[derive(Clone)]
struct NewTraceparent<S>(S);

impl<S, T> motore::service::Service<volo_grpc::context::ClientContext, volo_grpc::Request<T>>
    for NewTraceparent<S>
where
    T: Send + 'static,
    S: motore::service::Service<volo_grpc::context::ClientContext, volo_grpc::Request<T>>
        + Send
        + Sync,
{
    type Response = S::Response;
    type Error = S::Error;

    async fn call(
        &self,
        cx: &mut volo_grpc::context::ClientContext,
        mut request: volo_grpc::Request<T>,
    ) -> Result<Self::Response, Self::Error> {
        if let Some(value) = new_traceparent() {
            request
                .metadata_mut()
                .headers_mut()
                .insert(TRACEPARENT, value);
        }
        self.0.call(cx, request).await
    }
}

/// Starts a Volo gRPC Echo server with `$server` layers (innermost first,
/// each `layer_front`) and returns a load over a Volo client with `$client`
/// layers (innermost first, each `layer_outer`).
macro_rules! volo_case {
    ($stop:expr, [$($server:expr),*], [$($client:expr),*]) => {{
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stopped = $stop;
        tokio::spawn(
            volo_grpc::server::Server::new()
                $(.layer_front($server))*
                .add_service(
                    volo_grpc::server::ServiceBuilder::new(volo_gen::echo::EchoServer::new(
                        VoloEcho { served_by: addr },
                    ))
                    .build(),
                )
                .run_with_shutdown(
                    volo::net::incoming::DefaultIncoming::from(listener),
                    async move {
                        stopped.await;
                        Ok(())
                    },
                ),
        );
        let client = volo_gen::echo::EchoClientBuilder::new("echo-volo")
            $(.layer_outer($client))*
            .address(addr)
            .build();
        load(client, |client| async move {
            let reply = client
                .say(volo_gen::echo::SayRequest {
                    message: faststr::FastStr::from_static_str(MESSAGE),
                })
                .await;
            let ok = matches!(&reply, Ok(r) if r.get_ref().message == MESSAGE);
            (client, ok)
        })
    }};
}

/// Whether the tonic server sets `TCP_NODELAY` on accepted connections, as
/// `tonic::transport::Server::serve` does by default (Volo always does).
/// `E2E_TONIC_NODELAY=0` serves like `examples::servers::serve_tonic`
/// (a plain `TcpListenerStream`: Nagle on, tonic's setting ignored).
fn tonic_nodelay() -> bool {
    env_or("E2E_TONIC_NODELAY", 1u8) != 0
}

/// Starts a tonic Echo server with `$server` layers (outermost first) and
/// returns a load over a tonic client with `$client` layers (outermost
/// first) over one channel.
macro_rules! tonic_case {
    ($stop:expr, [$($server:expr),*], [$($client:expr),*]) => {{
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                $(.layer($server))*
                .add_service(tonic_gen::echo_server::EchoServer::new(TonicEcho {
                    served_by: addr,
                }))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(tonic_nodelay())),
                    $stop,
                ),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let client = tonic_gen::echo_client::EchoClient::new(
            ServiceBuilder::new()$(.layer($client))*.service(channel),
        );
        load(client, |mut client| async move {
            let reply = client
                .say(tonic_gen::SayRequest {
                    message: MESSAGE.to_owned(),
                })
                .await;
            let ok = matches!(&reply, Ok(r) if r.get_ref().message == MESSAGE);
            (client, ok)
        })
    }};
}

async fn build_cases(
    stacks: &[String],
    wanted: &[String],
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<Case>> {
    let stopped = || {
        let mut rx = stop.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut cases = Vec::new();
    for stack in stacks {
        for layers in Layers::ALL {
            if !wanted.iter().any(|w| w == layers.name()) {
                continue;
            }
            let metrics = RpcMetrics::builder().build()?;
            let (traced, tracing) = match layers {
                Layers::Tracing | Layers::Both | Layers::TracingDiscard => {
                    let (traced, tracing) =
                        traced(layers == Layers::TracingDiscard, Sampler::AlwaysOn);
                    (Some(traced), tracing)
                }
                Layers::BothSampled(_) | Layers::TracingUnsampled => {
                    let per_mille = match layers {
                        Layers::BothSampled(per_mille) => per_mille,
                        _ => 0,
                    };
                    let ratio = Sampler::TraceIdRatioBased(f64::from(per_mille) / 1000.0);
                    let (traced, tracing) = traced(false, Sampler::ParentBased(Box::new(ratio)));
                    (Some(traced), tracing)
                }
                #[cfg(feature = "fastrace")]
                Layers::Fastrace | Layers::BothFastrace => {
                    let (traced, tracing) = fastrace_traced();
                    (Some(traced), tracing)
                }
                #[cfg(not(feature = "fastrace"))]
                Layers::Fastrace | Layers::BothFastrace => {
                    anyhow::bail!("{} needs `--features fastrace`", layers.name())
                }
                Layers::Bare | Layers::Metrics | Layers::BareTraceparent => {
                    (None, RpcTracing::builder().build())
                }
            };
            // Layer order as in the quickstart: tracing outside metrics.
            let load = match (stack.as_str(), layers) {
                ("volo", Layers::Bare) => volo_case!(stopped(), [], []),
                ("volo", Layers::Metrics) => volo_case!(
                    stopped(),
                    [rpc_ext_metrics::volo::MetricsLayer::server(&metrics)],
                    [rpc_ext_metrics::volo::MetricsLayer::client(&metrics)]
                ),
                (
                    "volo",
                    Layers::Tracing
                    | Layers::TracingDiscard
                    | Layers::TracingUnsampled
                    | Layers::Fastrace,
                ) => {
                    volo_case!(
                        stopped(),
                        [rpc_ext_tracing::volo::GrpcTracingLayer::server(&tracing)],
                        [rpc_ext_tracing::volo::GrpcTracingLayer::client(&tracing)]
                    )
                }
                ("volo", Layers::Both | Layers::BothSampled(_) | Layers::BothFastrace) => {
                    volo_case!(
                        stopped(),
                        [
                            rpc_ext_metrics::volo::MetricsLayer::server(&metrics),
                            rpc_ext_tracing::volo::GrpcTracingLayer::server(&tracing)
                        ],
                        [
                            rpc_ext_metrics::volo::MetricsLayer::client(&metrics),
                            rpc_ext_tracing::volo::GrpcTracingLayer::client(&tracing)
                        ]
                    )
                }
                ("tonic", Layers::Bare) => tonic_case!(stopped(), [], []),
                ("tonic", Layers::BareTraceparent) => tonic_case!(
                    stopped(),
                    [],
                    [tower::util::MapRequestLayer::new(with_new_traceparent)]
                ),
                ("volo", Layers::BareTraceparent) => {
                    volo_case!(stopped(), [], [NewTraceparentLayer])
                }
                ("tonic", Layers::Metrics) => tonic_case!(
                    stopped(),
                    [rpc_ext_metrics::tower::MetricsLayer::server(&metrics)],
                    [rpc_ext_metrics::tower::MetricsLayer::client(&metrics)
                        .server_address("echo-tonic")]
                ),
                (
                    "tonic",
                    Layers::Tracing
                    | Layers::TracingDiscard
                    | Layers::TracingUnsampled
                    | Layers::Fastrace,
                ) => {
                    tonic_case!(
                        stopped(),
                        [rpc_ext_tracing::tower::TracingLayer::server(&tracing)],
                        [rpc_ext_tracing::tower::TracingLayer::client(&tracing)]
                    )
                }
                ("tonic", Layers::Both | Layers::BothSampled(_) | Layers::BothFastrace) => {
                    tonic_case!(
                        stopped(),
                        [
                            rpc_ext_tracing::tower::TracingLayer::server(&tracing),
                            rpc_ext_metrics::tower::MetricsLayer::server(&metrics)
                        ],
                        [
                            rpc_ext_tracing::tower::TracingLayer::client(&tracing),
                            rpc_ext_metrics::tower::MetricsLayer::client(&metrics)
                                .server_address("echo-tonic")
                        ]
                    )
                }
                (other, _) => anyhow::bail!("unknown stack {other:?} (volo or tonic)"),
            };
            cases.push(Case {
                stack: if stack == "volo" {
                    "Volo gRPC"
                } else {
                    "tonic"
                },
                layers,
                load,
                traced,
                runs: Vec::new(),
            });
        }
    }
    Ok(cases)
}

fn fmt_us(us: f64) -> String {
    if us >= 1_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{us:.0} µs")
    }
}

async fn run() -> anyhow::Result<()> {
    let requests: u64 = env_or("E2E_REQUESTS", 30_000);
    let concurrency: usize = env_or("E2E_CONCURRENCY", 32usize).max(1);
    let rounds: usize = env_or("E2E_ROUNDS", 7usize).max(1);
    let warmup: u64 = env_or("E2E_WARMUP", 5_000);
    let stacks = env_list("E2E_STACKS", "volo,tonic");
    let wanted = env_list("E2E_CASES", "bare,metrics,tracing,both");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut cases = build_cases(&stacks, &wanted, &stop_rx).await?;
    eprintln!(
        "e2e: {} cases, {requests} requests per case and round at concurrency {concurrency}, \
         {rounds} rounds, {warmup} warm-up requests per case, {} tokio workers",
        cases.len(),
        tokio::runtime::Handle::current().metrics().num_workers(),
    );

    for case in &cases {
        let run = (case.load)(warmup, concurrency).await;
        anyhow::ensure!(
            run.errors == 0,
            "{} {}: {} of {warmup} warm-up calls failed",
            case.stack,
            case.layers.name(),
            run.errors
        );
        eprintln!(
            "warm-up {:<9} {:<16} {:>8.0} QPS",
            case.stack,
            case.layers.name(),
            run.qps()
        );
    }

    let order: Vec<usize> = (0..cases.len()).collect();
    for round in 0..rounds {
        let forward = round % 2 == 0;
        let this_round: Vec<usize> = if forward {
            order.clone()
        } else {
            order.iter().rev().copied().collect()
        };
        for index in this_round {
            let case = &mut cases[index];
            let run = (case.load)(requests, concurrency).await;
            anyhow::ensure!(
                run.errors == 0,
                "{} {}: {} of {requests} calls failed",
                case.stack,
                case.layers.name(),
                run.errors
            );
            eprintln!(
                "round {} {:<9} {:<16} {:>8.0} QPS  {:>6.1} µs CPU/req  p50 {:>9}  p99 {:>9}",
                round + 1,
                case.stack,
                case.layers.name(),
                run.qps(),
                run.cpu_us(),
                fmt_us(run.percentile_us(0.50)),
                fmt_us(run.percentile_us(0.99)),
            );
            case.runs.push(run);
        }
    }

    report(&cases, requests, concurrency, rounds);

    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut spans = Vec::new();
    for case in &mut cases {
        if let Some(traced) = case.traced.take() {
            let _ = traced.provider.shutdown();
            let Some(stats) = traced.stats else {
                continue;
            };
            spans.push(format!(
                "- {} {}: {} spans ended, {} exported, {} dropped (queue full)",
                case.stack,
                case.layers.name(),
                fmt_thousands(stats.ended() as f64),
                fmt_thousands(stats.exported() as f64),
                fmt_thousands(stats.dropped() as f64),
            ));
        }
    }
    if !spans.is_empty() {
        println!("\nSpans (client + server, warm-up included):\n");
        for line in spans {
            println!("{line}");
        }
    }
    Ok(())
}

fn report(cases: &[Case], requests: u64, concurrency: usize, rounds: usize) {
    struct Summary {
        qps: f64,
        cpu: f64,
        p50: f64,
        p99: f64,
    }
    let summarize = |case: &Case| Summary {
        qps: median(case.runs.iter().map(Run::qps).collect()),
        cpu: median(case.runs.iter().map(Run::cpu_us).collect()),
        p50: median(case.runs.iter().map(|r| r.percentile_us(0.50)).collect()),
        p99: median(case.runs.iter().map(|r| r.percentile_us(0.99)).collect()),
    };
    println!(
        "\n{} requests per case and round, concurrency {concurrency}, {rounds} rounds; \
         medians over rounds; ratios against the bare case of the same stack. \
         CPU / request: CPU time of the whole process (client, server, export \
         thread) per request.\n",
        fmt_thousands(requests as f64)
    );
    println!(
        "| stack | case | QPS | QPS vs bare | paired QPS vs bare (IQR) | QPS min–max | CPU / request | p50 | p99 | p99 vs bare |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for case in cases {
        let summary = summarize(case);
        let bare = cases
            .iter()
            .find(|c| c.stack == case.stack && c.layers == Layers::Bare);
        let (qps_ratio, paired, p99_ratio) = match bare {
            Some(bare) if case.layers != Layers::Bare => {
                // Within a round the cases run back to back, so each round's
                // ratio compares runs that shared the machine's state; the
                // median of those ratios shrugs off rounds slowed by
                // other tenants, which the ratio of medians does not.
                let mut ratios: Vec<f64> = case
                    .runs
                    .iter()
                    .zip(&bare.runs)
                    .map(|(run, bare)| run.qps() / bare.qps())
                    .collect();
                ratios.sort_by(f64::total_cmp);
                let quartile = |q: f64| {
                    let last = ratios.len().saturating_sub(1);
                    ratios
                        .get((last as f64 * q).round() as usize)
                        .copied()
                        .unwrap_or(f64::NAN)
                };
                let paired = format!(
                    "{:.3}x ({:.3}–{:.3})",
                    median(ratios.clone()),
                    quartile(0.25),
                    quartile(0.75)
                );
                let bare = summarize(bare);
                (
                    format!("{:.3}x", summary.qps / bare.qps),
                    paired,
                    format!("{:.2}x", summary.p99 / bare.p99),
                )
            }
            _ => ("—".into(), "—".into(), "—".into()),
        };
        let min = case.runs.iter().map(Run::qps).fold(f64::INFINITY, f64::min);
        let max = case.runs.iter().map(Run::qps).fold(0.0, f64::max);
        println!(
            "| {} | {} | {} | {qps_ratio} | {paired} | {}–{} | {:.0} µs | {} | {} | {p99_ratio} |",
            case.stack,
            case.layers.label(),
            fmt_thousands(summary.qps),
            fmt_thousands(min),
            fmt_thousands(max),
            summary.cpu,
            fmt_us(summary.p50),
            fmt_us(summary.p99),
        );
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // `E2E_WORKERS`: tokio worker threads (default: one per core).
    if let Some(workers) = std::env::var("E2E_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
    {
        runtime.worker_threads(workers);
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(run())
}
