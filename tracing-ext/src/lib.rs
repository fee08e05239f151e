//! OpenTelemetry tracing of every RPC for Volo and tower/tonic services.
//!
//! - One span per call, server and client side, named and attributed per the
//!   OpenTelemetry semantic conventions for RPC (`rpc.system`,
//!   `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `server.*`,
//!   `network.peer.*`, `error.type`), status set from the outcome.
//! - W3C `traceparent`/`tracestate` and baggage carried in gRPC metadata and
//!   HTTP headers (and B3 with feature `b3`); junk or oversize headers start
//!   a new trace, never an error.
//! - Each call also runs in a `tracing` span with `trace_id` and `span_id`
//!   fields, so log lines inside a call carry them.
//! - [`otlp::OtlpTracing`] (feature `otlp`) sets up OTLP export in one call.
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

mod call;
mod intern;
mod processor;
mod propagation;
mod recent;
mod scope;
pub mod semconv;
mod w3c;

#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "prometheus")]
pub mod prometheus;
#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "volo")]
pub mod volo;

pub use call::{
    ActiveCall, CallFilter, CallInfo, ExtraAttributes, RpcTracing, RpcTracingBuilder,
    SpanNameFormatter, INSTRUMENTATION_NAME,
};
pub use opentelemetry;
pub use processor::{BatchLimits, BoundedBatchProcessor, ExportStats};
pub use propagation::{
    propagator_from_env, HeaderExtractor, HeaderInjector, W3cPropagator, MAX_BAGGAGE_LEN,
    MAX_OTHER_LEN, MAX_TRACEPARENT_LEN, MAX_TRACESTATE_LEN, OTEL_PROPAGATORS,
};
pub use scope::{CallScope, InCall};
pub use semconv::{Outcome, RpcSystem};
