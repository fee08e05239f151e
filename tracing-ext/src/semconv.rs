//! The attribute names spans carry: the suite's one list
//! ([`rpc_ext_core::semconv`], re-exported here whole, so that
//! `rpc_ext_tracing::semconv::attr::RPC_METHOD` and the rest name the same
//! strings the metrics use), the captured `x-request-id` of a server span
//! (spans only: a metric never carries it), and the two size attributes of
//! this crate's `record_sizes` option, which are not semantic conventions.
//!
//! Which RPC names a span carries is chosen by [`Conventions`]
//! (`RpcTracingBuilder::conventions`, by default
//! `OTEL_SEMCONV_STABILITY_OPT_IN`); HTTP names are the same in every mode.
//!
//! ```
//! use rpc_ext_tracing::semconv::{attr, old_attr, Conventions};
//!
//! assert_eq!(attr::RPC_SYSTEM_NAME, "rpc.system.name");
//! assert_eq!(old_attr::RPC_SYSTEM, "rpc.system");
//! assert_eq!(Conventions::default(), Conventions::Current);
//! ```

pub use rpc_ext_core::semconv::*;
pub use rpc_ext_core::{GrpcCode, RpcSystem, Side};

/// `rpc.request.size`: the request's size in bytes, where known. Not a
/// semantic-conventions attribute: this crate's `record_sizes` option.
pub const RPC_REQUEST_SIZE: &str = "rpc.request.size";
/// `rpc.response.size`: the response's size in bytes. Not a
/// semantic-conventions attribute: this crate's `record_sizes` option.
pub const RPC_RESPONSE_SIZE: &str = "rpc.response.size";

/// `http.request.header.x-request-id`: the request id an HTTP server call
/// came in with (a string array, as every captured header), recorded when
/// `x-request-id` is forwarded.
pub const HTTP_REQUEST_HEADER_X_REQUEST_ID: &str = "http.request.header.x-request-id";
/// `rpc.request.metadata.x-request-id`: the same for an RPC server call
/// (captured metadata, since v1.38).
pub const RPC_REQUEST_METADATA_X_REQUEST_ID: &str = "rpc.request.metadata.x-request-id";
/// `rpc.grpc.request.metadata.x-request-id`: the same for a gRPC server
/// call in the conventions up to v1.37.
pub const RPC_GRPC_REQUEST_METADATA_X_REQUEST_ID: &str = "rpc.grpc.request.metadata.x-request-id";
