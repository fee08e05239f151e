//! tower layers (feature `tower`) for tonic, axum and hyper.
//!
//! Server side, the caller's context is read from the request headers and
//! the call runs inside the server span (OpenTelemetry context and
//! `tracing` span), so clients called from the handler continue the trace.
//! Client side, the span is a child of the current context and its context
//! is written into the request headers.
//!
//! gRPC requests (by `content-type`) get RPC spans named
//! `package.Service/Method` with the status from `grpc-status` (headers or
//! trailers); other requests get HTTP spans named `METHOD route`, the route
//! being the [`RouteTemplate`] extension, axum's `MatchedPath` (feature
//! `axum`, with the layer added by `Router::layer`), or `"_other"` — never
//! the raw path.

mod layer;

pub use layer::{ResponseBody, ResponseFuture, TracingLayer, TracingObserver, TracingService};
pub use rpc_ext_core::RouteTemplate;
