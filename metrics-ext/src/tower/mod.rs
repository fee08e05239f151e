//! tower layers (feature `tower`) for tonic, axum and hyper, server and client.
//!
//! gRPC is recognised by its `content-type`; its method comes from the
//! request path (`/package.Service/Method`, recorded as
//! `rpc_method="package.Service/Method"`) and its status from `grpc-status`
//! (in the headers or the trailers). Other HTTP requests go to the HTTP
//! families: `http_request_method` the normalized method, `http_route` the
//! route template — the [`RouteTemplate`] extension, or axum's
//! `MatchedPath` (feature `axum`), else [`OTHER`], never the raw path — and
//! `http_response_status_code` the status.
//!
//! [`OTHER`]: crate::OTHER

mod layer;

pub use layer::{MetricsLayer, MetricsObserver, MetricsService, ResponseBody, ResponseFuture};
pub use rpc_ext_core::RouteTemplate;

#[cfg(test)]
mod tests;
