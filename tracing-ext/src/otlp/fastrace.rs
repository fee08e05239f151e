//! [`OtlpTracing::install_fastrace`]: the same OTLP export for spans
//! recorded with fastrace (feature `fastrace`).

use std::{borrow::Cow, sync::Arc, time::Duration};

use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter, SpanProcessor},
};

use super::{env, guard::outside_runtime, Error, OtlpTracing};
use crate::{
    processor::{BoundedBatchProcessor, ExportStats},
    FastraceSpanExporter, INSTRUMENTATION_NAME,
};

/// How often fastrace's collector thread hands finished traces over.
const REPORT_INTERVAL: Duration = Duration::from_millis(200);

impl OtlpTracing {
    /// Sets up OTLP export for spans recorded with fastrace
    /// ([`RpcTracingBuilder::fastrace`](crate::RpcTracingBuilder::fastrace)),
    /// from the same settings and environment variables as
    /// [`install`](Self::install) (exporters, endpoint, protocol, headers,
    /// TLS, resource, `OTEL_BSP_*`), and sets fastrace's reporter:
    /// fastrace-opentelemetry's `OpenTelemetryReporter` through
    /// [`FastraceSpanExporter`], with
    /// instrumentation scope `rpc-ext-tracing`. The application's own
    /// fastrace spans go the same way. `OTEL_TRACES_SAMPLER` applies
    /// through [`FastraceSampler`](crate::FastraceSampler); the SDK's span
    /// processors and samplers play no part.
    ///
    /// A collector that is down costs bounded memory and no request
    /// latency: the reporter only hands spans to the same bounded batch
    /// queue as [`install`](Self::install) (spans beyond it are dropped
    /// and counted in [`FastraceGuard::stats`]), and export runs on that
    /// queue's own thread and runtime. fastrace's own per-thread queues do
    /// not bound themselves (a full ring spills into a growable list); they
    /// stay short because fastrace's collector thread drains them every
    /// 200 ms and never waits on the network here.
    ///
    /// ```no_run
    /// use rpc_ext_tracing::{otlp::OtlpTracing, RpcTracing};
    ///
    /// # fn main() -> Result<(), rpc_ext_tracing::otlp::Error> {
    /// let guard = OtlpTracing::new().service_name("echo-server").install_fastrace()?;
    /// let tracing = RpcTracing::builder().fastrace().build();
    /// // ... serve with the layers built from `tracing` ...
    /// # let _ = tracing;
    /// guard.shutdown()?; // exports what is recorded, within the deadline
    /// # Ok(()) }
    /// ```
    pub fn install_fastrace(self) -> Result<FastraceGuard, Error> {
        if env::sdk_disabled() {
            tracing::info!("OTEL_SDK_DISABLED=true: fastrace spans are not reported");
            return Ok(self.fastrace_guard(Vec::new()));
        }
        let processors = self.processors_from_env()?;
        Ok(self.install_fastrace_processors(processors))
    }

    /// [`install_fastrace`](Self::install_fastrace) with another exporter
    /// (stdout, in-memory...), keeping the bounded batch queue and the
    /// resource settings (`OTEL_TRACES_EXPORTER` does not apply;
    /// `OTEL_SDK_DISABLED` does).
    ///
    /// ```
    /// use rpc_ext_tracing::otlp::OtlpTracing;
    ///
    /// let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    /// let guard = OtlpTracing::new().install_fastrace_with_exporter(exporter);
    /// # guard.shutdown().unwrap();
    /// ```
    pub fn install_fastrace_with_exporter(
        self,
        exporter: impl SpanExporter + 'static,
    ) -> FastraceGuard {
        if env::sdk_disabled() {
            return self.fastrace_guard(Vec::new());
        }
        let processor = BoundedBatchProcessor::new(exporter, self.limits());
        self.install_fastrace_processors(vec![processor])
    }

    fn install_fastrace_processors(
        self,
        mut processors: Vec<BoundedBatchProcessor>,
    ) -> FastraceGuard {
        let resource = self.resource();
        for processor in &mut processors {
            processor.set_resource(&resource);
        }
        let guard = self.fastrace_guard(processors);
        let scope = opentelemetry::InstrumentationScope::builder(INSTRUMENTATION_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let handoff = Handoff(Arc::clone(&guard.processors));
        let reporter = fastrace_opentelemetry::OpenTelemetryReporter::new(
            FastraceSpanExporter::new(handoff),
            Cow::Owned(resource),
            scope,
        );
        fastrace::set_reporter(
            reporter,
            fastrace::collector::Config::default().report_interval(REPORT_INTERVAL),
        );
        guard
    }

    fn fastrace_guard(self, processors: Vec<BoundedBatchProcessor>) -> FastraceGuard {
        FastraceGuard {
            stats: processors
                .first()
                .map(BoundedBatchProcessor::stats)
                .unwrap_or_default(),
            processors: processors.into(),
            shutdown_timeout: self
                .shutdown_timeout
                .unwrap_or(super::DEFAULT_SHUTDOWN_TIMEOUT),
            shut_down: false,
        }
    }
}

/// What fastrace-opentelemetry exports to: the bounded batch queues,
/// filled without blocking, so fastrace's collector thread never waits on
/// the network.
#[derive(Debug)]
struct Handoff(Arc<[BoundedBatchProcessor]>);

impl SpanExporter for Handoff {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        if let Some((last, others)) = self.0.split_last() {
            for span in batch {
                for processor in others {
                    processor.on_end(span.clone());
                }
                last.on_end(span);
            }
        }
        std::future::ready(Ok(()))
    }

    // The resource went to the processors before the reporter was built.
}

/// Owns the fastrace pipeline that
/// [`OtlpTracing::install_fastrace`] set up; [`shutdown`](Self::shutdown)
/// reports what fastrace holds and exports what is queued, within one
/// deadline (default 5 s). Dropping it does the same, logging failures.
/// fastrace's reporter stays set (fastrace has no way to unset it): spans
/// recorded after the shutdown are dropped and counted.
///
/// ```
/// use rpc_ext_tracing::otlp::OtlpTracing;
///
/// let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
/// let guard = OtlpTracing::new().install_fastrace_with_exporter(exporter.clone());
/// drop(fastrace::Span::root("job", fastrace::collector::SpanContext::random()));
/// guard.force_flush().unwrap();
/// assert_eq!(guard.stats().exported(), 1);
/// assert_eq!(exporter.get_finished_spans().unwrap()[0].name, "job");
/// guard.shutdown().unwrap();
/// ```
#[derive(Debug)]
#[must_use = "dropping the guard shuts tracing down"]
pub struct FastraceGuard {
    processors: Arc<[BoundedBatchProcessor]>,
    stats: Arc<ExportStats>,
    shutdown_timeout: Duration,
    shut_down: bool,
}

impl FastraceGuard {
    /// Spans ended, exported, failed and dropped so far (of the first
    /// exporter).
    #[must_use]
    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }

    /// Hands what fastrace holds to the queue and exports it now, waiting
    /// for the export (within the export timeout).
    pub fn force_flush(&self) -> Result<(), Error> {
        outside_runtime(|| {
            fastrace::flush();
            for processor in self.processors.iter() {
                processor.force_flush()?;
            }
            Ok(())
        })
    }

    /// Hands what fastrace holds to the queue, exports it and stops the
    /// export threads, within the shutdown deadline. Spans that could not
    /// be exported by then are reported in [`Error::SpansLost`].
    pub fn shutdown(mut self) -> Result<(), Error> {
        outside_runtime(|| self.shutdown_inner())
    }

    fn shutdown_inner(&mut self) -> Result<(), Error> {
        if std::mem::replace(&mut self.shut_down, true) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        fastrace::flush();
        let pending = self.stats.pending();
        let exported = self.stats.exported();
        let mut result = Ok(());
        for processor in self.processors.iter() {
            let left = self.shutdown_timeout.saturating_sub(started.elapsed());
            if let Err(error) = processor.shutdown_with_timeout(left) {
                result = Err(error);
            }
        }
        let lost = pending.saturating_sub(self.stats.exported() - exported);
        super::guard::shutdown_outcome(result, lost)
    }
}

impl Drop for FastraceGuard {
    fn drop(&mut self) {
        if self.shut_down {
            return;
        }
        let on_current_thread_runtime = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
        });
        let mut detached = FastraceGuard {
            processors: Arc::clone(&self.processors),
            stats: Arc::clone(&self.stats),
            shutdown_timeout: self.shutdown_timeout,
            shut_down: false,
        };
        self.shut_down = true;
        let shut = move || {
            if let Err(error) = detached.shutdown_inner() {
                tracing::warn!(%error, "fastrace export shutdown failed");
            }
        };
        if on_current_thread_runtime {
            // Blocking would stop the only runtime thread for up to the
            // deadline: shut down on a thread of its own instead.
            if std::thread::Builder::new()
                .name("tracing-ext-shutdown".into())
                .spawn(shut)
                .is_err()
            {
                tracing::warn!("cannot start the shutdown thread; recorded spans are lost");
            }
            return;
        }
        outside_runtime(shut);
    }
}
