//! Span export counters as Prometheus metrics, named after the OpenTelemetry
//! semantic conventions for SDK self-observability
//! (`otel.sdk.processor.span.*`, `otel.sdk.exporter.span.exported`).
//!
//! A collector that is down shows up here first: `queue_full` drops climb
//! while requests keep their latency.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    IntCounterVec, IntGauge, Opts,
};

use crate::ExportStats;

/// `otel.component.type` of [`BoundedBatchProcessor`](crate::BoundedBatchProcessor).
const COMPONENT_TYPE: &str = "batching_span_processor";

/// Reads an [`ExportStats`] at each scrape.
///
/// | metric | labels | meaning |
/// |---|---|---|
/// | `otel_sdk_processor_span_processed_total` | `error_type=""` | spans queued for export |
/// | | `error_type="queue_full"` | spans dropped: queue full (collector down or slow) |
/// | `otel_sdk_exporter_span_exported_total` | `error_type=""` | spans the collector accepted |
/// | | `error_type="export_failed"` | spans in batches that failed to export |
/// | `otel_sdk_processor_span_queue_size` | | spans queued or being exported |
/// | `otel_sdk_processor_span_queue_capacity` | | the queue's bound |
///
/// Every series also carries `otel_component_type` and `otel_component_name`.
///
/// ```
/// use std::sync::Arc;
/// use rpc_ext_tracing::{prometheus::ExportStatsCollector, ExportStats};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // From `TracingGuard::stats()` or `BoundedBatchProcessor::stats()`:
/// let stats = Arc::new(ExportStats::default());
/// let registry = prometheus::Registry::new(); // or rpc_ext_metrics's RpcMetrics::registry()
/// registry.register(Box::new(ExportStatsCollector::new(stats)))?;
/// let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather())?;
/// assert!(text.contains(r#"otel_sdk_processor_span_processed_total{error_type="queue_full""#));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ExportStatsCollector {
    stats: Arc<ExportStats>,
    processed: IntCounterVec,
    exported: IntCounterVec,
    queue_size: IntGauge,
    queue_capacity: IntGauge,
    /// Concurrent scrapes must not both add the same increase.
    syncing: Mutex<()>,
}

impl ExportStatsCollector {
    /// Exposes `stats` as the processor named `tracing_ext_batch`.
    #[must_use]
    pub fn new(stats: Arc<ExportStats>) -> Self {
        Self::named(stats, "tracing_ext_batch")
    }

    /// Exposes `stats` with `otel_component_name` set to `name` (for a
    /// process with several pipelines).
    #[must_use]
    pub fn named(stats: Arc<ExportStats>, name: &str) -> Self {
        let opts = |metric: &str, help: &str| {
            Opts::new(metric, help)
                .const_label("otel_component_type", COMPONENT_TYPE)
                .const_label("otel_component_name", name)
        };
        // The names and label sets are fixed and valid: construction
        // cannot fail, and a failure would only hide these metrics.
        let counter = |metric: &str, help: &str| {
            IntCounterVec::new(opts(metric, help), &["error_type"])
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
        };
        let gauge = |metric: &str, help: &str| {
            IntGauge::with_opts(opts(metric, help))
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
        };
        let collector = Self {
            stats,
            processed: counter(
                "otel_sdk_processor_span_processed_total",
                "Spans handed to the batch processor; error_type=queue_full counts the dropped ones.",
            ),
            exported: counter(
                "otel_sdk_exporter_span_exported_total",
                "Spans exported; error_type=export_failed counts those in failed batches.",
            ),
            queue_size: gauge(
                "otel_sdk_processor_span_queue_size",
                "Spans queued or being exported.",
            ),
            queue_capacity: gauge(
                "otel_sdk_processor_span_queue_capacity",
                "Most spans the processor queues.",
            ),
            syncing: Mutex::new(()),
        };
        // Both outcomes exist from the first scrape, so rates start at 0.
        for label in ["", "queue_full"] {
            collector.processed.with_label_values(&[label]);
        }
        for label in ["", "export_failed"] {
            collector.exported.with_label_values(&[label]);
        }
        collector
    }

    fn sync(&self) {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = &self.stats;
        let dropped = stats.dropped();
        let queued = stats.ended().saturating_sub(dropped);
        advance(&self.processed, "", queued);
        advance(&self.processed, "queue_full", dropped);
        advance(&self.exported, "", stats.exported());
        advance(&self.exported, "export_failed", stats.failed());
        self.queue_size
            .set(i64::try_from(stats.pending()).unwrap_or(i64::MAX));
        self.queue_capacity
            .set(i64::try_from(stats.queue_capacity()).unwrap_or(i64::MAX));
    }
}

/// Moves a counter up to `total`; counters never go down, even if the
/// atomics were read mid-update.
fn advance(counter: &IntCounterVec, label: &str, total: u64) {
    let counter = counter.with_label_values(&[label]);
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

impl Collector for ExportStatsCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.processed.desc();
        descs.extend(self.exported.desc());
        descs.extend(self.queue_size.desc());
        descs.extend(self.queue_capacity.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.sync();
        let mut families = self.processed.collect();
        families.extend(self.exported.collect());
        families.extend(self.queue_size.collect());
        families.extend(self.queue_capacity.collect());
        families
    }
}
