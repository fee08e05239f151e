//! tower layers (feature `tower`) for tonic, axum and hyper, server and client.
//!
//! gRPC is recognised by its `content-type`; its labels come from the request
//! path (`/package.Service/Method`) and its status from `grpc-status` (in the
//! headers or the trailers). Other HTTP requests are labelled
//! `rpc_service = <route template>`, `rpc_method = <HTTP method>`, status the
//! HTTP status; the route template is the [`RouteTemplate`] extension, or
//! axum's `MatchedPath` (feature `axum`), else [`OVERFLOW_LABEL`] — never
//! the raw path.
//!
//! [`OVERFLOW_LABEL`]: crate::OVERFLOW_LABEL

mod layer;

pub use layer::{MetricsLayer, MetricsObserver, MetricsService, ResponseBody, ResponseFuture};

/// The route template of an HTTP request (`/users/{id}`), for routers other
/// than axum: insert it in the request extensions before this layer runs.
#[derive(Debug, Clone)]
pub struct RouteTemplate(pub std::borrow::Cow<'static, str>);
