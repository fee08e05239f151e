//! A stand-in for a service-mesh sidecar: an HTTP/2 reverse proxy that does
//! for tracing what Envoy does as an Istio sidecar, so that tests can put
//! one between a real client and a real server.
//!
//! It is not Envoy. What it models, per request:
//!
//! - **Forwarding**: h2c with prior knowledge on both sides, as gRPC uses.
//!   Request and response bodies stream frame by frame, response trailers
//!   (where gRPC puts its status) and trailers-only responses included. The
//!   `:authority` and every header pass on as they came, except the ones
//!   below.
//! - **`x-request-id`**: an inbound one is kept, as Envoy keeps it on
//!   requests it does not treat as external; otherwise a UUID v4 is generated,
//!   as Envoy's default request-id extension does. Either is sent upstream.
//! - **Tracing**: the sidecar starts its own span for the hop. It reads the
//!   caller's context from `traceparent` or, failing that, from B3 multi
//!   headers (`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`): the first
//!   valid one wins. It keeps the trace id (or starts a trace when no trace
//!   header came), generates a span id, and rewrites the headers of the
//!   [`TraceFormat`] it writes so that the upstream's parent is its span.
//!   Headers of the other format go on untouched, as with Envoy, whose
//!   tracer writes only its own format. Trace headers present but all
//!   malformed: no span and the headers go on untouched, which is what
//!   Envoy's tracers do (they start a null span), so the upstream decides.
//!   Sampling: the caller's decision; a trace the sidecar starts is sampled.
//! - **The record**: each hop (trace id, its span id, parent span id,
//!   `x-request-id`, `:path`, upstream HTTP status, `grpc-status`) is
//!   appended to [`Sidecar::hops`] once its response has ended, before the
//!   caller sees the end. The sidecar exports no spans: the hop list stands
//!   in for what Envoy would send to a collector.
//! - **Upstream unreachable**: a gRPC request gets a trailers-only
//!   `grpc-status: 14` (UNAVAILABLE), anything else a 503, as Envoy's local
//!   replies do.
//!
//! What it does not model: mTLS and certificates, retries, timeouts
//! (`grpc-timeout` is passed on, not enforced), load balancing and outlier
//! detection (one upstream address), route configuration and header
//! rewriting rules, HTTP/1 and protocol upgrades, `x-envoy-*` and
//! `x-forwarded-*` headers, access logs, stats, span export, random or
//! client sampling, the single `b3` header, `tracestate` edits, Envoy
//! packing the trace decision into the `x-request-id` UUID, and the split
//! of one mesh hop into an outbound and an inbound sidecar (one proxy here
//! records one span per hop).
//!
//! It never panics on what a client sends: junk trace headers are
//! malformed headers, nothing more.
//!
//! ```no_run
//! # async fn doc(upstream: std::net::SocketAddr) -> anyhow::Result<()> {
//! use tests::sidecar::{Sidecar, TraceFormat};
//!
//! let sidecar = Sidecar::start(upstream, TraceFormat::W3c).await?;
//! // Point the client at `sidecar.endpoint()`, make a call, then:
//! for hop in sidecar.hops() {
//!     println!("{} {:?} {}", hop.path, hop.span, hop.request_id);
//! }
//! # Ok(())
//! # }
//! ```

mod hop;
mod trace_headers;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{header::CONTENT_TYPE, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use tokio::{net::TcpListener, net::TcpStream, task::JoinHandle, task::JoinSet};

pub use hop::{Hop, HopSpan};
pub use trace_headers::TraceFormat;

use hop::{HopBody, HopLog};
use trace_headers::HopContext;

const REQUEST_ID: &str = "x-request-id";

/// A sidecar in front of one upstream address; stops when dropped.
#[derive(Debug)]
pub struct Sidecar {
    address: SocketAddr,
    log: HopLog,
    accept: JoinHandle<()>,
}

impl Sidecar {
    /// Listens on a free loopback port and forwards to `upstream`, writing
    /// trace headers in `writes`.
    pub async fn start(upstream: SocketAddr, writes: TraceFormat) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let log = HopLog::default();
        let forwarder = Forwarder {
            upstream,
            writes,
            log: log.clone(),
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(UpstreamConnector { upstream }),
        };
        let accept = tokio::spawn(accept_loop(listener, forwarder));
        Ok(Self {
            address,
            log,
            accept,
        })
    }

    /// `127.0.0.1:<port>` of the sidecar.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:<port>` of the sidecar.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every hop whose response has ended, in that order.
    pub fn hops(&self) -> Vec<Hop> {
        self.log.hops()
    }

    /// Hops not kept because the list was full.
    pub fn hops_dropped(&self) -> u64 {
        self.log.dropped()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: they end with it.
        self.accept.abort();
    }
}

/// The pause after a failed `accept`.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

async fn accept_loop(listener: TcpListener, forwarder: Forwarder) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors (EMFILE), say: accepting again
                    // at once would fail again and spin a core; a pause lets
                    // connections close first.
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(stream, forwarder.clone()));
            }
            // Reaps finished connections so the set stays as small as the
            // open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, forwarder: Forwarder) {
    let service = service_fn(move |request| {
        let forwarder = forwarder.clone();
        async move { Ok::<_, Infallible>(forwarder.forward(request).await) }
    });
    // A connection's errors (a client gone, a protocol error) end it alone.
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

#[derive(Clone)]
struct Forwarder {
    upstream: SocketAddr,
    writes: TraceFormat,
    log: HopLog,
    client: Client<UpstreamConnector, Incoming>,
}

impl Forwarder {
    async fn forward(&self, request: Request<Incoming>) -> Response<HopBody> {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();

        let inbound_id = parts.headers.get(REQUEST_ID).cloned();
        let generated = inbound_id.is_none();
        let request_id = inbound_id.unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("invalid-uuid"))
        });
        parts.headers.insert(REQUEST_ID, request_id.clone());
        let request_id = String::from_utf8_lossy(request_id.as_bytes()).into_owned();

        let context = HopContext::start(trace_headers::read(&parts.headers));
        if let Some(context) = &context {
            trace_headers::write(&mut parts.headers, self.writes, context);
        }
        let mut hop = Hop::new(context.as_ref(), request_id, generated, path);

        let is_grpc = parts
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        // The caller's authority stays: the connector ignores it and dials
        // the upstream.
        let authority = parts
            .uri
            .authority()
            .map_or_else(|| self.upstream.to_string(), ToString::to_string);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
        else {
            return self.local_reply(hop, is_grpc, StatusCode::BAD_REQUEST);
        };
        parts.uri = uri;
        parts.version = http::Version::HTTP_2;

        let response = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => response,
            Err(_) => return self.local_reply(hop, is_grpc, StatusCode::SERVICE_UNAVAILABLE),
        };
        let (parts, body) = response.into_parts();
        hop.status = Some(parts.status.as_u16());
        hop.note_grpc_status(&parts.headers);
        if body.is_end_stream() {
            // Trailers-only (or empty): nothing more will go by.
            self.log.record(hop);
            return Response::from_parts(parts, HopBody::empty());
        }
        Response::from_parts(parts, HopBody::recording(body, hop, self.log.clone()))
    }

    /// The sidecar's own answer: trailers-only UNAVAILABLE for gRPC,
    /// `status` for anything else.
    fn local_reply(&self, mut hop: Hop, is_grpc: bool, status: StatusCode) -> Response<HopBody> {
        let mut response = Response::new(HopBody::empty());
        if is_grpc {
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from_static("14"));
            headers.insert(
                "grpc-message",
                HeaderValue::from_static("sidecar: upstream unreachable"),
            );
            hop.grpc_status = Some("14".to_owned());
        } else {
            *response.status_mut() = status;
        }
        self.log.record(hop);
        response
    }
}

/// Dials the one upstream whatever the request's authority says.
#[derive(Clone)]
struct UpstreamConnector {
    upstream: SocketAddr,
}

impl tower::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let upstream = self.upstream;
        Box::pin(async move {
            let stream = TcpStream::connect(upstream).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}
