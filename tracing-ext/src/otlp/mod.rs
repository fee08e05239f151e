//! One-call OTLP export set-up (feature `otlp`).

mod env;
#[cfg(feature = "fastrace")]
mod fastrace;
mod guard;
#[cfg(feature = "tls")]
mod tls;

use std::time::Duration;

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    trace::{Sampler, SdkTracerProvider, SpanExporter},
    Resource,
};

#[cfg(feature = "fastrace")]
pub use fastrace::FastraceGuard;
pub use guard::TracingGuard;

use crate::processor::{BatchLimits, BoundedBatchProcessor};
use env::ExporterKind;

/// What can go wrong setting up or shutting down export.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The exporter could not be built (bad endpoint, bad headers...).
    #[error("building the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// An environment variable asks for something this build cannot do.
    #[error("{variable}={value} is not supported (supported: {supported})")]
    Unsupported {
        /// The variable.
        variable: String,
        /// Its value.
        value: String,
        /// The values this build supports.
        supported: &'static str,
    },
    /// The TLS settings could not be used (unreadable or invalid PEM files,
    /// or TLS asked of a build without feature `tls`).
    #[error("OTLP TLS: {0}")]
    Tls(String),
    /// Shutting down the tracer provider failed, though no span was lost.
    #[error("shutting down the tracer provider: {0}")]
    Shutdown(#[from] opentelemetry_sdk::error::OTelSdkError),
    /// Spans still queued at shutdown could not be exported before the
    /// deadline (collector down, hung or refusing them).
    #[error("{lost} spans were not exported at shutdown: {cause}")]
    SpansLost {
        /// How many.
        lost: u64,
        /// Why, as the exporter or the deadline said.
        cause: String,
    },
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318), the
    /// specification's default.
    HttpProtobuf,
}

/// Sets up a tracer provider exporting over OTLP with a bounded batch queue,
/// installs it (and the propagators of `OTEL_PROPAGATORS`) globally, and
/// returns a guard whose shutdown flushes.
///
/// Everything left unset comes from the standard environment variables:
/// - `OTEL_SDK_DISABLED=true`: nothing is exported, and spans are only made
///   where a caller's sampled context has to be carried on;
/// - `OTEL_TRACES_EXPORTER`: `otlp` (default), `console` (stdout), `none`,
///   or a comma-separated list; unknown names are skipped with a warning;
/// - `OTEL_EXPORTER_OTLP_ENDPOINT` (and every setting below in its
///   `_TRACES_` form too), `_PROTOCOL` (`http/protobuf`, the default, or
///   `grpc`; `http/json` is refused with [`Error::Unsupported`]), `_HEADERS`,
///   `_TIMEOUT`, `_COMPRESSION` (`gzip`), and with feature `tls`
///   `_CERTIFICATE`, `_CLIENT_CERTIFICATE`, `_CLIENT_KEY`;
/// - `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
///   `OTEL_TRACES_SAMPLER` (+`_ARG`), `OTEL_BSP_MAX_QUEUE_SIZE`,
///   `_MAX_EXPORT_BATCH_SIZE`, `_SCHEDULE_DELAY`, `_EXPORT_TIMEOUT`.
///
/// When the collector is down, spans beyond the queue (default 2,048) are
/// dropped and counted ([`TracingGuard::stats`]): memory stays bounded and
/// requests are not slowed, since export runs on its own thread.
///
/// ```no_run
/// use std::time::Duration;
/// use rpc_ext_tracing::otlp::{OtlpTracing, Transport};
///
/// # #[tokio::main] async fn main() -> Result<(), rpc_ext_tracing::otlp::Error> {
/// let guard = OtlpTracing::new()
///     .service_name("echo-server")
///     .transport(Transport::Grpc)
///     .endpoint("http://127.0.0.1:4317")
///     .shutdown_timeout(Duration::from_secs(3))
///     .install()?;
/// // ... serve ...
/// guard.shutdown()?; // exports what is queued, within 3 s
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
    shutdown_timeout: Option<Duration>,
    install_global: Option<bool>,
}

/// The shutdown deadline when none is set: within a pod's default grace
/// period (30 s) with room for the application's own shutdown.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

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

    /// The collector endpoint (else `OTEL_EXPORTER_OTLP_ENDPOINT`). Like
    /// that variable, a base URL: for OTLP/HTTP, `/v1/traces` is appended
    /// when the URL has no path of its own.
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

    /// The one deadline of [`TracingGuard::shutdown`] (and of dropping the
    /// guard): flushing what is queued and stopping the exporter (default 5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }

    /// Whether to install the provider and propagator globally (default true).
    pub fn install_global(mut self, install: bool) -> Self {
        self.install_global = Some(install);
        self
    }

    /// Builds the exporters of `OTEL_TRACES_EXPORTER` (OTLP by default) and
    /// installs the pipeline.
    pub fn install(self) -> Result<TracingGuard, Error> {
        if env::sdk_disabled() {
            return Ok(self.install_disabled());
        }
        let processors = self.processors_from_env()?;
        Ok(self.install_processors(processors))
    }

    /// A bounded batch queue for each exporter `OTEL_TRACES_EXPORTER`
    /// names (OTLP by default).
    fn processors_from_env(&self) -> Result<Vec<BoundedBatchProcessor>, Error> {
        let limits = self.limits();
        let mut processors = Vec::new();
        for kind in env::exporters() {
            let processor = match kind {
                ExporterKind::Otlp => {
                    let settings = self.exporter_settings()?;
                    BoundedBatchProcessor::start(move || settings.build(), limits.clone())?
                }
                ExporterKind::Console => BoundedBatchProcessor::new(
                    opentelemetry_stdout::SpanExporter::default(),
                    limits.clone(),
                ),
            };
            processors.push(processor);
        }
        Ok(processors)
    }

    /// Installs the pipeline with another exporter (stdout, in-memory...),
    /// keeping the bounded batch queue and the resource settings
    /// (`OTEL_TRACES_EXPORTER` does not apply; `OTEL_SDK_DISABLED` does).
    pub fn install_with_exporter(self, exporter: impl SpanExporter + 'static) -> TracingGuard {
        if env::sdk_disabled() {
            return self.install_disabled();
        }
        let processor = BoundedBatchProcessor::new(exporter, self.limits());
        self.install_processors(vec![processor])
    }

    fn limits(&self) -> BatchLimits {
        let mut limits = BatchLimits::from_env();
        if let Some(size) = self.max_queue_size {
            limits.max_queue_size = size;
        }
        if let Some(delay) = self.scheduled_delay {
            limits.scheduled_delay = delay;
        }
        limits
    }

    fn install_disabled(self) -> TracingGuard {
        tracing::info!("OTEL_SDK_DISABLED=true: spans are not recorded or exported");
        // Unsampled roots cost nothing; a sampled caller's context is still
        // carried on to the calls this service makes.
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build();
        self.finish(provider, None)
    }

    /// The resource: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and
    /// the SDK's detectors, with the service name set here winning.
    fn resource(&self) -> Resource {
        let mut resource = Resource::builder();
        if let Some(name) = &self.service_name {
            resource = resource.with_service_name(name.clone());
        }
        resource.build()
    }

    fn install_processors(self, processors: Vec<BoundedBatchProcessor>) -> TracingGuard {
        let stats = processors.first().map(BoundedBatchProcessor::stats);
        let mut builder = SdkTracerProvider::builder().with_resource(self.resource());
        for processor in processors {
            builder = builder.with_span_processor(processor);
        }
        self.finish(builder.build(), stats)
    }

    fn finish(
        self,
        provider: SdkTracerProvider,
        stats: Option<std::sync::Arc<crate::ExportStats>>,
    ) -> TracingGuard {
        if self.install_global.unwrap_or(true) {
            opentelemetry::global::set_tracer_provider(provider.clone());
            opentelemetry::global::set_text_map_propagator(PropagatorFromEnv(
                crate::propagator_from_env(),
            ));
        }
        TracingGuard {
            provider: Some(provider),
            stats: stats.unwrap_or_default(),
            shutdown_timeout: self.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
        }
    }

    /// Everything the OTLP exporter needs, read now (on the caller's
    /// thread, so errors reach the caller) and built on the export thread.
    fn exporter_settings(&self) -> Result<ExporterSettings, Error> {
        let transport = match self.transport {
            Some(transport) => transport,
            None => env::transport()?,
        };
        let tls = env::TlsFiles::from_env()?;
        #[cfg(not(feature = "tls"))]
        {
            let endpoint = self.endpoint.clone().or_else(env::endpoint);
            if !tls.is_empty() || endpoint.is_some_and(|e| e.starts_with("https:")) {
                return Err(Error::Tls(
                    "an https endpoint or OTEL_EXPORTER_OTLP_CERTIFICATE needs rpc-ext-tracing's \
                     `tls` feature"
                        .into(),
                ));
            }
        }
        Ok(ExporterSettings {
            transport,
            endpoint: self.endpoint.clone(),
            timeout: self.timeout,
            tls,
        })
    }
}

/// The OTLP exporter's settings, moved to the export thread to be built
/// inside its runtime.
struct ExporterSettings {
    transport: Transport,
    endpoint: Option<String>,
    timeout: Option<Duration>,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls: env::TlsFiles,
}

impl ExporterSettings {
    fn build(self) -> Result<opentelemetry_otlp::SpanExporter, Error> {
        use opentelemetry_otlp::SpanExporter as Otlp;
        // Unset endpoint and timeout fall back to the OTEL_* variables.
        let exporter = match self.transport {
            Transport::Grpc => {
                let mut builder = Otlp::builder()
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc);
                if let Some(endpoint) = self.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(timeout) = self.timeout {
                    builder = builder.with_timeout(timeout);
                }
                #[cfg(feature = "tls")]
                if !self.tls.is_empty() {
                    use opentelemetry_otlp::WithTonicConfig;
                    builder = builder.with_tls_config(tls::grpc_config(&self.tls)?);
                }
                builder.build()?
            }
            Transport::HttpProtobuf => {
                let mut builder = Otlp::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                if let Some(endpoint) = self.endpoint {
                    builder = builder.with_endpoint(traces_url(endpoint));
                }
                if let Some(timeout) = self.timeout {
                    builder = builder.with_timeout(timeout);
                }
                use opentelemetry_otlp::WithHttpConfig;
                let timeout = self.timeout.unwrap_or_else(env::export_timeout);
                let client = reqwest::Client::builder().timeout(timeout);
                #[cfg(feature = "tls")]
                let client = tls::http_client(client, &self.tls)?;
                let client = client
                    .build()
                    .map_err(|error| Error::Tls(format!("building the HTTP client: {error}")))?;
                builder = builder.with_http_client(client);
                builder.build()?
            }
        };
        Ok(exporter)
    }
}

/// A base URL as `OTEL_EXPORTER_OTLP_ENDPOINT` gives it gets the traces
/// path, as the specification does for that variable; a URL with a path is
/// taken as it is (as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` would be).
fn traces_url(endpoint: String) -> String {
    let after_scheme = endpoint
        .split_once("://")
        .map_or(&*endpoint, |(_, rest)| rest);
    match after_scheme.find('/') {
        Some(slash) if after_scheme[slash..] != *"/" => endpoint,
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
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

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn a_base_url_gets_the_traces_path_and_a_full_one_is_kept() {
        for (given, used) in [
            ("http://c:4318", "http://c:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("https://c/v1/traces", "https://c/v1/traces"),
            ("http://c:4318/custom/path", "http://c:4318/custom/path"),
        ] {
            assert_eq!(traces_url(given.into()), used, "{given}");
        }
    }
}
