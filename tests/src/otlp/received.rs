//! What the receiver keeps: OTLP export requests flattened into one row per
//! span or data point, the shape tests assert on.

use std::collections::HashMap;

use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{any_value::Value, KeyValue},
    metrics::v1::{metric::Data, number_data_point},
};

/// One span as received, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the exporting resource.
    pub service: String,
    /// Span name.
    pub name: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id (empty for a root).
    pub parent_span_id: String,
    /// OTLP span kind (2 server, 3 client).
    pub kind: i32,
    /// Attributes, values rendered as strings.
    pub attributes: HashMap<String, String>,
    /// Each attribute's OTLP value type: `string`, `int`, `bool`,
    /// `double`, `array`, `kvlist`, `bytes`, or `none`.
    pub attribute_types: HashMap<String, &'static str>,
    /// OTLP status code (0 unset, 1 ok, 2 error).
    pub status_code: i32,
    /// When the span started, in nanoseconds since the Unix epoch.
    pub start_time_unix_nano: u64,
    /// When the span ended, in nanoseconds since the Unix epoch.
    pub end_time_unix_nano: u64,
}

impl ReceivedSpan {
    /// An attribute's value, or "" when absent.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }

    /// How long the span lasted: end minus start (zero if the end is
    /// before the start).
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(
            self.end_time_unix_nano
                .saturating_sub(self.start_time_unix_nano),
        )
    }
}

/// OTLP span kinds.
pub const SPAN_KIND_SERVER: i32 = 2;
/// OTLP span kinds.
pub const SPAN_KIND_CLIENT: i32 = 3;
/// OTLP status code for errors.
pub const STATUS_ERROR: i32 = 2;

/// One metric data point as received: histogram count or sum value.
#[derive(Debug, Clone)]
pub struct ReceivedPoint {
    /// Metric name.
    pub metric: String,
    /// Unit.
    pub unit: String,
    /// Attributes, values rendered as strings.
    pub attributes: HashMap<String, String>,
    /// Histogram count, or the sum/gauge value.
    pub value: f64,
}

/// Every span of a trace export, whatever transport carried it.
pub(super) fn spans(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .map(render)
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    attribute_types: span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), value_type(a)))
                        .collect(),
                    status_code: span.status.map_or(0, |s| s.code),
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                });
            }
        }
    }
    received
}

/// Every histogram, sum and gauge data point of a metrics export.
pub(super) fn points(request: ExportMetricsServiceRequest) -> Vec<ReceivedPoint> {
    let mut received = Vec::new();
    for resource in request.resource_metrics {
        for scope in resource.scope_metrics {
            for metric in scope.metrics {
                let mut push = |attrs: &[KeyValue], value: f64| {
                    received.push(ReceivedPoint {
                        metric: metric.name.clone(),
                        unit: metric.unit.clone(),
                        attributes: attributes(attrs),
                        value,
                    });
                };
                match &metric.data {
                    Some(Data::Histogram(h)) => {
                        for p in &h.data_points {
                            push(&p.attributes, p.count as f64);
                        }
                    }
                    Some(Data::Sum(sum)) => {
                        for p in &sum.data_points {
                            push(&p.attributes, number(p.value));
                        }
                    }
                    Some(Data::Gauge(gauge)) => {
                        for p in &gauge.data_points {
                            push(&p.attributes, number(p.value));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    received
}

fn number(value: Option<number_data_point::Value>) -> f64 {
    match value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => 0.0,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(attrs: &[KeyValue]) -> HashMap<String, String> {
    attrs.iter().map(|a| (a.key.clone(), render(a))).collect()
}

fn value_type(attribute: &KeyValue) -> &'static str {
    match attribute.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(_)) => "string",
        Some(Value::IntValue(_)) => "int",
        Some(Value::BoolValue(_)) => "bool",
        Some(Value::DoubleValue(_)) => "double",
        Some(Value::ArrayValue(_)) => "array",
        Some(Value::KvlistValue(_)) => "kvlist",
        Some(Value::BytesValue(_)) => "bytes",
        Some(_) | None => "none",
    }
}

fn render(attribute: &KeyValue) -> String {
    match attribute.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
