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
mod families;
mod labels;
mod metrics;
#[cfg(any(feature = "tower", feature = "volo"))]
mod observer;
#[cfg(feature = "otel")]
mod otel;
mod recorder;
#[cfg(feature = "registry-health")]
mod registry_health;
mod skip;
pub mod status;

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
