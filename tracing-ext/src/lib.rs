//! OpenTelemetry tracing of every RPC for Volo and tower/tonic services.
//!
//! - One span per call, server and client side, named and attributed per the
//!   OpenTelemetry semantic conventions
//!   ([`semconv::SEMCONV_VERSION`]): an RPC span is named by its full
//!   method (`echo.Echo/Say`) and carries `rpc.system.name`, `rpc.method`,
//!   `rpc.response.status_code` (the gRPC status name), `server.*`,
//!   `network.peer.*` and `error.type`; an HTTP span is named
//!   `GET /users/{id}` (by the route template, never the raw path) and
//!   carries `http.*` and `url.*`. The names before v1.38 (`rpc.system`,
//!   `rpc.service`, `rpc.grpc.status_code`) are one option away
//!   ([`RpcTracingBuilder::conventions`], or
//!   `OTEL_SEMCONV_STABILITY_OPT_IN=rpc/old` / `rpc/dup`).
//! - Method names from the network never become span names unchecked: a
//!   server names a method once it is known to serve it, from a bounded
//!   set ([`RpcTracingBuilder::recognized_methods`],
//!   [`RpcTracingBuilder::max_methods`]); anything else is `_OTHER`.
//! - gRPC health checks are left out by default
//!   ([`RpcTracingBuilder::trace_health_checks`]), and so are HTTP routes
//!   listed in [`RpcTracingBuilder::skip_http_routes`].
//! - W3C `traceparent`/`tracestate` and baggage carried in gRPC metadata and
//!   HTTP headers (and B3 with feature `b3`); junk or oversize headers start
//!   a new trace, never an error.
//! - In mesh mode (or by option), the `x-request-id` a server call came in
//!   with is forwarded on every call made while serving it
//!   ([`RpcTracingBuilder::forward_request_id`], [`RequestId`]).
//! - Each call also runs in a `tracing` span with `trace_id` and `span_id`
//!   fields, so log lines inside a call carry them.
//! - [`otlp::OtlpTracing`] (feature `otlp`) sets up OTLP export in one call.
//! - With feature `fastrace`, [`RpcTracingBuilder::fastrace`] records the
//!   same spans with [fastrace](https://docs.rs/fastrace) instead of the
//!   OpenTelemetry SDK, at a fraction of the cost, in one trace with the
//!   application's own fastrace spans.
//!
//! ```
//! use rpc_ext_tracing::RpcTracing;
//!
//! let tracing = RpcTracing::builder().build();
//! // tower: tonic::transport::Server::builder().layer(rpc_ext_tracing::tower::TracingLayer::server(&tracing))
//! // Volo:  volo_grpc::server::Server::new().layer_front(rpc_ext_tracing::volo::GrpcTracingLayer::server(&tracing))
//! # let _ = tracing;
//! ```

#![forbid(unsafe_code)]

mod active;
mod address;
mod attributes;
mod builder;
mod call;
#[cfg(test)]
mod conventions_tests;
#[cfg(feature = "fastrace")]
mod fastrace_export;
#[cfg(feature = "fastrace")]
mod fastrace_sampler;
#[cfg(feature = "fastrace")]
mod fastrace_span;
#[cfg(all(test, feature = "fastrace"))]
mod fastrace_tests;
mod info;
mod intern;
mod methods;
#[cfg(any(feature = "tower", feature = "volo"))]
mod observer;
mod outcome;
mod processor;
mod propagation;
mod recent;
mod request_id;
#[cfg(test)]
mod request_id_tests;
mod scope;
pub mod semconv;
#[cfg(test)]
mod testing;
mod w3c;

#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "prometheus")]
pub mod prometheus;
#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "volo")]
pub mod volo;

pub use active::ActiveCall;
pub use builder::RpcTracingBuilder;
pub use call::{CallFilter, ExtraAttributes, RpcTracing, SpanNameFormatter, INSTRUMENTATION_NAME};
#[cfg(feature = "fastrace")]
pub use fastrace_export::{FastraceSpanExporter, INT_ATTRIBUTES};
#[cfg(feature = "fastrace")]
pub use fastrace_sampler::FastraceSampler;
#[cfg(feature = "fastrace")]
pub use fastrace_span::SPAN_NAME_PROPERTY;
pub use info::{CallInfo, Host, UrlParts};
pub use methods::DEFAULT_MAX_METHODS;
pub use opentelemetry;
pub use outcome::{grpc_code_is_error, http_status_is_error, Outcome};
pub use processor::{BatchLimits, BoundedBatchProcessor, ExportStats};
pub use propagation::{
    propagator_from_env, HeaderExtractor, HeaderInjector, W3cPropagator, MAX_BAGGAGE_LEN,
    MAX_OTHER_LEN, MAX_TRACEPARENT_LEN, MAX_TRACESTATE_LEN, OTEL_PROPAGATORS,
};
pub use request_id::{RequestId, MAX_REQUEST_ID_LEN, X_REQUEST_ID};
pub use rpc_ext_core::mesh::MeshMode;
pub use scope::{CallScope, InCall};
pub use semconv::{GrpcCode, RpcSystem, Side, OTHER};
