//! Span export to a sick collector — refusing connections, answering
//! `UNAVAILABLE`, or answering slowly: calls keep their latency, the spans
//! held stay within the processor's bounds, and what is lost is counted and
//! scraped as Prometheus metrics.

use std::time::Duration;

use echo::tonic_gen;
use tests::otlp::{OtlpReceiver, Protocol, TraceFault};
use rpc_ext_tracing::{
    otlp::{OtlpTracing, TracingGuard},
    prometheus::ExportStatsCollector,
    RpcTracing,
};
use tokio::{sync::watch, time::Instant};

use crate::support::{traced_tonic_echo, transport, TonicEchoClient};

const QUEUE: usize = 256;
/// The processor's default batch; one batch may be out for export.
const BATCH: u64 = 512;
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
    for _ in 0..100 {
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

    let registry = prometheus::Registry::new();
    registry.register(Box::new(ExportStatsCollector::new(stats.clone())))?;
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather())?;
    let labels =
        r#"otel_component_name="tracing_ext_batch",otel_component_type="batching_span_processor""#;
    let dropped = sample(
        &text,
        &format!(r#"otel_sdk_processor_span_processed_total{{error_type="queue_full",{labels}}}"#),
    );
    let failed = sample(
        &text,
        &format!(r#"otel_sdk_exporter_span_exported_total{{error_type="export_failed",{labels}}}"#),
    );
    let exported = sample(
        &text,
        &format!(r#"otel_sdk_exporter_span_exported_total{{error_type="",{labels}}}"#),
    );
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
    // Memory: spans held never exceed the queue plus the batch in flight.
    assert!(
        most_pending <= QUEUE as u64 + BATCH,
        "{most_pending} spans held"
    );
    // Losses are counted, and the scrape shows exactly the counters.
    assert!(
        stats.dropped() + stats.failed() > 0,
        "nothing was lost: {stats:?}"
    );
    assert_eq!(dropped, Some(stats.dropped()), "{text}");
    assert_eq!(failed, Some(stats.failed()), "{text}");
    assert_eq!(exported, Some(stats.exported()), "{text}");

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
        assert_eq!(stats.exported(), 0);
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
