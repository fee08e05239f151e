//! HTTP status label values, as static strings so that recording a call
//! never allocates. gRPC codes are labelled by [`GrpcCode::name`] (and, in
//! the old names, [`GrpcCode::as_label`]) and Thrift outcomes by the
//! [`thrift`] kinds.
//!
//! [`GrpcCode::name`]: crate::GrpcCode::name
//! [`GrpcCode::as_label`]: crate::GrpcCode::as_label
//! [`thrift`]: crate::thrift

use std::sync::OnceLock;

/// The `http_response_status_code` label (and the old `status_code`
/// label) of an HTTP status: `"200"`, `"404"`...; `"other"` outside
/// 100–599.
///
/// ```
/// assert_eq!(rpc_ext_metrics::status::http_status_label(503), "503");
/// ```
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_numeric_statuses() {
        assert_eq!(http_status_label(200), "200");
        assert_eq!(http_status_label(599), "599");
        assert_eq!(http_status_label(42), "other");
        assert_eq!(http_status_label(600), "other");
    }
}
