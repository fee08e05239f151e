//! Status label values: the real code of each RPC system, as static strings so
//! that recording a call never allocates.

use std::sync::OnceLock;

/// The `status_code` label of a gRPC status code (`"0"` is OK, `"14"` UNAVAILABLE).
#[must_use]
pub fn grpc_status_label(code: i32) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| CODES.get(i))
        .copied()
        .unwrap_or("2") // UNKNOWN, as gRPC itself maps codes it does not know
}

/// gRPC UNIMPLEMENTED: the server does not know the method.
pub(crate) const GRPC_UNIMPLEMENTED: &str = "12";
/// gRPC CANCELLED: the caller went away before the answer.
pub(crate) const GRPC_CANCELLED: &str = "1";

/// The `status_code` label of an HTTP status (`"200"`, `"404"`...).
#[must_use]
pub fn http_status_label(status: u16) -> &'static str {
    static LABELS: OnceLock<Vec<&'static str>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| {
        // Built once: 500 tiny strings, leaked on purpose so labels are 'static.
        (100..600u16)
            .map(|s| &*Box::leak(s.to_string().into_boxed_str()))
            .collect()
    });
    status
        .checked_sub(100)
        .and_then(|i| labels.get(usize::from(i)))
        .copied()
        .unwrap_or("other")
}

/// HTTP has no status for a caller that went away; 499 is the usual stand-in.
pub(crate) const HTTP_CANCELLED: &str = "499";

/// Thrift outcomes: success, or the kind of exception.
pub mod thrift {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_numeric_codes() {
        assert_eq!(grpc_status_label(0), "0");
        assert_eq!(grpc_status_label(16), "16");
        assert_eq!(grpc_status_label(99), "2");
        assert_eq!(grpc_status_label(-1), "2");
        assert_eq!(http_status_label(200), "200");
        assert_eq!(http_status_label(599), "599");
        assert_eq!(http_status_label(42), "other");
        assert_eq!(http_status_label(600), "other");
    }
}
