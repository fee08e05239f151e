//! How a call ended, as a layer reports it, and which outcomes mark a
//! span as an error.

use std::{borrow::Cow, net::SocketAddr};

use rpc_ext_core::{GrpcCode, Side};

/// How a call ended.
///
/// ```
/// use rpc_ext_tracing::{semconv::GrpcCode, Outcome};
///
/// let outcome = Outcome {
///     grpc_code: Some(GrpcCode::DEADLINE_EXCEEDED),
///     ..Outcome::default()
/// };
/// # let _ = outcome;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The gRPC status code, for gRPC calls.
    pub grpc_code: Option<GrpcCode>,
    /// The HTTP status, for HTTP calls.
    pub http_status: Option<u16>,
    /// The error's type, when the call failed (a Thrift error kind,
    /// `transport` when no response came); it wins over the type the
    /// status gives.
    pub error_type: Option<Cow<'static, str>>,
    /// Response size in bytes, where known.
    pub response_size: Option<u64>,
    /// The address the call actually went to (`network.peer.*`), when only
    /// known once the call is done (a client's load balancer picks it);
    /// ignored when the call started with one.
    pub peer_addr: Option<SocketAddr>,
}

/// Whether a gRPC code marks the span as an error. Clients treat every
/// non-OK code as an error; servers only the codes that mean the server
/// failed ([`GrpcCode::is_server_error`]), per the semantic conventions.
///
/// ```
/// use rpc_ext_tracing::semconv::{GrpcCode, Side};
///
/// assert!(rpc_ext_tracing::grpc_code_is_error(GrpcCode::NOT_FOUND, Side::Client));
/// assert!(!rpc_ext_tracing::grpc_code_is_error(GrpcCode::NOT_FOUND, Side::Server));
/// ```
#[must_use]
pub fn grpc_code_is_error(code: GrpcCode, side: Side) -> bool {
    match side {
        Side::Server => code.is_server_error(),
        Side::Client => code != GrpcCode::OK,
    }
}

/// Whether an HTTP status marks the span as an error: 5xx on servers, 4xx
/// and 5xx on clients.
///
/// ```
/// use rpc_ext_tracing::semconv::Side;
///
/// assert!(rpc_ext_tracing::http_status_is_error(404, Side::Client));
/// assert!(!rpc_ext_tracing::http_status_is_error(404, Side::Server));
/// ```
#[must_use]
pub fn http_status_is_error(status: u16, side: Side) -> bool {
    match side {
        Side::Server => status >= 500,
        Side::Client => status >= 400,
    }
}
