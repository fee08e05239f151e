//! Span export to a sick collector — refusing connections, answering
//! `UNAVAILABLE`, or answering slowly: calls keep their latency, the spans
//! held stay within the processor's bounds, and what is lost is counted and
//! scraped as Prometheus metrics.

use std::time::Duration;

use echo::tonic_gen;
use rpc_ext_tracing::{
    otlp::{OtlpTracing, TracingGuard},
    prometheus::ExportStatsCollector,
    RpcTracing,
};
use tests::{
    otlp::{OtlpReceiver, Protocol, TraceFault},
    traced_tonic_echo, TonicEchoClient,
};
use tokio::{sync::watch, time::Instant};

use crate::support::transport;

const QUEUE: usize = 256;
/// The processor's default batch; one batch may be out for export.
const BATCH: u64 = 512;
const WARM_UP_CALLS_PER_SIDE: usize = 100;
const CALLS_PER_SIDE: usize = 1_500;

fn pipeline(
    protocol: Protocol,
    endpoint: String,
    timeout: Duration,
) -> anyhow::Result<(TracingGuard, RpcTracing)> {
    let guard = OtlpTracing::new()
        .service_name("echo")
        .transport(transport(protocol))
        .endpoint(endpoint)
        .timeout(timeout)
        .max_queue_size(QUEUE)
        .scheduled_delay(Duration::from_millis(20))
        .install_global(false)
        .install()?;
    let tracing = RpcTracing::builder()
        .tracer_provider(guard.provider())
        .build();
    Ok((guard, tracing))
}

async fn timed_call(client: &mut TonicEchoClient) -> anyhow::Result<Duration> {
    let started = Instant::now();
    client
        .say(tonic_gen::SayRequest {
            message: "hi".into(),
        })
        .await?;
    Ok(started.elapsed())
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank]
}

/// The value of one series in Prometheus text output.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The span export series of one scrape of an [`ExportStatsCollector`].
#[derive(Debug)]
struct Scraped {
    /// `otel_sdk_processor_span_processed_total{error_type=""}`: queued.
    queued: Option<u64>,
    /// `otel_sdk_processor_span_processed_total{error_type="queue_full"}`.
    dropped: Option<u64>,
    /// `otel_sdk_exporter_span_exported_total{error_type=""}`.
    exported: Option<u64>,
    /// `otel_sdk_exporter_span_exported_total{error_type="export_failed"}`.
    failed: Option<u64>,
    /// `otel_sdk_processor_span_queue_size`: queued or being exported.
    held: Option<u64>,
}

/// Scrapes `stats` as Prometheus text, the way an application exposes it.
fn scrape(
    stats: &std::sync::Arc<rpc_ext_tracing::ExportStats>,
) -> anyhow::Result<(String, Scraped)> {
    let registry = prometheus::Registry::new();
    registry.register(Box::new(ExportStatsCollector::new(stats.clone())))?;
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather())?;
    let labels =
        r#"otel_component_name="tracing_ext_batch",otel_component_type="batching_span_processor""#;
    let series = |name: &str, error_type: &str| {
        sample(
            &text,
            &format!(r#"{name}{{error_type="{error_type}",{labels}}}"#),
        )
    };
    let scraped = Scraped {
        queued: series("otel_sdk_processor_span_processed_total", ""),
        dropped: series("otel_sdk_processor_span_processed_total", "queue_full"),
        exported: series("otel_sdk_exporter_span_exported_total", ""),
        failed: series("otel_sdk_exporter_span_exported_total", "export_failed"),
        held: sample(
            &text,
            &format!("otel_sdk_processor_span_queue_size{{{labels}}}"),
        ),
    };
    Ok((text, scraped))
}

/// Runs calls alternately against a server exporting to a healthy collector
/// and one exporting to `sick`, so machine noise hits both alike.
async fn compare_with_healthy(
    protocol: Protocol,
    sick: &str,
    sick_endpoint: String,
    export_timeout: Duration,
    fault: Option<(&OtlpReceiver, TraceFault)>,
) -> anyhow::Result<std::sync::Arc<rpc_ext_tracing::ExportStats>> {
    tests::init_test_logging();
    let healthy_receiver = OtlpReceiver::start().await?;
    let (healthy_guard, healthy_tracing) = pipeline(
        protocol,
        healthy_receiver.endpoint_for(protocol),
        Duration::from_secs(5),
    )?;
    let (sick_guard, sick_tracing) = pipeline(protocol, sick_endpoint, export_timeout)?;
    if let Some((receiver, fault)) = fault {
        receiver.set_trace_fault(fault);
    }
    let (stop, stopped) = watch::channel(false);
    let mut healthy = traced_tonic_echo(&healthy_tracing, stopped.clone()).await?;
    let mut sick_client = traced_tonic_echo(&sick_tracing, stopped).await?;
    for _ in 0..WARM_UP_CALLS_PER_SIDE {
        timed_call(&mut healthy).await?;
        timed_call(&mut sick_client).await?;
    }

    let stats = sick_guard.stats().clone();
    let (mut healthy_times, mut sick_times) = (Vec::new(), Vec::new());
    let mut most_pending = 0;
    for _ in 0..CALLS_PER_SIDE {
        healthy_times.push(timed_call(&mut healthy).await?);
        sick_times.push(timed_call(&mut sick_client).await?);
        most_pending = most_pending.max(stats.pending());
    }
    let (healthy_p50, sick_p50) = (
        percentile(&mut healthy_times, 0.5),
        percentile(&mut sick_times, 0.5),
    );
    let (healthy_p99, sick_p99) = (
        percentile(&mut healthy_times, 0.99),
        percentile(&mut sick_times, 0.99),
    );

    let (text, scraped) = scrape(&stats)?;
    eprintln!(
        "collector {sick} over {protocol}: p50 {sick_p50:?} vs healthy {healthy_p50:?} ({:.2}x), p99 {sick_p99:?} vs {healthy_p99:?} ({:.2}x); \
         spans ended {}, dropped {}, failed {}, exported {}, most pending {most_pending} (bound {})",
        sick_p50.as_secs_f64() / healthy_p50.as_secs_f64(),
        sick_p99.as_secs_f64() / healthy_p99.as_secs_f64(),
        stats.ended(),
        stats.dropped(),
        stats.failed(),
        stats.exported(),
        QUEUE as u64 + BATCH,
    );

    // Latency: export runs off the request path. The bound leaves room for
    // this shared machine's noise, far below what blocking on a 300 ms
    // export timeout or a 2 s answer would cost.
    assert!(
        sick_p50 <= healthy_p50 * 2 + Duration::from_millis(1),
        "median {sick_p50:?} against {healthy_p50:?} with a healthy collector"
    );
    // Spans held, by the processor's own count, never exceed the queue plus
    // the batch in flight (the heap they take: tests/export_memory.rs).
    assert!(
        most_pending <= QUEUE as u64 + BATCH,
        "{most_pending} spans held"
    );
    // Losses are counted, and the scrape shows exactly the counters.
    assert!(
        stats.dropped() + stats.failed() > 0,
        "nothing was lost: {stats:?}"
    );
    assert_eq!(scraped.dropped, Some(stats.dropped()), "{text}");
    assert_eq!(scraped.failed, Some(stats.failed()), "{text}");
    assert_eq!(scraped.exported, Some(stats.exported()), "{text}");

    let _ = stop.send(true);
    drop(healthy_guard);
    // Shutting down against a sick collector returns within its timeouts.
    let shutdown = tokio::task::spawn_blocking(move || sick_guard.shutdown());
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await??
        .ok();
    Ok(stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down() -> anyhow::Result<()> {
    for protocol in Protocol::ALL {
        let nobody = tests::free_port()?;
        let stats = compare_with_healthy(
            protocol,
            "down",
            format!("http://127.0.0.1:{nobody}"),
            Duration::from_millis(300),
            None,
        )
        .await?;
        assert_eq!(stats.exported(), 0);
    }
    Ok(())
}

/// A collector that decodes every export and answers `UNAVAILABLE`: once
/// the pipeline is shut down, what the receiver decoded and what the scrape
/// says account for every span the server ended, one per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_answering_unavailable() -> anyhow::Result<()> {
    for protocol in Protocol::ALL {
        let receiver = OtlpReceiver::start().await?;
        let stats = compare_with_healthy(
            protocol,
            "unavailable",
            receiver.endpoint_for(protocol),
            Duration::from_millis(300),
            Some((&receiver, TraceFault::Unavailable)),
        )
        .await?;
        assert!(
            receiver.export_requests_over(protocol) > 0,
            "the exporter never reached the collector over {protocol}"
        );
        assert!(receiver.spans().is_empty());

        // After shutdown nothing is held: every span has its outcome (the
        // worker may still be counting the last ones on a loaded machine).
        tests::eventually(Duration::from_secs(10), "the processor drained", || async {
            (stats.pending() == 0).then_some(())
        })
        .await?;
        let (text, scraped) = scrape(&stats)?;
        // The spans the receiver decoded from the requests it refused,
        // counted by the receiver; the exporter retries a refused request
        // (up to its 300 ms timeout), so a span may arrive more than once.
        let refused = receiver.refused_spans();
        let distinct: std::collections::HashSet<(&str, &str)> = refused
            .iter()
            .map(|span| (span.trace_id.as_str(), span.span_id.as_str()))
            .collect();
        let ended = (WARM_UP_CALLS_PER_SIDE + CALLS_PER_SIDE) as u64;
        eprintln!(
            "over {protocol}: {ended} calls; the collector refused {} distinct spans ({} with \
             retries) in {} requests; scraped: {scraped:?}",
            distinct.len(),
            refused.len(),
            receiver.export_requests_over(protocol),
        );
        assert!(
            refused
                .iter()
                .all(|span| span.service == "echo" && span.name == "echo.Echo/Say"),
            "spans of another service reached the collector"
        );
        assert_eq!(scraped.held, Some(0), "{text}");
        assert_eq!(scraped.exported, Some(0), "{text}");
        // Every span in a failed batch reached the collector (and no other).
        assert_eq!(scraped.failed, Some(distinct.len() as u64), "{text}");
        // Every span the server ended (one per call) was queued and failed,
        // or dropped: ended = failed + dropped.
        assert_eq!(scraped.queued, scraped.failed, "{text}");
        assert_eq!(
            scraped.failed.zip(scraped.dropped).map(|(f, d)| f + d),
            Some(ended),
            "{text}"
        );
    }
    Ok(())
}

/// Exports that take 2 s (within the 5 s export timeout): the queue fills
/// while a batch is out, and the overflow is dropped, not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_answering_slowly() -> anyhow::Result<()> {
    for protocol in Protocol::ALL {
        let receiver = OtlpReceiver::start().await?;
        let stats = compare_with_healthy(
            protocol,
            "slow (2 s per export)",
            receiver.endpoint_for(protocol),
            Duration::from_secs(5),
            Some((&receiver, TraceFault::Slow(Duration::from_secs(2)))),
        )
        .await?;
        assert!(stats.dropped() > 0, "over {protocol}: {stats:?}");
    }
    Ok(())
}
