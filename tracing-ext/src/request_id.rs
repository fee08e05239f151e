//! [`RequestId`]: the `x-request-id` a call came in with, carried to the
//! calls made while serving it.

use std::sync::Arc;

use opentelemetry::{Array, Context, StringValue, Value};

/// The header (gRPC metadata key, TTHeader string key) the id travels in.
pub const X_REQUEST_ID: &str = "x-request-id";

/// Longest request id accepted (Envoy's are 36-character UUIDs); a longer
/// one is ignored, not cut.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A request id: 1 to [`MAX_REQUEST_ID_LEN`] bytes of visible ASCII
/// (`!` to `~`, no spaces or control characters). Cheap to clone.
///
/// Inside a server call whose request carried a valid `x-request-id` (with
/// forwarding on), [`RequestId::current`] returns it:
///
/// ```
/// use std::collections::HashMap;
/// use rpc_ext_tracing::{CallInfo, RequestId, RpcTracing};
///
/// let tracing = RpcTracing::builder().forward_request_id(true).build();
/// let inbound = HashMap::from([("x-request-id".to_string(), "abc-123".to_string())]);
/// let call = tracing.start_server(&CallInfo::grpc("/echo.Echo/Say"), &inbound);
/// let seen = futures_executor::block_on(call.run(async { RequestId::current() }));
/// assert_eq!(seen.as_ref().map(RequestId::as_str), Some("abc-123"));
/// // Outside the call there is none.
/// assert!(RequestId::current().is_none());
/// ```
///
/// Envoy (and so Istio's sidecars) gives every HTTP and gRPC request an
/// `x-request-id` and tags its spans and access logs with it. Traces are
/// joined by the trace headers (`traceparent`, B3), not by this id; the id
/// lets one find a request's access-log lines across hops, and it stays
/// the same from hop to hop only if each service copies the id of the
/// request it serves onto the requests it makes. With forwarding on
/// ([`RpcTracingBuilder::forward_request_id`], on by default in mesh
/// mode), a server layer reads the inbound id into the call's
/// OpenTelemetry context and every client layer called inside that context
/// writes it on the outbound request.
///
/// Over Thrift, Istio sees plain TCP: its sidecar neither adds nor reads an
/// id there. Forwarding still carries an id a caller put in the TTHeader.
///
/// The id lives in the OpenTelemetry context, which a task spawned inside
/// a handler does not inherit. Carry the context over
/// ([`FutureExt::with_current_context`](opentelemetry::context::FutureExt::with_current_context))
/// for the id, and the trace, to reach the calls that task makes:
///
/// ```
/// use std::collections::HashMap;
/// use opentelemetry::context::FutureExt;
/// use rpc_ext_tracing::{CallInfo, RequestId, RpcTracing};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let tracing = RpcTracing::builder().forward_request_id(true).build();
/// let inbound = HashMap::from([("x-request-id".to_string(), "abc-123".to_string())]);
/// let call = tracing.start_server(&CallInfo::grpc("/echo.Echo/Say"), &inbound);
/// let (carried, lost) = call
///     .run(async {
///         let carried = tokio::spawn(async { RequestId::current() }.with_current_context());
///         let lost = tokio::spawn(async { RequestId::current() });
///         (carried.await.unwrap(), lost.await.unwrap())
///     })
///     .await;
/// assert_eq!(carried.as_ref().map(RequestId::as_str), Some("abc-123"));
/// assert_eq!(lost, None);
/// # }
/// ```
///
/// [`RpcTracingBuilder::forward_request_id`]: crate::RpcTracingBuilder::forward_request_id
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// `id` as a request id, or `None` if it is empty, longer than
    /// [`MAX_REQUEST_ID_LEN`], or holds anything but visible ASCII.
    ///
    /// ```
    /// use rpc_ext_tracing::RequestId;
    ///
    /// assert!(RequestId::parse("0b4f6c1e-4d8a-4a51-9d2f-3f1f2b7c9a10").is_some());
    /// assert!(RequestId::parse("").is_none());
    /// assert!(RequestId::parse("two words").is_none());
    /// assert!(RequestId::parse(&"x".repeat(129)).is_none());
    /// ```
    #[must_use]
    pub fn parse(id: &str) -> Option<Self> {
        is_valid(id).then(|| Self(Arc::from(id)))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The request id of the current OpenTelemetry context: inside a
    /// traced server call, the one its request carried (when forwarding is
    /// on and the id was valid).
    #[must_use]
    pub fn current() -> Option<Self> {
        Context::map_current(|cx| cx.get::<Self>().cloned())
    }

    /// The id as a span attribute value: captured headers and metadata are
    /// string arrays in the semantic conventions.
    pub(crate) fn attribute_value(&self) -> Value {
        Value::Array(Array::String(vec![StringValue::from(Arc::clone(&self.0))]))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Non-empty, short enough, and every byte visible ASCII.
fn is_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_is_an_id() {
        for good in [
            "abc-123",
            "x",
            "0b4f6c1e-4d8a-4a51-9d2f-3f1f2b7c9a10",
            "!~",
            &"a".repeat(MAX_REQUEST_ID_LEN),
        ] {
            assert_eq!(
                RequestId::parse(good).as_ref().map(RequestId::as_str),
                Some(good)
            );
        }
        for bad in [
            "",
            " ",
            "abc 123",
            "abc\t123",
            "abc\r\n123",
            "abc\0",
            "\u{7f}",
            "é",
            &"a".repeat(MAX_REQUEST_ID_LEN + 1),
            &"a".repeat(200),
        ] {
            assert_eq!(RequestId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn current_reads_the_attached_context() {
        assert_eq!(RequestId::current(), None);
        let id = RequestId::parse("abc-123").unwrap();
        let _guard = Context::current_with_value(id.clone()).attach();
        assert_eq!(RequestId::current(), Some(id));
    }
}
