//! [`FastraceSpanExporter`]: what fastrace-opentelemetry hands over, made
//! the spans the OpenTelemetry SDK path exports.

use std::{borrow::Cow, time::Duration};

use opentelemetry::{
    trace::{SpanContext, TraceFlags},
    KeyValue, Value,
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter},
    Resource,
};
use rpc_ext_core::semconv::{attr, old_attr};

use crate::fastrace_span::SPAN_NAME_PROPERTY;

/// The attributes this crate records as integers. fastrace properties are
/// text; these go out as integers again, as the SDK path sends them.
///
/// ```
/// assert!(rpc_ext_tracing::INT_ATTRIBUTES.contains(&"server.port"));
/// ```
pub const INT_ATTRIBUTES: &[&str] = &[
    attr::SERVER_PORT,
    attr::NETWORK_PEER_PORT,
    attr::HTTP_RESPONSE_STATUS_CODE,
    old_attr::RPC_GRPC_STATUS_CODE,
    crate::semconv::RPC_REQUEST_SIZE,
    crate::semconv::RPC_RESPONSE_SIZE,
];

/// The attributes that are one-string arrays on the SDK path (captured
/// headers and metadata: the `x-request-id`).
const ARRAY_ATTRIBUTES: &[&str] = &[
    crate::semconv::HTTP_REQUEST_HEADER_X_REQUEST_ID,
    crate::semconv::RPC_REQUEST_METADATA_X_REQUEST_ID,
    crate::semconv::RPC_GRPC_REQUEST_METADATA_X_REQUEST_ID,
];

/// Wraps the exporter fastrace-opentelemetry's `OpenTelemetryReporter`
/// exports to, so that the spans recorded on the fastrace path
/// ([`RpcTracingBuilder::fastrace`](crate::RpcTracingBuilder::fastrace))
/// arrive as the SDK path sends them:
///
/// - the attributes in [`INT_ATTRIBUTES`] are integers again (fastrace
///   properties are text);
/// - a span renamed after it started (a gRPC method settled when the call
///   ended, an HTTP route matched later) gets its new name, which travelled
///   as the [`SPAN_NAME_PROPERTY`](crate::SPAN_NAME_PROPERTY) property;
/// - spans are marked sampled (fastrace reports only sampled spans, but
///   fastrace-opentelemetry leaves the flag unset).
///
/// [`OtlpTracing::install_fastrace`](crate::otlp::OtlpTracing::install_fastrace)
/// sets this up; build it yourself to report to another exporter:
///
/// ```
/// use std::borrow::Cow;
/// use rpc_ext_tracing::{FastraceSpanExporter, INSTRUMENTATION_NAME};
///
/// let exporter = FastraceSpanExporter::new(opentelemetry_sdk::trace::InMemorySpanExporter::default());
/// let reporter = fastrace_opentelemetry::OpenTelemetryReporter::new(
///     exporter,
///     Cow::Owned(opentelemetry_sdk::Resource::builder().with_service_name("echo").build()),
///     opentelemetry::InstrumentationScope::builder(INSTRUMENTATION_NAME).build(),
/// );
/// fastrace::set_reporter(reporter, fastrace::collector::Config::default());
/// ```
#[derive(Debug)]
pub struct FastraceSpanExporter<E> {
    inner: E,
}

impl<E: SpanExporter> FastraceSpanExporter<E> {
    /// Wraps `inner`.
    pub fn new(inner: E) -> Self {
        Self { inner }
    }
}

/// Makes a span from fastrace what the SDK path would have sent.
pub(crate) fn restore(span: &mut SpanData) {
    let context = &span.span_context;
    span.span_context = SpanContext::new(
        context.trace_id(),
        context.span_id(),
        TraceFlags::SAMPLED,
        context.is_remote(),
        context.trace_state().clone(),
    );
    let mut renamed = None;
    span.attributes.retain_mut(|attribute| {
        let key = attribute.key.as_str();
        if key == SPAN_NAME_PROPERTY {
            renamed = Some(std::mem::replace(&mut attribute.value, Value::Bool(false)));
            return false;
        }
        if ARRAY_ATTRIBUTES.contains(&key) {
            if let Value::String(text) = &attribute.value {
                attribute.value = Value::Array(opentelemetry::Array::String(vec![text.clone()]));
            }
        } else if INT_ATTRIBUTES.contains(&key) {
            if let Value::String(text) = &attribute.value {
                if let Ok(number) = text.as_str().parse::<i64>() {
                    *attribute = KeyValue::new(attribute.key.clone(), number);
                }
            }
        }
        true
    });
    if let Some(Value::String(name)) = renamed {
        span.name = Cow::Owned(name.into());
    }
}

impl<E: SpanExporter> SpanExporter for FastraceSpanExporter<E> {
    fn export(
        &self,
        mut batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        batch.iter_mut().for_each(restore);
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(attributes: Vec<KeyValue>) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                7u128.into(),
                9u64.into(),
                TraceFlags::default(),
                false,
                Default::default(),
            ),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: opentelemetry::trace::SpanKind::Server,
            name: "grpc".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: opentelemetry::trace::Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn int_attributes_are_ints_again_and_the_span_is_renamed_and_sampled() {
        let mut data = span(vec![
            KeyValue::new(attr::SERVER_PORT, "50051"),
            KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, "404"),
            KeyValue::new(crate::semconv::RPC_RESPONSE_SIZE, "12"),
            KeyValue::new(attr::RPC_METHOD, "echo.Echo/Say"),
            // Not a number: left as it is rather than dropped.
            KeyValue::new(attr::NETWORK_PEER_PORT, "junk"),
            KeyValue::new(SPAN_NAME_PROPERTY, "echo.Echo/Say"),
        ]);
        restore(&mut data);
        assert_eq!(data.name, "echo.Echo/Say");
        assert!(data.span_context.is_sampled());
        let got: Vec<_> = data
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (attr::SERVER_PORT, Value::I64(50051)),
                (attr::HTTP_RESPONSE_STATUS_CODE, Value::I64(404)),
                (crate::semconv::RPC_RESPONSE_SIZE, Value::I64(12)),
                (attr::RPC_METHOD, Value::from("echo.Echo/Say")),
                (attr::NETWORK_PEER_PORT, Value::from("junk")),
            ]
        );
    }
}
