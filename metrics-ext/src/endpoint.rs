//! The `/metrics` endpoint: one per process, serving one registry.

mod auth;
mod idle;

use std::{convert::Infallible, fmt, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};

use self::{
    auth::Auth,
    idle::{IdleTimeout, InFlight},
};
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
/// `_total` suffix, the `_bucket` lines of the duration histograms carry
/// their exemplars (`# {trace_id="…",span_id="…"} value timestamp`, see
/// [`RpcMetricsBuilder::exemplars`](crate::RpcMetricsBuilder::exemplars)),
/// and the exposition ends with `# EOF`. Apart from exemplars and those
/// two differences it is the Prometheus text format of [`encode_text`].
///
/// `registry` may be your own, with the RPC families registered into it
/// ([`RpcMetricsBuilder::registry`](crate::RpcMetricsBuilder::registry))
/// next to other collectors: the exemplars are found through the families
/// it holds. To serve your registry from your own HTTP server with
/// exemplars, answer OpenMetrics requests with this function (the
/// `prometheus` crate's `TextEncoder` writes the text format, which has no
/// exemplars).
///
/// ```
/// use rpc_ext_metrics::{Call, Conventions, GrpcCode, RpcMetrics, RpcSystem, Side};
///
/// // The old names have a counter, `rpc_server_requests_total`.
/// let metrics = RpcMetrics::builder().conventions(Conventions::Old).build().unwrap();
/// metrics
///     .start_call(Call::rpc(Side::Server, RpcSystem::Grpc, "s", "m"))
///     .finish(GrpcCode::OK, None);
/// let text = rpc_ext_metrics::encode_openmetrics(metrics.registry()).unwrap();
/// assert!(text.contains("# TYPE rpc_server_requests counter\n"));
/// assert!(text.ends_with("# EOF\n"));
/// ```
pub fn encode_openmetrics(registry: &Registry) -> Result<String, Error> {
    let encoder = TextEncoder::new();
    let mut out = String::new();
    let (families, exemplars) = crate::exemplar::gather(registry);
    let names: std::collections::HashSet<&str> = families.iter().map(|f| f.name()).collect();
    for family in &families {
        let mut text = String::new();
        encoder.encode_utf8(std::slice::from_ref(family), &mut text)?;
        let field_type = family.get_field_type();
        if field_type == prometheus::proto::MetricType::HISTOGRAM {
            if let Some(exemplars) = exemplars.iter().find(|e| e.is(family.name(), &names)) {
                crate::exemplar::append_histogram(&mut out, &text, family, exemplars);
                continue;
            }
        }
        let counter = field_type == prometheus::proto::MetricType::COUNTER;
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
/// [`MetricsEndpoint::serve`] uses the defaults of
/// [`MetricsEndpointBuilder`]: requests must arrive within a header-read
/// timeout, silent connections are closed, at most
/// [`MetricsEndpointBuilder::DEFAULT_MAX_CONNECTIONS`] are served at once,
/// and there is no authentication. [`MetricsEndpoint::builder`] changes them.
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
    /// Binds `addr` and serves `registry` on `/metrics` in the background,
    /// with the defaults of [`MetricsEndpointBuilder`].
    pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<Self, Error> {
        Self::builder(registry).serve(addr).await
    }

    /// A builder to set timeouts, the connection cap and authentication.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rpc_ext_metrics::MetricsEndpoint;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), rpc_ext_metrics::Error> {
    /// let endpoint = MetricsEndpoint::builder(prometheus::Registry::new())
    ///     .header_read_timeout(Duration::from_secs(5))
    ///     .max_connections(64)
    ///     .bearer_token("s3cret")
    ///     .serve("127.0.0.1:0".parse().unwrap())
    ///     .await?;
    /// endpoint.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn builder(registry: Registry) -> MetricsEndpointBuilder {
        MetricsEndpointBuilder::new(registry)
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting (the listener is closed, so new connections are
    /// refused), asks every open connection to close once its in-flight
    /// response is written, and waits for them: a connection still open
    /// after the builder's [shutdown timeout](MetricsEndpointBuilder::shutdown_timeout)
    /// is dropped.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MetricsEndpoint {
    /// Stops in the background as [`shutdown`](Self::shutdown) does,
    /// without waiting.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Configures a [`MetricsEndpoint`]; from [`MetricsEndpoint::builder`].
///
/// `Debug` shows no secret: the bearer token and the basic-auth password
/// are printed as `<redacted>`.
#[derive(Clone)]
#[must_use]
pub struct MetricsEndpointBuilder {
    registry: Registry,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    shutdown_timeout: Duration,
    auth: Auth,
}

impl fmt::Debug for MetricsEndpointBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsEndpointBuilder")
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// Longer timeouts are cut to this, so that deadline arithmetic cannot
/// overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// hyper's read buffer limit per connection (its default is about 400 KiB).
/// A scrape request is a few hundred bytes; 16 KiB leaves room for long
/// `Authorization` headers and bounds memory at `max_connections` × 16 KiB
/// for clients sending endless headers (they get 431).
const MAX_BUF_SIZE: usize = 16 * 1024;

/// First and longest pause after an accept error such as `EMFILE` (out of
/// file descriptors): retrying at once would spin a core while nothing
/// frees up.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

impl MetricsEndpointBuilder {
    /// 10 s: Prometheus sends its whole request right after connecting, so
    /// a head still incomplete after 10 s is a stalled or hostile client
    /// (slowloris). hyper also applies it to the wait for the next request
    /// on a kept-alive connection, so idle scrape connections are closed
    /// after it; scrapers simply reconnect.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// 60 s: longer than any sane scrape timeout (Prometheus' default is
    /// 10 s, its maximum the scrape interval), so a slow but live scraper
    /// is never cut, while a client that stops reading the response or
    /// trickles a request body is.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// 256: a process is scraped by a handful of Prometheus replicas and
    /// agents, each with one connection; 256 leaves ample room while
    /// bounding memory and file descriptors. Connections beyond it wait in
    /// the kernel's accept backlog until one closes.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
    /// 5 s: enough to finish writing an in-flight scrape on shutdown
    /// without holding up the process's exit for long.
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

    fn new(registry: Registry) -> Self {
        Self {
            registry,
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            shutdown_timeout: Self::DEFAULT_SHUTDOWN_TIMEOUT,
            auth: Auth::None,
        }
    }

    /// How long a client may take to send a request's head (request line
    /// and headers) once the server waits for it, including the wait for
    /// the next request on a kept-alive connection; then the connection is
    /// closed. Default [`DEFAULT_HEADER_READ_TIMEOUT`](Self::DEFAULT_HEADER_READ_TIMEOUT);
    /// at most a day.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout.min(MAX_TIMEOUT);
        self
    }

    /// How long a connection may go without a byte read or written (a
    /// trickled body, a client not reading the response, a kept-alive
    /// connection with no next request); then it is closed. The time the
    /// endpoint takes to produce a response (collecting the registry) does
    /// not count, and the clock restarts once the response is ready.
    /// Between requests the [header-read timeout](Self::header_read_timeout)
    /// applies too: the shorter closes the connection. Default
    /// [`DEFAULT_IDLE_TIMEOUT`](Self::DEFAULT_IDLE_TIMEOUT); at most a day.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout.min(MAX_TIMEOUT);
        self
    }

    /// How many connections are served at once. Further connections are
    /// not accepted until one closes: they wait in the kernel's accept
    /// backlog (FIFO, so every client gets its turn once the timeouts close
    /// stalled ones) rather than being accepted and dropped; the backlog
    /// holds 1,024 (or `net.core.somaxconn` if lower), and attempts beyond
    /// it are retried by the client's TCP. Default
    /// [`DEFAULT_MAX_CONNECTIONS`](Self::DEFAULT_MAX_CONNECTIONS); must be
    /// at least 1.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// How long [`MetricsEndpoint::shutdown`] lets each connection finish
    /// its in-flight response before dropping it. Default
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`](Self::DEFAULT_SHUTDOWN_TIMEOUT); at
    /// most a day.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout.min(MAX_TIMEOUT);
        self
    }

    /// Requires `Authorization: Bearer <token>` (Prometheus:
    /// `authorization: { credentials: <token> }`); other requests get 401.
    /// The token must be non-empty visible ASCII without spaces. Replaces
    /// any [`basic_auth`](Self::basic_auth).
    pub fn bearer_token(mut self, token: impl AsRef<str>) -> Self {
        self.auth = Auth::bearer(token.as_ref());
        self
    }

    /// Requires HTTP basic authentication (Prometheus: `basic_auth:
    /// { username, password }`); other requests get 401. The user must not
    /// contain `:`. Replaces any [`bearer_token`](Self::bearer_token).
    pub fn basic_auth(mut self, user: impl AsRef<str>, password: impl AsRef<str>) -> Self {
        self.auth = Auth::basic(user.as_ref(), password.as_ref());
        self
    }

    /// Binds `addr` and serves in the background.
    ///
    /// Fails with [`Error::Config`] when a setting cannot work (zero
    /// connections or timeouts, unusable credentials) and with
    /// [`Error::Io`] when `addr` cannot be bound.
    pub async fn serve(self, addr: SocketAddr) -> Result<MetricsEndpoint, Error> {
        if self.max_connections == 0 {
            return Err(Error::Config("max_connections must be at least 1".into()));
        }
        // The semaphore's limit.
        if self.max_connections > Semaphore::MAX_PERMITS {
            return Err(Error::Config("max_connections is too large".into()));
        }
        for (name, timeout) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
        ] {
            if timeout.is_zero() {
                return Err(Error::Config(format!("{name} must not be zero")));
            }
        }
        self.auth
            .validate()
            .map_err(|reason| Error::Config(reason.into()))?;

        let listener = bind(addr)?;
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            registry: self.registry,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            shutdown_timeout: self.shutdown_timeout,
            auth: self.auth,
        });
        let task = tokio::spawn(accept_loop(listener, shared, self.max_connections, stopped));
        Ok(MetricsEndpoint {
            local_addr,
            stop,
            task: Some(task),
        })
    }
}

/// Connections the kernel completes and queues while the endpoint is at
/// its cap (the kernel bounds it by `net.core.somaxconn`). Beyond it, new
/// connection attempts are dropped and the client's TCP retries them.
/// Tokio's `TcpListener::bind` uses 128.
const ACCEPT_BACKLOG: u32 = 1024;

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: rebinding right after a restart works.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// What every connection task needs.
struct Shared {
    registry: Registry,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    shutdown_timeout: Duration,
    auth: Auth,
}

/// Returns once the endpoint stops (or is gone), holding no borrow of the
/// channel across later awaits.
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Errors that concern one connection only: the next accept may succeed
/// at once.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    max_connections: usize,
    mut stopped: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        // Take a slot before accepting: at the cap, new connections stay
        // in the accept backlog instead of being accepted.
        let permit = tokio::select! {
            () = stop_requested(&mut stopped) => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                // Never closed; stop rather than spin if it were.
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = stop_requested(&mut stopped) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    stream
                }
                Err(error) if is_connection_error(&error) => {
                    tracing::debug!(%error, "metrics endpoint accept failed");
                    continue;
                }
                Err(error) => {
                    // EMFILE, ENFILE, ENOBUFS...: wait for resources to free
                    // up, longer each time, instead of retrying in a loop.
                    tracing::warn!(%error, ?backoff, "metrics endpoint accept failed; backing off");
                    tokio::select! {
                        () = stop_requested(&mut stopped) => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
        };
        tokio::spawn(serve_connection(
            stream,
            Arc::clone(&shared),
            stopped.clone(),
            permit,
        ));
    }
    // Close the listener first, so new connections are refused, then wait
    // until every connection task has returned its permit. Each bounds its
    // own graceful close by the shutdown timeout; the extra second covers
    // scheduling.
    drop(listener);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        shared.shutdown_timeout + Duration::from_secs(1),
        permits.acquire_many(all),
    )
    .await;
}

async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    // Scrape responses are written in one go; do not wait for ACKs.
    let _ = stream.set_nodelay(true);
    let in_flight = Arc::new(InFlight::default());
    let io = TokioIo::new(IdleTimeout::new(
        stream,
        shared.idle_timeout,
        Arc::clone(&in_flight),
    ));
    let service = {
        let shared = Arc::clone(&shared);
        service_fn(move |request| {
            // Until hyper has the response: the time a slow registry takes
            // to collect is not idle time.
            let producing = in_flight.start();
            let response = respond(&shared, &request);
            async move {
                drop(producing);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let connection = http1::Builder::new()
        // hyper needs a timer for the header-read timeout (without one it
        // panics at the first request if the timeout is set, and has no
        // timeout if not).
        .timer(TokioTimer::new())
        .header_read_timeout(shared.header_read_timeout)
        .max_buf_size(MAX_BUF_SIZE)
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // Also when the endpoint is gone (the sender dropped).
        () = stop_requested(&mut stopped) => {
            // Finish the response in flight, if any, then close; closes an
            // idle kept-alive connection at once.
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(shared.shutdown_timeout, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!("metrics connection dropped after the shutdown timeout");
                    return;
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "metrics scrape connection ended");
    }
}

fn respond(shared: &Shared, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if !shared.auth.allows(request.headers()) {
        let mut response = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, shared.auth.challenge());
        return response;
    }
    let registry = &shared.registry;
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
