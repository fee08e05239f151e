//! OpenTelemetry semantic conventions for RPC (and HTTP) spans: attribute
//! names and how an outcome maps to the span status.

/// `rpc.system`
pub const RPC_SYSTEM: &str = "rpc.system";
/// `rpc.service`
pub const RPC_SERVICE: &str = "rpc.service";
/// `rpc.method`
pub const RPC_METHOD: &str = "rpc.method";
/// `rpc.grpc.status_code`
pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
/// `server.address`
pub const SERVER_ADDRESS: &str = "server.address";
/// `server.port`
pub const SERVER_PORT: &str = "server.port";
/// `network.peer.address`
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
/// `network.peer.port`
pub const NETWORK_PEER_PORT: &str = "network.peer.port";
/// `error.type`
pub const ERROR_TYPE: &str = "error.type";
/// `http.request.method`
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
/// `http.route`
pub const HTTP_ROUTE: &str = "http.route";
/// `http.response.status_code`
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
/// `rpc.request.size`: the request's size in bytes, where known (this
/// crate's `record_sizes` option; not a semantic-conventions attribute)
pub const RPC_REQUEST_SIZE: &str = "rpc.request.size";
/// `rpc.response.size`: the response's size in bytes (this crate's
/// `record_sizes` option; not a semantic-conventions attribute)
pub const RPC_RESPONSE_SIZE: &str = "rpc.response.size";

pub use rpc_ext_core::{GrpcCode, RpcSystem, Side};

/// How a call ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The gRPC status code, for gRPC calls.
    pub grpc_code: Option<GrpcCode>,
    /// The HTTP status, for HTTP calls.
    pub http_status: Option<u16>,
    /// The error's type, when the call failed (exception class, error kind).
    pub error_type: Option<std::borrow::Cow<'static, str>>,
    /// Response size in bytes, where known.
    pub response_size: Option<u64>,
}

/// Whether a gRPC code marks the span as an error. Clients treat every
/// non-OK code as an error; servers only the codes that mean the server
/// failed ([`GrpcCode::is_server_error`]), per the semantic conventions.
#[must_use]
pub fn grpc_code_is_error(code: GrpcCode, side: Side) -> bool {
    match side {
        Side::Server => code.is_server_error(),
        Side::Client => code != GrpcCode::OK,
    }
}

/// Whether an HTTP status marks the span as an error: 5xx on servers, 4xx
/// and 5xx on clients.
#[must_use]
pub fn http_status_is_error(status: u16, side: Side) -> bool {
    match side {
        Side::Server => status >= 500,
        Side::Client => status >= 400,
    }
}
