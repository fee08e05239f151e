//! Per-call overhead of the layers on a no-op service, against peers, with
//! allocations counted.
//!
//! ```text
//! cargo bench -p tests --bench overhead
//! ```
//!
//! tower (http::Request -> http::Response, body drained like a server
//! does): bare; rpc-ext-metrics; rpc-ext-tracing with the sampler off; rpc-ext-tracing
//! 100% sampled into the bounded batch processor with a no-op exporter;
//! both; and the peers: tower-http `TraceLayer` with `tracing-opentelemetry`
//! exporting to the same no-op sink, and axum-prometheus's metrics layer
//! (the `metrics` facade into `metrics-exporter-prometheus`). Volo (motore
//! service, gRPC context): bare; rpc-ext-metrics; rpc-ext-tracing sampled.
//! rpc-ext-metrics also runs inside a sampled span (the exemplar cost),
//! inside an unsampled one, and with exemplars off.

// The counting allocator below is the only unsafe code: it forwards to the
// system allocator.
#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    convert::Infallible,
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http_body_util::{BodyExt, Empty};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter},
};
use rpc_ext_tracing::{BatchLimits, BoundedBatchProcessor, RpcTracing};
use tower::{Service, ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

/// Counts allocations made by this process.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Exports nowhere, instantly: measures the pipeline, not a network.
#[derive(Debug)]
struct NoopExporter;

impl SpanExporter for NoopExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

fn provider(sampled: bool) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(if sampled {
            Sampler::AlwaysOn
        } else {
            Sampler::AlwaysOff
        })
        .with_span_processor(BoundedBatchProcessor::new(
            NoopExporter,
            BatchLimits::default(),
        ))
        .build()
}

/// A context whose span is `sampled` or not: what rpc-ext-tracing's layer
/// makes current around the metrics layer inside it. Attached around a
/// whole run, so the cases measure the metrics layer alone.
fn span_context(sampled: bool) -> opentelemetry::Context {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
        SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
        flags,
        false,
        TraceState::default(),
    ))
}

/// The metrics the cases record into: exemplars on (the default) unless
/// `exemplars` is false.
fn rpc_metrics(exemplars: bool) -> rpc_ext_metrics::RpcMetrics {
    rpc_ext_metrics::RpcMetrics::builder()
        .exemplars(exemplars)
        .build()
        .unwrap()
}

type Request = http::Request<Empty<Bytes>>;

fn grpc_request() -> Request {
    http::Request::builder()
        .uri("http://127.0.0.1:50051/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Empty::new())
        .expect("valid request")
}

async fn noop(_: Request) -> Result<http::Response<Empty<Bytes>>, Infallible> {
    let mut response = http::Response::new(Empty::new());
    response
        .headers_mut()
        .insert("grpc-status", http::HeaderValue::from_static("0"));
    Ok(response)
}

/// One call as a server sees it: ready, call, read the body to its end.
async fn call<S, B>(service: &mut S)
where
    S: Service<Request, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = service
        .ready()
        .await
        .unwrap()
        .call(grpc_request())
        .await
        .unwrap();
    let _ = black_box(response.into_body().collect().await);
}

/// Runs `call` `iters` times on the runtime and returns the time it took
/// (for services called through `&self`).
fn timed<F, Fut>(runtime: &tokio::runtime::Runtime, iters: u64, mut call: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    runtime.block_on(async {
        let start = std::time::Instant::now();
        for _ in 0..iters {
            call().await;
        }
        start.elapsed()
    })
}

fn allocations_per_call<S, B>(runtime: &tokio::runtime::Runtime, service: &mut S) -> f64
where
    S: Service<Request, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    const CALLS: u64 = 10_000;
    runtime.block_on(async {
        for _ in 0..1_000 {
            call(service).await; // warm-up: caches, label sets
        }
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..CALLS {
            call(service).await;
        }
        (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / CALLS as f64
    })
}

/// The peer metrics middleware: axum-prometheus's tower layer with its
/// default Prometheus recorder (installed as the global `metrics` recorder,
/// with an upkeep task spawned on `runtime`). Once per process.
fn peer_metrics_layer(
    runtime: &tokio::runtime::Runtime,
) -> (
    axum_prometheus::PrometheusMetricLayer<'static>,
    axum_prometheus::metrics_exporter_prometheus::PrometheusHandle,
) {
    let _runtime = runtime.enter();
    axum_prometheus::PrometheusMetricLayer::pair()
}

fn tower_benches(c: &mut Criterion, runtime: &tokio::runtime::Runtime, report: &mut Vec<String>) {
    let metrics = rpc_metrics(true);
    let metrics_off = rpc_metrics(false);
    let off = provider(false);
    let on = provider(true);
    let tracing_off = RpcTracing::builder()
        .tracer_provider(&off)
        .tracing_span(false)
        .build();
    let tracing_on = RpcTracing::builder()
        .tracer_provider(&on)
        .tracing_span(false)
        .build();

    let mut group = c.benchmark_group("tower");
    group.throughput(Throughput::Elements(1));
    macro_rules! case {
        ($name:expr, $service:expr) => {{
            let mut service = $service;
            let allocs = allocations_per_call(runtime, &mut service);
            report.push(format!(
                "tower/{:<40} {:>8.1} allocations/call",
                $name, allocs
            ));
            group.bench_function($name, |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let start = std::time::Instant::now();
                        for _ in 0..iters {
                            call(&mut service).await;
                        }
                        start.elapsed()
                    })
                })
            });
        }};
    }
    case!("bare", tower::service_fn(noop));
    case!(
        "rpc-ext-metrics",
        ServiceBuilder::new()
            .layer(rpc_ext_metrics::tower::MetricsLayer::server(&metrics))
            .service_fn(noop)
    );
    {
        let _sampled = span_context(true).attach();
        case!(
            "rpc-ext-metrics (in a sampled span: exemplars)",
            ServiceBuilder::new()
                .layer(rpc_ext_metrics::tower::MetricsLayer::server(&metrics))
                .service_fn(noop)
        );
    }
    case!(
        "rpc-ext-metrics (exemplars off)",
        ServiceBuilder::new()
            .layer(rpc_ext_metrics::tower::MetricsLayer::server(&metrics_off))
            .service_fn(noop)
    );
    let (peer_metrics, _peer_metrics_handle) = peer_metrics_layer(runtime);
    case!(
        "peer: axum-prometheus metrics layer",
        ServiceBuilder::new().layer(peer_metrics).service_fn(noop)
    );
    case!(
        "rpc-ext-tracing (sampler off)",
        ServiceBuilder::new()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(&tracing_off))
            .service_fn(noop)
    );
    case!(
        "rpc-ext-tracing (100% sampled, batch export)",
        ServiceBuilder::new()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(&tracing_on))
            .service_fn(noop)
    );
    case!(
        "rpc-ext-metrics + rpc-ext-tracing (sampled)",
        ServiceBuilder::new()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(&tracing_on))
            .layer(rpc_ext_metrics::tower::MetricsLayer::server(&metrics))
            .service_fn(noop)
    );
    // Peer: tower-http's TraceLayer with tracing-opentelemetry, same sink.
    let peer_provider = provider(true);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(peer_provider.tracer("tower-http")));
    let dispatch = tracing::Dispatch::new(subscriber);
    {
        let _guard = tracing::dispatcher::set_default(&dispatch);
        case!(
            "peer: tower-http TraceLayer + tracing-opentelemetry",
            ServiceBuilder::new()
                .layer(tower_http::trace::TraceLayer::new_for_grpc())
                .service_fn(noop)
        );
    }
    group.finish();
}

#[derive(Clone)]
struct VoloNoop;
/// A Volo gRPC no-op service.
// What a Volo server's layers see: a response body. A trailers-only OK
// (the status in the headers, no body) ends the call as the layers wrap
// it, so the cases measure the whole call without a body to read.
impl motore::service::Service<volo_grpc::context::ServerContext, volo_grpc::Request<()>>
    for VoloNoop
{
    type Response = volo_grpc::Response<volo_grpc::body::BoxBody>;
    type Error = volo_grpc::Status;
    async fn call(
        &self,
        _: &mut volo_grpc::context::ServerContext,
        _: volo_grpc::Request<()>,
    ) -> Result<Self::Response, Self::Error> {
        let mut response = volo_grpc::Response::new(volo_grpc::body::empty_body());
        response.metadata_mut().insert(
            "grpc-status",
            volo_grpc::metadata::MetadataValue::from_static("0"),
        );
        Ok(response)
    }
}

/// One Volo call as a server's layers see it.
async fn volo_call<S>(service: &S)
where
    S: motore::service::Service<volo_grpc::context::ServerContext, volo_grpc::Request<()>>,
{
    use volo::context::Context as _;
    let mut cx = volo_grpc::context::ServerContext::default();
    cx.rpc_info_mut().set_method("/echo.Echo/Say".into());
    let _ = black_box(service.call(&mut cx, volo_grpc::Request::new(())).await);
}

fn volo_benches(c: &mut Criterion, runtime: &tokio::runtime::Runtime, report: &mut Vec<String>) {
    use motore::layer::Layer;

    let metrics = rpc_metrics(true);
    let metrics_off = rpc_metrics(false);
    let on = provider(true);
    let tracing_on = RpcTracing::builder()
        .tracer_provider(&on)
        .tracing_span(false)
        .build();
    let mut group = c.benchmark_group("volo");
    group.throughput(Throughput::Elements(1));
    macro_rules! case {
        ($name:expr, $service:expr) => {{
            let service = $service;
            let allocs = runtime.block_on(async {
                for _ in 0..1_000 {
                    volo_call(&service).await;
                }
                let before = ALLOCATIONS.load(Ordering::Relaxed);
                for _ in 0..10_000 {
                    volo_call(&service).await;
                }
                (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 10_000.0
            });
            report.push(format!(
                "volo/{:<41} {:>8.1} allocations/call",
                $name, allocs
            ));
            group.bench_function($name, |b| {
                b.iter_custom(|iters| timed(runtime, iters, || volo_call(&service)))
            });
        }};
    }
    case!("bare", VoloNoop);
    case!(
        "rpc-ext-metrics",
        rpc_ext_metrics::volo::MetricsLayer::server(&metrics).layer(VoloNoop)
    );
    {
        let _sampled = span_context(true).attach();
        case!(
            "rpc-ext-metrics (in a sampled span: exemplars)",
            rpc_ext_metrics::volo::MetricsLayer::server(&metrics).layer(VoloNoop)
        );
    }
    case!(
        "rpc-ext-metrics (exemplars off)",
        rpc_ext_metrics::volo::MetricsLayer::server(&metrics_off).layer(VoloNoop)
    );
    case!(
        "rpc-ext-tracing (100% sampled, batch export)",
        rpc_ext_tracing::volo::GrpcTracingLayer::server(&tracing_on).layer(VoloNoop)
    );
    group.finish();
}

/// Runs one tower or Volo case `iters` times and nothing else, for instruction
/// counting under `valgrind --tool=callgrind` (deterministic, unlike time
/// on a shared machine).
fn count_one(runtime: &tokio::runtime::Runtime, case: &str, iters: u64) {
    // `<metrics case>-sampled` / `-unsampled`: inside such a span; `-off`:
    // exemplars off.
    let (case, variant) = match case.rsplit_once('-') {
        Some((metrics, variant @ ("sampled" | "unsampled" | "off")))
            if metrics.ends_with("metrics") =>
        {
            (metrics, variant)
        }
        _ => (case, ""),
    };
    let (exemplars, span) = match variant {
        "sampled" => (true, Some(true)),
        "unsampled" => (true, Some(false)),
        "off" => (false, None),
        _ => (true, None),
    };
    let _span = span.map(|sampled| span_context(sampled).attach());
    let metrics = rpc_metrics(exemplars);
    let on = provider(true);
    let tracing_on = RpcTracing::builder()
        .tracer_provider(&on)
        .tracing_span(false)
        .build();
    let peer_provider = provider(true);
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(peer_provider.tracer("tower-http"))),
    );
    let _guard = tracing::dispatcher::set_default(&dispatch);
    // The fastrace path (`--features fastrace`): fastrace's reporter
    // (process-wide) hands spans to the same batch queue and no-op
    // exporter, on its collector thread.
    #[cfg(feature = "fastrace")]
    let fastrace_guard = case.ends_with("fastrace").then(|| {
        rpc_ext_tracing::otlp::OtlpTracing::new()
            .install_global(false)
            .install_fastrace_with_exporter(NoopExporter)
    });
    #[cfg(feature = "fastrace")]
    let tracing_fastrace = RpcTracing::builder()
        .fastrace_sampler(rpc_ext_tracing::FastraceSampler::TraceIdRatio(1.0))
        .tracing_span(false)
        .build();
    macro_rules! run {
        ($service:expr) => {{
            let mut service = $service;
            runtime.block_on(async {
                for _ in 0..iters {
                    call(&mut service).await;
                }
            })
        }};
    }
    match case {
        "bare" => run!(tower::service_fn(noop)),
        "metrics" => run!(ServiceBuilder::new()
            .layer(rpc_ext_metrics::tower::MetricsLayer::server(&metrics))
            .service_fn(noop)),
        "tracing" => run!(ServiceBuilder::new()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(&tracing_on))
            .service_fn(noop)),
        #[cfg(feature = "fastrace")]
        "tracing-fastrace" => run!(ServiceBuilder::new()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(
                &tracing_fastrace
            ))
            .service_fn(noop)),
        "peer" => run!(ServiceBuilder::new()
            .layer(tower_http::trace::TraceLayer::new_for_grpc())
            .service_fn(noop)),
        "peer-metrics" => {
            let (layer, _handle) = peer_metrics_layer(runtime);
            run!(ServiceBuilder::new().layer(layer).service_fn(noop))
        }
        "volo-bare" | "volo-metrics" | "volo-tracing" | "volo-tracing-fastrace" => {
            use motore::layer::Layer;
            macro_rules! run_volo {
                ($service:expr) => {{
                    let service = $service;
                    runtime.block_on(async {
                        for _ in 0..iters {
                            volo_call(&service).await;
                        }
                    })
                }};
            }
            match case {
                "volo-bare" => run_volo!(VoloNoop),
                "volo-metrics" => {
                    run_volo!(rpc_ext_metrics::volo::MetricsLayer::server(&metrics).layer(VoloNoop))
                }
                #[cfg(feature = "fastrace")]
                "volo-tracing-fastrace" => {
                    run_volo!(
                        rpc_ext_tracing::volo::GrpcTracingLayer::server(&tracing_fastrace)
                            .layer(VoloNoop)
                    )
                }
                _ => {
                    run_volo!(rpc_ext_tracing::volo::GrpcTracingLayer::server(&tracing_on)
                        .layer(VoloNoop))
                }
            }
        }
        other => panic!("unknown case {other}"),
    }
    #[cfg(feature = "fastrace")]
    drop(fastrace_guard);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // OVERHEAD_CASE=bare|metrics|tracing|tracing-fastrace|peer|peer-metrics
    // (tower) or volo-bare|volo-metrics|volo-tracing|volo-tracing-fastrace,
    // OVERHEAD_ITERS=N: one case only (the fastrace cases with
    // `--features fastrace`; subtract fastant's start-up calibration,
    // `fastant::tsc_now::___init___ctor`, from such a build's totals).
    // metrics and volo-metrics also as metrics-sampled, metrics-unsampled
    // (inside such a span) and metrics-off (exemplars off).
    if let Ok(case) = std::env::var("OVERHEAD_CASE") {
        let iters = std::env::var("OVERHEAD_ITERS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        count_one(&runtime, &case, iters);
        return;
    }
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut report = Vec::new();
    tower_benches(&mut criterion, &runtime, &mut report);
    volo_benches(&mut criterion, &runtime, &mut report);
    criterion.final_summary();
    println!("\nallocations per call (after 1,000 warm-up calls, over 10,000 calls; the bare service's own allocations included):");
    for line in report {
        println!("  {line}");
    }
}
