//! The vocabulary and plumbing shared by `rpc-ext-metrics` and
//! `rpc-ext-tracing`, so that both speak of a call the same way: its
//! [`RpcSystem`], the [`Side`] observing it, its [`GrpcCode`], its
//! [`RouteTemplate`], the [`OTHER`] value for anything not known, the
//! Thrift error kinds ([`thrift`]), how it ended ([`CallEnd`]), and
//! whether a service mesh carries it ([`mesh`]).
//!
//! A gRPC call's status arrives in the response headers (trailers-only
//! responses) or in the trailers after the last message, so the outcome is
//! known only when the response body ends. [`ObservedFuture`] and
//! [`ObservedBody`] carry a [`CallObserver`] to that point and call it once.
//! Volo gRPC's layers see typed responses instead of bodies: the
//! `volo_grpc` module (feature `volo-grpc`) carries their end of the call to
//! the end of the stream.

#![forbid(unsafe_code)]

mod body;
mod classify;
mod future;
mod grpc_code;
pub mod mesh;
mod route;
pub mod semconv;
mod side;
mod target;
pub mod thrift;
#[cfg(feature = "volo-grpc")]
pub mod volo_grpc;

pub use body::ObservedBody;
pub use classify::{
    content_length, first_value, grpc_service_method, grpc_status_from_headers, is_grpc,
    parse_grpc_status, server_addr, SCANNED_HEADERS,
};
pub use future::ObservedFuture;
pub use grpc_code::GrpcCode;
pub use route::RouteTemplate;
pub use side::Side;
pub use target::ServerTarget;

pub use semconv::OTHER;

/// The RPC system of a call: the `rpc.system.name` attribute (and the
/// `rpc_system_name` label), shared by `rpc-ext-metrics` and `rpc-ext-tracing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcSystem {
    /// gRPC (Volo gRPC, tonic).
    Grpc,
    /// Apache Thrift (Volo Thrift).
    Thrift,
    /// Plain HTTP (axum, hyper, Volo HTTP).
    Http,
}

impl RpcSystem {
    /// The value per the OpenTelemetry conventions: `grpc`; `apache_thrift`
    /// (a custom value: the conventions list none for Thrift); `http` (only
    /// in the names before v1.38, where HTTP calls were RPC metrics).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RpcSystem::Grpc => "grpc",
            RpcSystem::Thrift => "apache_thrift",
            RpcSystem::Http => "http",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// A gRPC call with this status code.
    Grpc(GrpcCode),
    /// An HTTP call with this response status.
    Http(u16),
    /// No response (transport failure, service error) or a broken body.
    Failed,
}

/// Receives the outcome of one call. Dropping an observer that was never
/// told the end means the call was abandoned (cancelled).
pub trait CallObserver {
    /// Something held while the inner future or body is polled (a tracing
    /// context, a span guard); `()` for none.
    type Scope<'a>
    where
        Self: 'a;

    /// Entered around every poll of the wrapped future.
    fn scope(&self) -> Self::Scope<'_>;

    /// Entered around every poll of the response body; the same as
    /// [`scope`](Self::scope) unless the observer says otherwise.
    fn body_scope(&self) -> Self::Scope<'_> {
        self.scope()
    }

    /// The call ended; `response_bytes` counts the body's data frames.
    fn end(self, end: CallEnd, response_bytes: u64);

    /// Whether this call's end is wanted (`true` unless the observer says
    /// otherwise). If not, the wrappers keep only the scopes: no status is
    /// read and no byte counted, and the observer is dropped with the body,
    /// never told [`end`](Self::end) — for a call that records nothing
    /// (an unsampled span), which has no use for either.
    fn wants_end(&self) -> bool {
        true
    }
}
