//! The `/metrics` endpoint: one per process, serving one registry.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::Error;

/// Encodes every metric of `registry` in the Prometheus text format.
///
/// Use it to serve metrics from your own HTTP server.
///
/// ```
/// let registry = prometheus::Registry::new();
/// let text = rpc_ext_metrics::encode_text(&registry).unwrap();
/// assert!(text.is_empty());
/// ```
pub fn encode_text(registry: &Registry) -> Result<String, Error> {
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buffer)?;
    String::from_utf8(buffer).map_err(|e| Error::Encode(e.to_string()))
}

/// Encodes every metric of `registry` in the OpenMetrics 1.0 text format
/// (what Prometheus asks for first): counters are announced without their
/// `_total` suffix and the exposition ends with `# EOF`.
///
/// ```
/// let metrics = rpc_ext_metrics::RpcMetrics::builder().build().unwrap();
/// metrics
///     .start_call(rpc_ext_metrics::Side::Server, rpc_ext_metrics::RpcSystem::Grpc, "s", "m", "")
///     .finish("0", None);
/// let text = rpc_ext_metrics::encode_openmetrics(metrics.registry()).unwrap();
/// assert!(text.contains("# TYPE rpc_server_requests counter\n"));
/// assert!(text.ends_with("# EOF\n"));
/// ```
pub fn encode_openmetrics(registry: &Registry) -> Result<String, Error> {
    let encoder = TextEncoder::new();
    let mut out = String::new();
    for family in registry.gather() {
        let mut text = String::new();
        encoder.encode_utf8(std::slice::from_ref(&family), &mut text)?;
        let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
        match family.name().strip_suffix("_total").filter(|_| counter) {
            // OpenMetrics names the counter family without the suffix its
            // samples carry.
            Some(base) => {
                for line in text.lines() {
                    for prefix in ["# HELP ", "# TYPE "] {
                        if let Some(rest) = line
                            .strip_prefix(prefix)
                            .and_then(|r| r.strip_prefix(family.name()))
                        {
                            out.push_str(prefix);
                            out.push_str(base);
                            out.push_str(rest);
                            out.push('\n');
                        }
                    }
                    if !line.starts_with('#') {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
            None => out.push_str(&text),
        }
    }
    out.push_str("# EOF\n");
    Ok(out)
}

const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An HTTP server answering `GET /metrics` with the registry's metrics, in
/// OpenMetrics when the scraper's `Accept` asks for it (Prometheus does),
/// else in the Prometheus text format 0.0.4. Stops when dropped.
///
/// ```
/// use rpc_ext_metrics::{MetricsEndpoint, RpcMetrics};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), rpc_ext_metrics::Error> {
/// let metrics = RpcMetrics::builder().build()?;
/// let endpoint = MetricsEndpoint::serve("127.0.0.1:0".parse().unwrap(), metrics.registry().clone()).await?;
/// println!("scrape http://{}/metrics", endpoint.local_addr());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MetricsEndpoint {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Binds `addr` and serves `registry` on `/metrics` in the background.
    pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, registry, stopped));
        Ok(Self {
            local_addr,
            stop,
            task: Some(task),
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting scrapes and waits for the listener to close.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    registry: Registry,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint accept failed");
                    continue;
                }
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&registry, &request)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics scrape connection ended");
            }
        });
    }
}

fn respond(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    let openmetrics = request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (encoded, content_type) = if openmetrics {
        (encode_openmetrics(registry), OPENMETRICS_CONTENT_TYPE)
    } else {
        (encode_text(registry), TEXT_CONTENT_TYPE)
    };
    match encoded {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(content_type),
            );
            response
        }
        Err(error) => {
            tracing::warn!(%error, "encoding metrics failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")
        }
    }
}
