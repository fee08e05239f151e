//! The store both transports feed: one entry point per signal that counts
//! the request, applies the trace fault and keeps the flattened rows.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use opentelemetry_proto::tonic::collector::{
    metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse},
    trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
};

use super::{
    received::{self, ReceivedPoint, ReceivedSpan},
    Protocol,
};

/// How the receiver answers trace exports, to test exporters against a
/// sick collector. Applies to both transports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TraceFault {
    /// Accept and keep every span.
    #[default]
    Healthy,
    /// Answer `UNAVAILABLE` (gRPC) or 503 (HTTP) and keep nothing (a
    /// collector shedding load); the refused spans are still decoded and
    /// listed apart, in [`OtlpReceiver::refused_spans`](super::OtlpReceiver::refused_spans).
    Unavailable,
    /// Keep the spans, but answer only after this long.
    Slow(Duration),
}

/// How one decoded export request reached the receiver.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival {
    /// The transport that carried it.
    pub protocol: Protocol,
    /// Whether its body was gzip-compressed on the wire.
    pub gzip: bool,
}

/// A trace export refused by [`TraceFault::Unavailable`].
#[derive(Debug)]
pub(super) struct Unavailable;

/// Shared by every server of one receiver; cheap to clone.
#[derive(Default, Clone)]
pub(super) struct Collector {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Spans of the requests [`TraceFault::Unavailable`] refused, once per
    /// request that carried them (a retried request twice).
    refused: Mutex<Vec<ReceivedSpan>>,
    points: Mutex<Vec<ReceivedPoint>>,
    fault: Mutex<TraceFault>,
    /// Trace export requests, indexed by `Protocol as usize`.
    trace_requests: [AtomicU64; Protocol::ALL.len()],
    /// Trace export requests whose body was gzip'd.
    gzip_requests: AtomicU64,
}

impl Collector {
    /// Counts a trace export (and whether it came gzip'd), applies the
    /// fault, keeps its spans.
    pub async fn export_traces(
        &self,
        request: ExportTraceServiceRequest,
        arrival: Arrival,
    ) -> Result<ExportTraceServiceResponse, Unavailable> {
        self.state.trace_requests[arrival.protocol as usize].fetch_add(1, Ordering::Relaxed);
        if arrival.gzip {
            self.state.gzip_requests.fetch_add(1, Ordering::Relaxed);
        }
        let fault = *self.state.fault.lock().unwrap();
        match fault {
            TraceFault::Healthy => {}
            TraceFault::Unavailable => {
                let spans = received::spans(request);
                self.state.refused.lock().unwrap().extend(spans);
                return Err(Unavailable);
            }
            TraceFault::Slow(delay) => tokio::time::sleep(delay).await,
        }
        let spans = received::spans(request);
        self.state.spans.lock().unwrap().extend(spans);
        Ok(ExportTraceServiceResponse {
            partial_success: None,
        })
    }

    /// Keeps a metrics export's data points.
    pub fn export_metrics(
        &self,
        request: ExportMetricsServiceRequest,
    ) -> ExportMetricsServiceResponse {
        let points = received::points(request);
        self.state.points.lock().unwrap().extend(points);
        ExportMetricsServiceResponse {
            partial_success: None,
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state.spans.lock().unwrap().clone()
    }

    pub fn points(&self) -> Vec<ReceivedPoint> {
        self.state.points.lock().unwrap().clone()
    }

    pub fn refused_spans(&self) -> Vec<ReceivedSpan> {
        self.state.refused.lock().unwrap().clone()
    }

    pub fn set_trace_fault(&self, fault: TraceFault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    pub fn trace_requests(&self, protocol: Protocol) -> u64 {
        self.state.trace_requests[protocol as usize].load(Ordering::Relaxed)
    }

    pub fn gzip_requests(&self) -> u64 {
        self.state.gzip_requests.load(Ordering::Relaxed)
    }
}
