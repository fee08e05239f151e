//! A real OTLP collector in the test process: spans cross a real wire.
//!
//! One [`OtlpReceiver`] listens on two free loopback ports, OTLP/gRPC on one
//! and OTLP/HTTP (binary protobuf) on the other, plain or over TLS. Both
//! transports decode into the same store, so a test picks the transport with
//! [`Protocol`] and asserts on [`OtlpReceiver::spans`] the same way.
//!
//! - `received`: the flattened rows tests assert on, and the flattening.
//! - `collector`: the store, counters and trace fault both transports share.
//! - `grpc`, `http`: the two transports.
//! - `tls`: generated certificates and the TLS listener.

mod collector;
mod grpc;
mod http;
mod received;
#[cfg(test)]
mod tests;
mod tls;

use std::{fmt, net::SocketAddr, path::Path, time::Duration};

use tokio::{net::TcpListener, sync::watch};

pub use collector::TraceFault;
pub use received::{ReceivedPoint, ReceivedSpan, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR};

use collector::Collector;
use tls::ServerTls;

/// An OTLP transport, chosen by the test rather than by the code under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies.
    HttpProtobuf,
}

impl Protocol {
    /// Every transport, for tests that run once per protocol.
    pub const ALL: [Protocol; 2] = [Protocol::Grpc, Protocol::HttpProtobuf];

    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL` that selects this transport.
    pub fn env_value(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.env_value())
    }
}

/// An OTLP receiver for traces and metrics over gRPC and HTTP, on free
/// loopback ports; stops on drop.
pub struct OtlpReceiver {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    collector: Collector,
    /// Present when started with [`OtlpReceiver::start_tls`].
    tls: Option<ServerTls>,
    stop: watch::Sender<bool>,
}

impl OtlpReceiver {
    /// Starts the receiver, both transports in plain text.
    pub async fn start() -> anyhow::Result<Self> {
        let (grpc, http) = (bind().await?, bind().await?);
        let receiver = Self::new(&grpc, &http, None)?;
        let collector = &receiver.collector;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        grpc::spawn(incoming, collector.clone(), receiver.stop.subscribe());
        http::spawn(http, collector.clone(), receiver.stop.subscribe());
        Ok(receiver)
    }

    /// Starts the receiver with both transports over TLS, on a certificate
    /// for `127.0.0.1` and `localhost` signed by a CA generated for this
    /// receiver (see [`OtlpReceiver::ca_certificate_path`]). With
    /// `require_client_cert`, clients must present a certificate signed by
    /// that CA, such as [`OtlpReceiver::client_certificate_path`].
    pub async fn start_tls(require_client_cert: bool) -> anyhow::Result<Self> {
        let (grpc, http) = (bind().await?, bind().await?);
        let tls = ServerTls::generate(require_client_cert)?;
        let receiver = Self::new(&grpc, &http, Some(tls))?;
        let (collector, tls) = (&receiver.collector, receiver.tls()?);
        let grpc = tls.listen(grpc, b"h2", receiver.stop.subscribe())?;
        let http = tls.listen(http, b"http/1.1", receiver.stop.subscribe())?;
        grpc::spawn(
            grpc.into_stream(),
            collector.clone(),
            receiver.stop.subscribe(),
        );
        http::spawn(http, collector.clone(), receiver.stop.subscribe());
        Ok(receiver)
    }

    fn new(grpc: &TcpListener, http: &TcpListener, tls: Option<ServerTls>) -> anyhow::Result<Self> {
        Ok(Self {
            grpc_addr: grpc.local_addr()?,
            http_addr: http.local_addr()?,
            collector: Collector::default(),
            tls,
            stop: watch::channel(false).0,
        })
    }

    fn tls(&self) -> anyhow::Result<&ServerTls> {
        self.tls
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the OTLP receiver was started without TLS"))
    }

    /// The OTLP/gRPC endpoint, `http://127.0.0.1:<port>` (`https://` with
    /// TLS); same as `endpoint_for(Protocol::Grpc)`.
    pub fn endpoint(&self) -> String {
        self.endpoint_for(Protocol::Grpc)
    }

    /// The OTLP/HTTP base URL, `http://127.0.0.1:<port>` (`https://` with
    /// TLS), to which exporters append `/v1/traces` and `/v1/metrics`.
    ///
    /// As `OTEL_EXPORTER_OTLP_ENDPOINT` it is right as is; given to
    /// opentelemetry-otlp's `with_endpoint` (or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), which are used verbatim, it
    /// needs the `/v1/traces` suffix: the base URL itself answers 404.
    pub fn http_endpoint(&self) -> String {
        self.endpoint_for(Protocol::HttpProtobuf)
    }

    /// The endpoint for exporters speaking `protocol` (the value for
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint_for(&self, protocol: Protocol) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let addr = match protocol {
            Protocol::Grpc => self.grpc_addr,
            Protocol::HttpProtobuf => self.http_addr,
        };
        format!("{scheme}://{addr}")
    }

    /// Every span received so far, over either transport.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector.spans()
    }

    /// The spans of every trace export refused with
    /// [`TraceFault::Unavailable`], decoded like [`OtlpReceiver::spans`]:
    /// once per refused request, so a span an exporter sent again after a
    /// refusal is listed again (tell them apart by trace and span id).
    pub fn refused_spans(&self) -> Vec<ReceivedSpan> {
        self.collector.refused_spans()
    }

    /// Every metric data point received so far (each export appends).
    pub fn points(&self) -> Vec<ReceivedPoint> {
        self.collector.points()
    }

    /// Makes later trace exports fail or slow down (or heals them), on both
    /// transports.
    pub fn set_trace_fault(&self, fault: TraceFault) {
        self.collector.set_trace_fault(fault);
    }

    /// How many trace export requests arrived over either transport,
    /// including those a [`TraceFault`] refused (not counting bodies that
    /// did not decode).
    pub fn export_requests(&self) -> u64 {
        Protocol::ALL
            .iter()
            .map(|&p| self.collector.trace_requests(p))
            .sum()
    }

    /// How many trace export requests arrived over `protocol`.
    pub fn export_requests_over(&self, protocol: Protocol) -> u64 {
        self.collector.trace_requests(protocol)
    }

    /// How many of the [`OtlpReceiver::export_requests`] (trace exports,
    /// either transport) arrived gzip-compressed: `Content-Encoding: gzip`
    /// over HTTP, `grpc-encoding: gzip` over gRPC. Metrics exports are
    /// decompressed too, but not counted.
    pub fn gzip_requests(&self) -> u64 {
        self.collector.gzip_requests()
    }

    /// How many TLS handshakes failed or timed out, on either transport
    /// (a client without an accepted certificate, or speaking plain text);
    /// always 0 without TLS.
    pub fn tls_rejections(&self) -> u64 {
        self.tls.as_ref().map_or(0, ServerTls::rejections)
    }

    /// The PEM file of the CA that signed the receiver's certificate, for
    /// exporters to trust.
    ///
    /// # Panics
    /// When the receiver was not started with [`OtlpReceiver::start_tls`].
    pub fn ca_certificate_path(&self) -> &Path {
        &self.tls_files().ca
    }

    /// The PEM file of a client certificate signed by the receiver's CA.
    ///
    /// # Panics
    /// When the receiver was not started with [`OtlpReceiver::start_tls`].
    pub fn client_certificate_path(&self) -> &Path {
        &self.tls_files().client_cert
    }

    /// The PEM file (PKCS#8) of the key of
    /// [`OtlpReceiver::client_certificate_path`].
    ///
    /// # Panics
    /// When the receiver was not started with [`OtlpReceiver::start_tls`].
    pub fn client_key_path(&self) -> &Path {
        &self.tls_files().client_key
    }

    fn tls_files(&self) -> &tls::TlsFiles {
        match self.tls() {
            Ok(tls) => &tls.files,
            Err(e) => panic!("{e}"),
        }
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
        self.stop.send_replace(true);
    }
}

async fn bind() -> std::io::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").await
}
