//! tower layers (feature `tower`) for tonic, axum and hyper.
//!
//! Server side, the caller's context is read from the request headers and
//! the call runs inside the server span (OpenTelemetry context and
//! `tracing` span), so clients called from the handler continue the trace.
//! Client side, the span is a child of the current context and its context
//! is written into the request headers.
//!
//! gRPC requests (by `content-type`) get RPC spans named by the full method
//! (`echo.Echo/Say`) with the status from `grpc-status` (headers or
//! trailers); a server names a method the first time only once the call
//! showed it serves it (see
//! [`RpcTracingBuilder::recognized_methods`](crate::RpcTracingBuilder::recognized_methods)).
//! Other requests get HTTP spans: on servers `GET /users/{id}` by the route
//! being the [`RouteTemplate`] extension or axum's `MatchedPath` (feature
//! `axum`, with the layer added by `Router::layer`), `GET` when no route
//! matched — never the raw path, which goes in `url.path`; on clients
//! the method alone, with `url.full`. `server.address` and `server.port`
//! come from the URI authority (clients) or `:authority`/`Host` (servers),
//! whatever the host.

mod layer;

pub use layer::{ResponseBody, ResponseFuture, TracingLayer, TracingObserver, TracingService};
pub use rpc_ext_core::RouteTemplate;

#[cfg(test)]
mod tests;
