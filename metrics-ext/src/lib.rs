//! Prometheus RPC metrics for Volo and tower/tonic services, named after the
//! OpenTelemetry semantic conventions (v1.44.0 by default, see
//! [`Conventions`]), with an optional OpenTelemetry mirror (feature `otel`)
//! that uses the same names.
//!
//! One [`RpcMetrics`] per process holds the instruments; framework layers
//! record every call into it, and one [`MetricsEndpoint`] exposes it.
//!
//! # Families, current conventions (the default)
//!
//! The Prometheus families are what the OpenTelemetry-to-Prometheus
//! translation makes of the OpenTelemetry instruments
//! ([`rpc_ext_core::semconv::metric`]): dots become underscores, the unit a
//! suffix. An empty label value is an attribute the call does not have.
//!
//! | family | type | labels |
//! |---|---|---|
//! | `rpc_server_call_duration_seconds` | histogram | `rpc_system_name`, `rpc_method`, `rpc_response_status_code`, `error_type` |
//! | `rpc_client_call_duration_seconds` | histogram | same, plus `server_address`, `server_port` |
//! | `rpc_{server,client}_active_requests` | gauge | `rpc_system_name`, `rpc_method` |
//! | `rpc_{server,client}_{request,response}_size_bytes` | histogram | `rpc_system_name`, `rpc_method` |
//! | `http_server_request_duration_seconds` | histogram | `http_request_method`, `http_route`, `http_response_status_code`, `url_scheme`, `error_type` |
//! | `http_server_active_requests` | gauge | `http_request_method`, `url_scheme` |
//! | `http_client_request_duration_seconds` | histogram | `http_request_method`, `server_address`, `server_port`, `http_response_status_code`, `error_type` |
//!
//! - `rpc_system_name`: `grpc` or `apache_thrift`; `rpc_method` the full
//!   method, `echo.Echo/Say` (Thrift: `Service/method`).
//! - `rpc_response_status_code`: the gRPC status name (`OK`,
//!   `DEADLINE_EXCEEDED`); empty for Thrift, which has no status codes.
//! - `error_type`: empty unless the call failed. gRPC: the status name (on
//!   servers only UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
//!   UNAVAILABLE and DATA_LOSS count as failures, on clients every non-OK
//!   code); Thrift: the error kind ([`thrift`]); HTTP: the status code of a
//!   server's 5xx or a client's 4xx and 5xx; `transport` when no response
//!   came; `CANCELLED` (gRPC) or `cancelled` when the caller went away.
//! - There is no calls counter: the duration histogram's `_count` is the
//!   number of calls (`rate(rpc_server_call_duration_seconds_count[5m])`).
//! - Active requests and sizes are not in the conventions (the size
//!   metrics were deprecated in v1.38 without a replacement): they are this
//!   suite's additions, named as the translation would name the instruments
//!   `rpc.server.active_requests` (`{request}`) and `rpc.server.request.size`
//!   (`By`). HTTP calls have no size families and HTTP clients no in-flight
//!   gauge.
//! - `server_address`, `server_port` (clients): the target the client was
//!   configured with — the request URI's host and port on tower clients, the
//!   static callee address (else the callee's service name) on Volo clients;
//!   the layers' `server_address(name)` option overrides it.
//! - `http_route`: the route template, `_OTHER` when no route matched (a
//!   bounded value, and a visible one). `http_request_method`: a standard
//!   method or `_OTHER`.
//!
//! # Old and dup
//!
//! [`Conventions::Old`] (`OTEL_SEMCONV_STABILITY_OPT_IN=rpc/old`) records
//! the families of this crate before v1.44 naming:
//! `rpc_{server,client}_duration_seconds` and `rpc_{server,client}_requests_total`
//! by `rpc_system`, `rpc_service`, `rpc_method` (short), `status_code` (the
//! gRPC code number, the HTTP status or the Thrift outcome) and, client
//! side, `peer_service`; `rpc_{server,client}_active_requests` and
//! `rpc_{server,client}_{request,response}_size_bytes` by the same minus
//! `status_code`. HTTP calls are RPC calls there, `rpc_system="http"`,
//! `rpc_service` the route. [`Conventions::Dup`] (`rpc/dup`) registers both
//! sets, except the old in-flight and size families: they have the names
//! of the current ones with other labels, so only the current ones exist.
//!
//! # Bounded
//!
//! Names read from the wire become series only when a call to them
//! succeeds ([`RpcMetrics::start_untrusted_call`]); methods beyond the
//! per-side cap ([`RpcMetricsBuilder::max_methods`]) are recorded under
//! [`OTHER`]; HTTP methods are normalized and raw paths never used; so
//! clients cannot grow the series count.
//!
//! # Registry health
//!
//! With the `registry-health` feature, `RegistryHealthCollector` exports
//! the health of rpc-ext-registry's registrations and resolver
//! subscriptions (`rpc_registry_*` families) into the same registry, read
//! at each scrape.
//!
//! # Exemplars
//!
//! The duration histograms' buckets carry exemplars of the calls whose
//! OpenTelemetry span is sampled, with the span's `trace_id` and `span_id`,
//! in the OpenMetrics exposition ([`encode_openmetrics`], and
//! [`MetricsEndpoint`], which serves OpenMetrics to Prometheus): each
//! bucket of each series shows the first sampled call since the last
//! OpenMetrics scrape (Prometheus reads one exemplar per bucket per
//! scrape), so a busy series writes its exemplars once per scrape and its
//! other calls only compare two numbers. Prometheus keeps them with
//! `--enable-feature=exemplar-storage`, and Grafana links them to the
//! trace. The Prometheus text format has no exemplars and is unchanged.
//! On by default; [`RpcMetricsBuilder::exemplars`] turns them off.
//!
//! The span is read from the current OpenTelemetry context (feature
//! `exemplars`, on by default: the `opentelemetry` API crate only, no
//! rpc-ext-tracing needed) when the call **starts**. With rpc-ext-tracing,
//! its layer must be **outside** this crate's, so that its span is current
//! when this layer starts the call:
//!
//! - tower: `ServiceBuilder::new().layer(tracing).layer(metrics)` (the
//!   first layer is the outer one); `tonic::transport::Server::builder()`
//!   `.layer(tracing).layer(metrics)` likewise;
//! - Volo gRPC and Thrift servers: `.layer_front(metrics).layer_front(tracing)`
//!   (the last `layer_front` is the outermost); Volo HTTP servers:
//!   `.layer(tracing).layer(metrics)`; Volo clients:
//!   `.layer_outer(tracing).layer_outer(metrics)`.
//!
//! The other way round, a server call has no span yet when it starts, so it
//! gets no exemplar, and a client call sees the caller's span (the right
//! trace, but its span id is the caller's, not the client span's). Any
//! other tracing that makes an OpenTelemetry span current (of the
//! `opentelemetry` 0.33 this crate reads) works the same way.
//!
//! ```
//! use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
//! use rpc_ext_metrics::{Call, Conventions, GrpcCode, RpcMetrics, RpcSystem, Side};
//!
//! let metrics = RpcMetrics::builder().conventions(Conventions::Current).build().unwrap();
//! // What a tracing layer outside does: a sampled span is current.
//! let span = SpanContext::new(
//!     TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
//!     SpanId::from_hex("00f067aa0ba902b7").unwrap(),
//!     TraceFlags::SAMPLED,
//!     false,
//!     TraceState::default(),
//! );
//! let _in_span = opentelemetry::Context::current().with_remote_span_context(span).attach();
//! let call = metrics.start_call(Call::rpc(Side::Server, RpcSystem::Grpc, "echo.Echo", "Say"));
//! call.finish(GrpcCode::OK, None);
//!
//! let text = rpc_ext_metrics::encode_openmetrics(metrics.registry()).unwrap();
//! let bucket = text.lines().find(|line| line.contains(" # {")).unwrap();
//! assert!(bucket.starts_with("rpc_server_call_duration_seconds_bucket{"), "{bucket}");
//! assert!(bucket.contains(r#" # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736",span_id="00f067aa0ba902b7"} "#));
//! // The Prometheus text format has none.
//! assert!(!rpc_ext_metrics::encode_text(metrics.registry()).unwrap().contains("trace_id"));
//! ```
//!
//! The slots cost nothing until a series sees its first sampled call; then
//! 56 bytes per bucket (18 buckets by default: 1,008 bytes per duration
//! series), made once. Recording stays lock-free and allocation-free.
//!
//! With your own registry ([`RpcMetricsBuilder::registry`]), serve
//! [`encode_openmetrics`] of it to OpenMetrics scrapers: it finds the
//! exemplars of the RPC families the registry holds (the `prometheus`
//! crate's `TextEncoder` writes the text format, which has none).
//!
//! # Left out on request
//!
//! gRPC health checks ([`RpcMetricsBuilder::skip_health_checks`]) and
//! listed HTTP server routes ([`RpcMetricsBuilder::skip_http_routes`])
//! record nothing when asked; by default every call is recorded.
//!
//! ```
//! use rpc_ext_metrics::{MetricsEndpoint, RpcMetrics};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), rpc_ext_metrics::Error> {
//! let metrics = RpcMetrics::builder().build()?;
//! // tower: ServiceBuilder::new().layer(rpc_ext_metrics::tower::MetricsLayer::server(&metrics))
//! // Volo:  Server::new().layer_front(rpc_ext_metrics::volo::MetricsLayer::server(&metrics))
//! let endpoint = MetricsEndpoint::serve("127.0.0.1:0".parse().unwrap(), metrics.registry().clone()).await?;
//! # drop(endpoint); Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod cache;
mod call;
mod endpoint;
mod error;
mod exemplar;
mod families;
mod labels;
mod metrics;
#[cfg(any(feature = "tower", feature = "volo"))]
mod observer;
#[cfg(feature = "otel")]
mod otel;
#[cfg(any(feature = "tower", feature = "volo"))]
mod raw_key;
mod recorder;
#[cfg(feature = "registry-health")]
mod registry_health;
mod skip;
pub mod status;
mod striped;

#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "volo")]
pub mod volo;

pub use call::{Call, Outcome};
pub use endpoint::{encode_openmetrics, encode_text, MetricsEndpoint, MetricsEndpointBuilder};
pub use error::Error;
pub use metrics::{RpcMetrics, RpcMetricsBuilder, DEFAULT_DURATION_BUCKETS, DEFAULT_SIZE_BUCKETS};
pub use prometheus;
pub use recorder::CallRecorder;
#[cfg(feature = "registry-health")]
pub use registry_health::RegistryHealthCollector;
pub use rpc_ext_core::semconv::{Conventions, SEMCONV_VERSION};
pub use rpc_ext_core::{thrift, GrpcCode, RpcSystem, Side, OTHER};

#[cfg(test)]
mod tests;
