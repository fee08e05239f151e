//! tower layers (feature `tower`) for tonic, axum and hyper, server and client.
//!
//! gRPC is recognised by its `content-type`; its labels come from the request
//! path (`/package.Service/Method`) and its status from `grpc-status` (in the
//! headers or the trailers). Other HTTP requests are labelled
//! `rpc_service = <route template>`, `rpc_method = <HTTP method>`, status the
//! HTTP status; the route template is the [`RouteTemplate`] extension, or
//! axum's `MatchedPath` (feature `axum`), else [`OTHER`] — never
//! the raw path.
//!
//! [`OTHER`]: crate::OTHER

mod layer;

pub use layer::{MetricsLayer, MetricsObserver, MetricsService, ResponseBody, ResponseFuture};
pub use rpc_ext_core::RouteTemplate;
