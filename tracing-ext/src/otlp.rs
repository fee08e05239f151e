//! One-call OTLP export set-up (feature `otlp`).

use std::time::Duration;

use opentelemetry_otlp::{Protocol, WithExportConfig};
use std::sync::Arc;

use opentelemetry_sdk::{
    trace::{SdkTracerProvider, SpanExporter},
    Resource,
};

use crate::processor::{BatchLimits, BoundedBatchProcessor, ExportStats};

/// What can go wrong setting up or shutting down export.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The exporter could not be built (bad endpoint, bad headers...).
    #[error("building the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Flushing or shutting down the provider failed (collector down at exit).
    #[error("shutting down the tracer provider: {0}")]
    Shutdown(#[from] opentelemetry_sdk::error::OTelSdkError),
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318).
    HttpProtobuf,
}

/// Sets up a tracer provider exporting over OTLP with a bounded batch queue,
/// installs it (and the propagators of `OTEL_PROPAGATORS`) globally, and
/// returns a guard whose shutdown flushes.
///
/// Everything left unset comes from the standard environment variables:
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (and `_TRACES_ENDPOINT`), `_HEADERS`,
/// `_TIMEOUT`, `_PROTOCOL` (`grpc` or `http/protobuf`), `OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` (+`_ARG`), `OTEL_BSP_*`.
///
/// When the collector is down, spans beyond the queue (default 2,048) are
/// dropped and counted ([`TracingGuard::stats`]): memory stays bounded and
/// requests are not slowed, since export runs on its own thread.
///
/// ```no_run
/// use tracing_ext::otlp::{OtlpTracing, Transport};
///
/// # #[tokio::main] async fn main() -> Result<(), tracing_ext::otlp::Error> {
/// let guard = OtlpTracing::new()
///     .service_name("echo-server")
///     .transport(Transport::Grpc)
///     .endpoint("http://127.0.0.1:4317")
///     .install()?;
/// // ... serve ...
/// guard.shutdown()?; // flushes what is queued
/// # Ok(()) }
/// ```
#[must_use]
#[derive(Debug, Default)]
pub struct OtlpTracing {
    service_name: Option<String>,
    transport: Option<Transport>,
    endpoint: Option<String>,
    timeout: Option<Duration>,
    max_queue_size: Option<usize>,
    scheduled_delay: Option<Duration>,
    install_global: Option<bool>,
}

impl OtlpTracing {
    /// Starts with everything from the environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// `service.name` of the resource (else `OTEL_SERVICE_NAME`).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// The transport (else `OTEL_EXPORTER_OTLP_PROTOCOL`, default HTTP/protobuf).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The collector endpoint (else `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Timeout of one export (else `OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Most spans waiting for export; more are dropped and counted
    /// (default 2,048, `OTEL_BSP_MAX_QUEUE_SIZE`).
    pub fn max_queue_size(mut self, size: usize) -> Self {
        self.max_queue_size = Some(size);
        self
    }

    /// Longest wait before a partial batch is exported (default 5 s,
    /// `OTEL_BSP_SCHEDULE_DELAY`).
    pub fn scheduled_delay(mut self, delay: Duration) -> Self {
        self.scheduled_delay = Some(delay);
        self
    }

    /// Whether to install the provider and propagator globally (default true).
    pub fn install_global(mut self, install: bool) -> Self {
        self.install_global = Some(install);
        self
    }

    /// Builds the OTLP exporter and installs the pipeline.
    pub fn install(self) -> Result<TracingGuard, Error> {
        let exporter = self.exporter()?;
        Ok(self.install_with_exporter(exporter))
    }

    /// Installs the pipeline with another exporter (stdout, in-memory...),
    /// keeping the bounded batch queue and the resource settings.
    pub fn install_with_exporter(self, exporter: impl SpanExporter + 'static) -> TracingGuard {
        let mut limits = BatchLimits::from_env();
        if let Some(size) = self.max_queue_size {
            limits.max_queue_size = size;
        }
        if let Some(delay) = self.scheduled_delay {
            limits.scheduled_delay = delay;
        }
        let processor = BoundedBatchProcessor::new(exporter, limits);
        let stats = processor.stats();
        let mut resource = Resource::builder();
        if let Some(name) = &self.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build())
            .build();
        if self.install_global.unwrap_or(true) {
            opentelemetry::global::set_tracer_provider(provider.clone());
            opentelemetry::global::set_text_map_propagator(PropagatorFromEnv(
                crate::propagator_from_env(),
            ));
        }
        TracingGuard {
            provider: Some(provider),
            stats,
        }
    }

    fn exporter(&self) -> Result<opentelemetry_otlp::SpanExporter, Error> {
        use opentelemetry_otlp::SpanExporter as Otlp;
        let grpc = match self.transport {
            Some(transport) => transport == Transport::Grpc,
            None => env_says_grpc(),
        };
        // Unset endpoint and timeout fall back to the OTEL_* variables.
        let exporter = if grpc {
            let mut builder = Otlp::builder().with_tonic().with_protocol(Protocol::Grpc);
            if let Some(endpoint) = &self.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            if let Some(timeout) = self.timeout {
                builder = builder.with_timeout(timeout);
            }
            builder.build()?
        } else {
            let mut builder = Otlp::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            if let Some(endpoint) = &self.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            if let Some(timeout) = self.timeout {
                builder = builder.with_timeout(timeout);
            }
            builder.build()?
        };
        Ok(exporter)
    }
}

fn env_says_grpc() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok())
    .is_some_and(|protocol| protocol.trim() == "grpc")
}

/// Adapts the boxed propagator for the global setter.
struct PropagatorFromEnv(Box<dyn opentelemetry::propagation::TextMapPropagator + Send + Sync>);

impl std::fmt::Debug for PropagatorFromEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PropagatorFromEnv")
    }
}

impl opentelemetry::propagation::TextMapPropagator for PropagatorFromEnv {
    fn inject_context(
        &self,
        cx: &opentelemetry::Context,
        injector: &mut dyn opentelemetry::propagation::Injector,
    ) {
        self.0.inject_context(cx, injector);
    }

    fn extract_with_context(
        &self,
        cx: &opentelemetry::Context,
        extractor: &dyn opentelemetry::propagation::Extractor,
    ) -> opentelemetry::Context {
        self.0.extract_with_context(cx, extractor)
    }

    fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
        self.0.fields()
    }
}

/// Owns the tracer provider; [`shutdown`](Self::shutdown) flushes queued
/// spans and stops export. Dropping it does the same, logging failures.
///
/// Flushing waits for the export worker, and the gRPC exporter runs on the
/// Tokio runtime: on a current-thread runtime, shut down from
/// `tokio::task::spawn_blocking` so the runtime stays free to export.
#[derive(Debug)]
#[must_use = "dropping the guard shuts tracing down"]
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
    stats: Arc<ExportStats>,
}

impl TracingGuard {
    /// The provider, to build [`RpcTracing`](crate::RpcTracing) with
    /// [`tracer_provider`](crate::RpcTracingBuilder::tracer_provider) when
    /// not installed globally.
    #[must_use]
    pub fn provider(&self) -> &SdkTracerProvider {
        self.provider.as_ref().expect("present until shutdown")
    }

    /// Spans ended, exported, failed and dropped so far (clone the `Arc`
    /// to expose them, e.g. with `prometheus::ExportStatsCollector`).
    #[must_use]
    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }

    /// Exports what is queued, then shuts the provider down.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> Result<(), Error> {
        let Some(provider) = self.provider.take() else {
            return Ok(());
        };
        let flushed = provider.force_flush();
        let shut = provider.shutdown();
        flushed?;
        shut?;
        Ok(())
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown_inner() {
            tracing::warn!(%error, "tracer provider shutdown failed; queued spans may be lost");
        }
    }
}
