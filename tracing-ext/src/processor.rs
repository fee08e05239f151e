//! A batch span processor with a bounded queue that counts what it drops.
//!
//! The SDK's `BatchSpanProcessor` bounds its queue too, but keeps its drop
//! count private; operators need that number (a collector that is down must
//! show up somewhere), so this processor keeps the same design — a bounded
//! queue filled without blocking, a worker thread exporting batches — and
//! publishes its counters in [`ExportStats`].
//!
//! The worker thread runs its exports inside a small Tokio runtime of its
//! own (one I/O thread). Exporters built on Tokio (tonic, async reqwest) then
//! work whatever runtime the application has, or none, and a flush never
//! waits on the application's runtime: a current-thread runtime blocked in
//! `shutdown` cannot starve the export it is waiting for.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use opentelemetry::Context;
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{Span, SpanData, SpanExporter, SpanProcessor},
    Resource,
};

/// Counters of one [`BoundedBatchProcessor`].
#[derive(Debug, Default)]
pub struct ExportStats {
    ended: AtomicU64,
    dropped: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
    queue_capacity: u64,
}

impl ExportStats {
    fn with_capacity(queue_capacity: usize) -> Self {
        Self {
            queue_capacity: u64::try_from(queue_capacity).unwrap_or(u64::MAX),
            ..Self::default()
        }
    }

    /// Most spans the queue holds (`0` for stats not made by a processor).
    pub fn queue_capacity(&self) -> u64 {
        self.queue_capacity
    }

    /// Spans handed to the processor and neither dropped nor done exporting
    /// yet: the queue plus the batch being exported.
    pub fn pending(&self) -> u64 {
        // Read the outcomes before `ended`, which counts every span first.
        let done = self.dropped() + self.exported() + self.failed();
        self.ended().saturating_sub(done)
    }

    /// Sampled spans that ended and were handed to the processor.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }
    /// Spans dropped because the queue was full (or after shutdown).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Spans the exporter accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }
    /// Spans in batches the exporter failed to send.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Limits of a [`BoundedBatchProcessor`].
#[derive(Debug, Clone)]
pub struct BatchLimits {
    /// Most spans waiting for export (default 2,048).
    pub max_queue_size: usize,
    /// Most spans in one export (default 512).
    pub max_export_batch_size: usize,
    /// Longest wait before a partial batch is exported (default 5 s).
    pub scheduled_delay: Duration,
    /// Longest one export may take, and the deadline of a
    /// [`force_flush`](SpanProcessor::force_flush) (default 30 s).
    pub export_timeout: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_queue_size: 2048,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_secs(5),
            export_timeout: Duration::from_secs(30),
        }
    }
}

impl BatchLimits {
    /// The defaults, overridden by `OTEL_BSP_MAX_QUEUE_SIZE`,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY` (ms) and
    /// `OTEL_BSP_EXPORT_TIMEOUT` (ms). Values that are not numbers are
    /// ignored with a warning.
    #[must_use]
    pub fn from_env() -> Self {
        let read = |name: &str| {
            let value = std::env::var(name).ok()?;
            match value.trim().parse::<u64>() {
                Ok(number) => Some(number),
                Err(_) => {
                    tracing::warn!(%value, "{name} is not a number; using the default");
                    None
                }
            }
        };
        let mut limits = Self::default();
        if let Some(size) = read("OTEL_BSP_MAX_QUEUE_SIZE") {
            limits.max_queue_size = usize::try_from(size).unwrap_or(usize::MAX);
        }
        if let Some(size) = read("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
            limits.max_export_batch_size = usize::try_from(size).unwrap_or(usize::MAX);
        }
        if let Some(ms) = read("OTEL_BSP_SCHEDULE_DELAY") {
            limits.scheduled_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = read("OTEL_BSP_EXPORT_TIMEOUT") {
            limits.export_timeout = Duration::from_millis(ms);
        }
        limits.max_export_batch_size = limits
            .max_export_batch_size
            .clamp(1, limits.max_queue_size.max(1));
        limits
    }
}

enum Control {
    /// A full batch is queued (sent once until the worker takes it).
    BatchReady,
    Resource(Resource),
    /// Export everything queued, giving up at the deadline.
    Flush(Sender<OTelSdkResult>, Instant),
    /// Flush until the deadline, drop what is left, shut the exporter down.
    Shutdown(Sender<OTelSdkResult>, Instant),
}

/// Queues ended spans without blocking (dropping and counting them when the
/// queue is full) and exports them in batches from a worker thread.
#[derive(Debug)]
pub struct BoundedBatchProcessor {
    spans: Sender<SpanData>,
    control: Sender<Control>,
    stats: Arc<ExportStats>,
    /// Set while a `BatchReady` is on its way to the worker.
    batch_signaled: Arc<AtomicBool>,
    /// Queue length that wakes the worker: a batch, but never later than
    /// half the queue, so spans keep arriving safely while it wakes up.
    wake_at: usize,
    export_timeout: Duration,
    worker: Mutex<Option<thread::JoinHandle<()>>>,
    shut_down: AtomicBool,
}

impl BoundedBatchProcessor {
    /// Starts the worker thread exporting with `exporter`.
    pub fn new<E: SpanExporter + 'static>(exporter: E, limits: BatchLimits) -> Self {
        match Self::start(move || Ok::<_, std::convert::Infallible>(exporter), limits) {
            Ok(processor) => processor,
            Err(never) => match never {},
        }
    }

    /// Starts the worker thread and builds the exporter on it, inside the
    /// worker's Tokio runtime, so that the tasks an exporter spawns (tonic's
    /// channel) live on that runtime and not on the caller's.
    pub(crate) fn start<E, F, Err>(make_exporter: F, limits: BatchLimits) -> Result<Self, Err>
    where
        E: SpanExporter + 'static,
        F: FnOnce() -> Result<E, Err> + Send + 'static,
        Err: Send + 'static,
    {
        let capacity = limits.max_queue_size.max(1);
        let (spans, span_rx) = bounded(capacity);
        let (control, control_rx) = bounded(16);
        let stats = Arc::new(ExportStats::with_capacity(capacity));
        let batch_signaled = Arc::new(AtomicBool::new(false));
        let max_export_batch_size = limits.max_export_batch_size.clamp(1, capacity);
        let limits = BatchLimits {
            max_export_batch_size,
            ..limits
        };
        let export_timeout = limits.export_timeout;
        let (ready, built) = bounded(1);
        let worker_stats = stats.clone();
        let worker_signal = batch_signaled.clone();
        let handle = thread::Builder::new()
            .name("tracing-ext-export".into())
            .spawn(move || {
                let runtime = export_runtime();
                let _entered = runtime.as_ref().map(tokio::runtime::Runtime::enter);
                let exporter = match make_exporter() {
                    Ok(exporter) => {
                        let _ = ready.send(Ok(()));
                        exporter
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                Worker {
                    exporter,
                    spans: span_rx,
                    control: control_rx,
                    stats: worker_stats,
                    batch_signaled: worker_signal,
                    limits,
                    runtime: runtime.as_ref(),
                }
                .run();
            });
        let handle = match handle {
            Ok(handle) => {
                // The thread reports once the exporter is built (or not).
                match built.recv() {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        let _ = handle.join();
                        return Err(error);
                    }
                    Err(_) => tracing::error!(
                        "the span export thread ended while building its exporter; \
                         spans will be dropped"
                    ),
                }
                Some(handle)
            }
            Err(error) => {
                tracing::error!(%error, "cannot start the span export thread; spans will be dropped");
                None
            }
        };
        Ok(Self {
            spans,
            control,
            stats,
            batch_signaled,
            wake_at: max_export_batch_size.min(capacity.div_ceil(2)).max(1),
            export_timeout,
            worker: Mutex::new(handle),
            shut_down: AtomicBool::new(false),
        })
    }

    /// The processor's counters.
    #[must_use]
    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }

    /// Sends a request to the worker and waits for its answer until
    /// `timeout` from now (the worker itself stops at the same deadline).
    fn ask(
        &self,
        make: impl FnOnce(Sender<OTelSdkResult>, Instant) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let started = Instant::now();
        let deadline = started + timeout;
        let (reply, answer) = bounded(1);
        self.control
            .send_deadline(make(reply, deadline), deadline)
            .map_err(|_| OTelSdkError::InternalFailure("export worker is gone".into()))?;
        // A little past the deadline: the worker answers at it, not before
        // its last export has given up.
        answer
            .recv_deadline(deadline + ANSWER_GRACE)
            .map_err(|_| OTelSdkError::Timeout(timeout))?
    }
}

/// How long past a deadline a caller waits for the worker's answer.
const ANSWER_GRACE: Duration = Duration::from_millis(200);

/// The worker's runtime: one I/O thread driving the exporter's connections
/// and timers, also between exports. Without it, exports still run (with
/// `futures_executor`), but exporters that need Tokio fail.
fn export_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tracing-ext-export-io")
        .enable_all()
        .build()
        .map_err(|error| tracing::error!(%error, "cannot start the span export runtime"))
        .ok()
}

impl SpanProcessor for BoundedBatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        self.stats.ended.fetch_add(1, Ordering::Relaxed);
        if self.shut_down.load(Ordering::Relaxed) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.spans.try_send(span) {
            // The worker is not woken per span (a thread wake-up costs more
            // than the span): only when a full batch waits, else its timer.
            Ok(()) => {
                if self.spans.len() >= self.wake_at
                    && !self.batch_signaled.swap(true, Ordering::AcqRel)
                    && self.control.try_send(Control::BatchReady).is_err()
                {
                    // The control queue is full (flushes piling up): let the
                    // next span try again rather than wait for the timer.
                    self.batch_signaled.store(false, Ordering::Release);
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        self.ask(Control::Flush, self.export_timeout)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let result = self.ask(Control::Shutdown, timeout);
        if let Some(handle) = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            if result.is_ok() {
                let _ = handle.join();
            }
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        // The exporter lives on the worker thread: hand the resource over.
        // The provider sets it once, while building, before any span ends.
        if self
            .control
            .send(Control::Resource(resource.clone()))
            .is_err()
        {
            tracing::warn!("export worker is gone; the resource was not set");
        }
    }
}

struct Worker<'rt, E> {
    exporter: E,
    spans: Receiver<SpanData>,
    control: Receiver<Control>,
    stats: Arc<ExportStats>,
    batch_signaled: Arc<AtomicBool>,
    limits: BatchLimits,
    runtime: Option<&'rt tokio::runtime::Runtime>,
}

impl<E: SpanExporter> Worker<'_, E> {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(self.limits.max_export_batch_size);
        let mut next_export = Instant::now() + self.limits.scheduled_delay;
        loop {
            let timeout = next_export.saturating_duration_since(Instant::now());
            match self.control.recv_timeout(timeout) {
                Ok(Control::BatchReady) => {
                    self.batch_signaled.store(false, Ordering::Release);
                    // Failures are counted in the stats; the next batch goes on.
                    let _ = self.export_full_batches(&mut batch);
                    next_export = Instant::now() + self.limits.scheduled_delay;
                }
                Ok(Control::Resource(resource)) => self.exporter.set_resource(&resource),
                Ok(Control::Flush(reply, deadline)) => {
                    let result = self.drain(&mut batch, deadline);
                    let _ = reply.send(result);
                }
                Ok(Control::Shutdown(reply, deadline)) => {
                    let result = self.drain(&mut batch, deadline);
                    // What the deadline left behind is lost: count it.
                    let left = self.spans.len() + batch.len();
                    self.spans.try_iter().for_each(drop);
                    batch.clear();
                    self.stats.dropped.fetch_add(left as u64, Ordering::Relaxed);
                    let shutdown = self.exporter.shutdown();
                    let _ = reply.send(result.and(shutdown));
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.batch_signaled.store(false, Ordering::Release);
                    // Only what is queued now: under a steady stream a full
                    // drain would never end, and flushes would wait on it.
                    let queued = self.spans.len();
                    let _ = self.export_queued(&mut batch, queued, None);
                    next_export = Instant::now() + self.limits.scheduled_delay;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Exports queued spans in batches: at most `limit` of them
    /// (`usize::MAX`: until the queue is empty), stopping at `deadline`.
    fn export_queued(
        &mut self,
        batch: &mut Vec<SpanData>,
        limit: usize,
        deadline: Option<Instant>,
    ) -> OTelSdkResult {
        let mut result = Ok(());
        let mut left = limit;
        loop {
            while batch.len() < self.limits.max_export_batch_size && left > 0 {
                let Ok(span) = self.spans.try_recv() else {
                    break;
                };
                batch.push(span);
                left -= 1;
            }
            if batch.is_empty() {
                return result;
            }
            if let Err(error) = self.export(batch, deadline) {
                result = Err(error);
            }
            // Out of time with spans still queued: the caller counts them.
            if deadline.is_some_and(|deadline| Instant::now() >= deadline)
                && left > 0
                && !self.spans.is_empty()
            {
                return result.and(Err(OTelSdkError::Timeout(Duration::ZERO)));
            }
        }
    }

    /// Exports the whole batches queued now; woken early (half of a queue
    /// smaller than two batches), exports what is queued.
    fn export_full_batches(&mut self, batch: &mut Vec<SpanData>) -> OTelSdkResult {
        let queued = self.spans.len();
        let size = self.limits.max_export_batch_size;
        let count = if queued >= size {
            queued - queued % size
        } else {
            queued
        };
        self.export_queued(batch, count, None)
    }

    /// Exports everything queued so far, until `deadline`.
    fn drain(&mut self, batch: &mut Vec<SpanData>, deadline: Instant) -> OTelSdkResult {
        self.export_queued(batch, usize::MAX, Some(deadline))
    }

    /// One export, bounded by the export timeout and the deadline.
    fn export(&mut self, batch: &mut Vec<SpanData>, deadline: Option<Instant>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let count = batch.len() as u64;
        let spans = std::mem::replace(batch, Vec::with_capacity(self.limits.max_export_batch_size));
        let mut timeout = self.limits.export_timeout;
        if let Some(deadline) = deadline {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }
        let export = self.exporter.export(spans);
        let result = match self.runtime {
            Some(runtime) => runtime
                .block_on(tokio::time::timeout(timeout, export))
                .unwrap_or(Err(OTelSdkError::Timeout(timeout))),
            None => futures_executor::block_on(export),
        };
        match &result {
            Ok(()) => self.stats.exported.fetch_add(count, Ordering::Relaxed),
            Err(error) => {
                tracing::debug!(%error, count, "span export failed");
                self.stats.failed.fetch_add(count, Ordering::Relaxed)
            }
        };
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Condvar;

    use opentelemetry::trace::{Tracer, TracerProvider};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    /// An exporter stuck until the gate opens, like a hung collector.
    #[derive(Debug, Clone, Default)]
    struct GatedExporter {
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl GatedExporter {
        fn open(&self) {
            *self.gate.0.lock().unwrap() = true;
            self.gate.1.notify_all();
        }
    }

    impl SpanExporter for GatedExporter {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            let (lock, open) = &*self.gate;
            let _open = open
                .wait_while(lock.lock().unwrap(), |open| !*open)
                .unwrap();
            Ok(())
        }
    }

    #[test]
    fn a_stuck_exporter_drops_and_counts_instead_of_growing() {
        let exporter = GatedExporter::default();
        let processor = BoundedBatchProcessor::new(
            exporter.clone(),
            BatchLimits {
                max_queue_size: 100,
                max_export_batch_size: 10,
                scheduled_delay: Duration::from_millis(10),
                ..BatchLimits::default()
            },
        );
        let stats = processor.stats();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("test");
        for _ in 0..10_000 {
            drop(tracer.start("span"));
        }
        // At most the queue plus the batch stuck in the exporter are held.
        assert_eq!(stats.ended(), 10_000);
        assert!(
            stats.dropped() >= 10_000 - 100 - 10,
            "dropped {}",
            stats.dropped()
        );

        exporter.open();
        provider.force_flush().unwrap();
        assert_eq!(
            stats.ended(),
            stats.exported() + stats.failed() + stats.dropped()
        );
        provider.shutdown().unwrap();
    }

    #[test]
    fn a_full_batch_leaves_at_once_and_a_partial_one_on_the_timer() {
        let exporter = GatedExporter::default();
        exporter.open();
        let processor = BoundedBatchProcessor::new(
            exporter,
            BatchLimits {
                max_queue_size: 100,
                max_export_batch_size: 10,
                scheduled_delay: Duration::from_secs(2),
                ..BatchLimits::default()
            },
        );
        let stats = processor.stats();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("test");
        let wait_for = |exported: u64, within: Duration| {
            let deadline = Instant::now() + within;
            while stats.exported() < exported && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            stats.exported()
        };
        let started = Instant::now();
        for _ in 0..10 {
            drop(tracer.start("span"));
        }
        assert_eq!(wait_for(10, Duration::from_secs(5)), 10);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a full batch waited for the timer"
        );

        for _ in 0..3 {
            drop(tracer.start("span"));
        }
        assert_eq!(wait_for(13, Duration::from_secs(5)), 13);
        provider.shutdown().unwrap();
    }
}
