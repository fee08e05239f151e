//! OTLP/gRPC: tonic's trace and metrics services over any accepted stream
//! (plain TCP or TLS), gzip accepted.

use std::io;

use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        metrics_service_server::{MetricsService, MetricsServiceServer},
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    },
    trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};
use tokio_stream::Stream;
use tonic::{codec::CompressionEncoding, transport::server::Connected};

use super::{
    collector::{Arrival, Collector},
    Protocol,
};

/// Serves both OTLP services on `incoming` until `stop` turns true.
pub(super) fn spawn<S, IO>(incoming: S, collector: Collector, mut stop: watch::Receiver<bool>)
where
    S: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let server = tonic::transport::Server::builder()
        .add_service(
            TraceServiceServer::new(collector.clone()).accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            MetricsServiceServer::new(collector).accept_compressed(CompressionEncoding::Gzip),
        )
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    tokio::spawn(server);
}

/// Where the request came from: gRPC, compressed when its messages are
/// (`grpc-encoding: gzip`).
fn arrival<T>(request: &tonic::Request<T>) -> Arrival {
    let gzip = request
        .metadata()
        .get("grpc-encoding")
        .is_some_and(|encoding| encoding == "gzip");
    Arrival {
        protocol: Protocol::Grpc,
        gzip,
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let arrival = arrival(&request);
        self.export_traces(request.into_inner(), arrival)
            .await
            .map(tonic::Response::new)
            .map_err(|_| tonic::Status::unavailable("collector overloaded (test fault)"))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.export_metrics(request.into_inner()),
        ))
    }
}
