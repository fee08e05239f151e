//! A real OTLP/gRPC receiver in the test process: spans cross a real wire.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            metrics_service_server::{MetricsService, MetricsServiceServer},
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
        trace::v1::{
            trace_service_server::{TraceService, TraceServiceServer},
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        },
    },
    common::v1::{any_value::Value, AnyValue, KeyValue},
    metrics::v1::metric::Data,
};
use tokio::{net::TcpListener, sync::watch};

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
    /// OTLP status code (0 unset, 1 ok, 2 error).
    pub status_code: i32,
}

impl ReceivedSpan {
    /// An attribute's value, or "" when absent.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
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

/// How the receiver answers trace exports, to test exporters against a
/// sick collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TraceFault {
    /// Accept and keep every span.
    #[default]
    Healthy,
    /// Answer `UNAVAILABLE` and keep nothing (a collector shedding load).
    Unavailable,
    /// Keep the spans, but answer only after this long.
    Slow(Duration),
}

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    points: Arc<Mutex<Vec<ReceivedPoint>>>,
    requests: Arc<Mutex<u64>>,
    fault: Arc<Mutex<TraceFault>>,
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    let attributes = |attrs: &[KeyValue]| {
                        attrs.iter().map(|a| (a.key.clone(), render(a))).collect()
                    };
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
        self.points.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

fn number(value: Option<opentelemetry_proto::tonic::metrics::v1::number_data_point::Value>) -> f64 {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    match value {
        Some(Value::AsDouble(d)) => d,
        Some(Value::AsInt(i)) => i as f64,
        None => 0.0,
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        *self.requests.lock().unwrap() += 1;
        let fault = *self.fault.lock().unwrap();
        match fault {
            TraceFault::Healthy => {}
            TraceFault::Unavailable => {
                return Err(tonic::Status::unavailable(
                    "collector overloaded (test fault)",
                ))
            }
            TraceFault::Slow(delay) => tokio::time::sleep(delay).await,
        }
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
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
                        attributes: span
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), render(a)))
                            .collect(),
                        status_code: span.status.map_or(0, |s| s.code),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn render(attribute: &KeyValue) -> String {
    match attribute
        .value
        .as_ref()
        .and_then(|v: &AnyValue| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// An OTLP/gRPC trace receiver on a free loopback port; stops on drop.
pub struct OtlpReceiver {
    addr: SocketAddr,
    collector: Collector,
    stop: watch::Sender<bool>,
}

impl OtlpReceiver {
    /// Starts the receiver.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let collector = Collector::default();
        let (stop, mut stopped) = watch::channel(false);
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            );
        tokio::spawn(server);
        Ok(Self {
            addr,
            collector,
            stop,
        })
    }

    /// `http://127.0.0.1:<port>`, for OTLP/gRPC exporters.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector.spans.lock().unwrap().clone()
    }

    /// Every metric data point received so far (each export appends).
    pub fn points(&self) -> Vec<ReceivedPoint> {
        self.collector.points.lock().unwrap().clone()
    }

    /// Makes later trace exports fail or slow down (or heals them).
    pub fn set_trace_fault(&self, fault: TraceFault) {
        *self.collector.fault.lock().unwrap() = fault;
    }

    /// How many trace export requests arrived.
    pub fn export_requests(&self) -> u64 {
        *self.collector.requests.lock().unwrap()
    }

    /// Waits until `predicate` holds for the received spans.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        predicate: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedSpan>> {
        crate::eventually(timeout, what, || async {
            let spans = self.spans();
            predicate(&spans).then_some(spans)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}; received: {:#?}", self.spans()))
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
