//! How a Thrift call ended, in one vocabulary for metrics and spans; the
//! mapping of Volo Thrift's errors with feature `volo-thrift`.

/// The call returned normally.
pub const OK: &str = "ok";
/// A `TApplicationException` (unknown method, protocol error...).
pub const APPLICATION_EXCEPTION: &str = "application_exception";
/// A transport failure (connection lost, timeout).
pub const TRANSPORT_EXCEPTION: &str = "transport_exception";
/// A protocol (encoding) failure.
pub const PROTOCOL_EXCEPTION: &str = "protocol_exception";
/// A business error returned by the handler.
pub const BIZ_ERROR: &str = "biz_error";
/// Any other error.
pub const ERROR: &str = "error";
/// The caller went away before the answer.
pub const CANCELLED: &str = "cancelled";

/// The kind of a Volo Thrift error: the `status_code` metric label and the
/// span's `error.type`.
pub trait ThriftErrorKind {
    /// [`APPLICATION_EXCEPTION`], [`TRANSPORT_EXCEPTION`],
    /// [`PROTOCOL_EXCEPTION`] or [`BIZ_ERROR`].
    fn error_kind(&self) -> &'static str;
}

#[cfg(feature = "volo-thrift")]
impl ThriftErrorKind for volo_thrift::ServerError {
    fn error_kind(&self) -> &'static str {
        match self {
            volo_thrift::ServerError::Application(_) => APPLICATION_EXCEPTION,
            volo_thrift::ServerError::Biz(_) => BIZ_ERROR,
        }
    }
}

#[cfg(feature = "volo-thrift")]
impl ThriftErrorKind for volo_thrift::ClientError {
    fn error_kind(&self) -> &'static str {
        match self {
            volo_thrift::ClientError::Application(_) => APPLICATION_EXCEPTION,
            volo_thrift::ClientError::Transport(_) => TRANSPORT_EXCEPTION,
            volo_thrift::ClientError::Protocol(_) => PROTOCOL_EXCEPTION,
            volo_thrift::ClientError::Biz(_) => BIZ_ERROR,
        }
    }
}
