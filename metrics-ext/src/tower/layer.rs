//! [`MetricsLayer`] and the [`MetricsService`] it wraps around a service.

use std::task::{Context, Poll};

use http::{Request, Response, Uri};
use rpc_ext_core::{grpc_service_method, is_grpc, ObservedBody, ObservedFuture, ServerTarget};

use super::RouteTemplate;
pub use crate::observer::MetricsObserver;
use crate::{
    raw_key::{tag, KeyBuf},
    Call, CallRecorder, RpcMetrics, RpcSystem, Side, OTHER,
};

/// Records every call through the wrapped service into [`RpcMetrics`].
///
/// On a server (`tonic::transport::Server::builder().layer(...)`, an axum
/// `Router::layer`, or any tower `ServiceBuilder`); a client is the same
/// with `MetricsLayer::client(&metrics)` around its channel. gRPC calls go
/// to the RPC families, other HTTP requests to the HTTP ones:
///
/// ```
/// use std::convert::Infallible;
///
/// use http_body_util::Full;
/// use rpc_ext_metrics::{tower::{MetricsLayer, RouteTemplate}, Conventions, RpcMetrics};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let metrics = RpcMetrics::builder().conventions(Conventions::Current).build()?;
/// let server = ServiceBuilder::new()
///     .layer(MetricsLayer::server(&metrics))
///     .service(service_fn(|_: http::Request<Full<bytes::Bytes>>| async {
///         Ok::<_, Infallible>(http::Response::new(Full::new(bytes::Bytes::from("hi"))))
///     }));
///
/// let mut request = http::Request::new(Full::default());
/// request.extensions_mut().insert(RouteTemplate("/hello".into()));
/// let response = server.oneshot(request).await?;
/// assert_eq!(response.status(), 200);
/// // The call is recorded when its response body has been sent.
/// http_body_util::BodyExt::collect(response.into_body()).await?;
///
/// let text = rpc_ext_metrics::encode_text(metrics.registry())?;
/// assert!(text.contains(r#"http_server_request_duration_seconds_count{error_type="",http_request_method="GET",http_response_status_code="200",http_route="/hello",url_scheme="http"} 1"#));
/// # Ok(()) }
/// ```
///
/// Calls left out by [`RpcMetricsBuilder::skip_health_checks`](crate::RpcMetricsBuilder::skip_health_checks)
/// (servers and clients) or [`skip_http_routes`](crate::RpcMetricsBuilder::skip_http_routes)
/// (servers) record nothing. A listed HTTP route is recognized by its
/// template when the request carries one (inside axum's `Router::layer`,
/// or a [`RouteTemplate`]); without one (a layer outside the router), by
/// the path, for templates without parameters only:
///
/// ```
/// use std::convert::Infallible;
///
/// use http_body_util::{BodyExt, Empty};
/// use rpc_ext_metrics::{tower::MetricsLayer, RpcMetrics};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let metrics = RpcMetrics::builder()
///     .skip_health_checks(true)
///     .skip_http_routes(["/healthz"])
///     .build()?;
/// let server = MetricsLayer::server(&metrics).layer(service_fn(
///     |_: http::Request<Empty<bytes::Bytes>>| async {
///         let reply = http::Response::builder()
///             .header("content-type", "application/grpc")
///             .header("grpc-status", "0")
///             .body(Empty::<bytes::Bytes>::new());
///         Ok::<_, Infallible>(reply.unwrap())
///     },
/// ));
///
/// // A tonic-style health check, and a probe of `/healthz` (outside any
/// // router: no route template, so by its path).
/// for (path, content_type) in [
///     ("/grpc.health.v1.Health/Check", "application/grpc"),
///     ("/healthz", "text/plain"),
/// ] {
///     let request = http::Request::builder()
///         .uri(path)
///         .header("content-type", content_type)
///         .body(Empty::new())?;
///     let response = server.clone().oneshot(request).await?;
///     response.into_body().collect().await?;
/// }
/// // Nothing recorded: not a single sample.
/// let text = rpc_ext_metrics::encode_text(metrics.registry())?;
/// assert!(text.lines().all(|line| line.starts_with('#')), "{text}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: RpcMetrics,
    side: Side,
    /// The configured target, and its id in the keys of
    /// [`crate::raw_key`].
    server_address: Option<(ServerTarget, u64)>,
}

impl MetricsLayer {
    /// Server side: `rpc_server_*` and `http_server_*`.
    #[must_use]
    pub fn server(metrics: &RpcMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
            side: Side::Server,
            server_address: None,
        }
    }

    /// Client side: `rpc_client_*` and `http_client_*`. `server_address`
    /// and `server_port` are the host and port of the request URI; a tonic
    /// client made with `Client::new(service)` sends URIs without a host
    /// (the channel adds it further in), so name the target with
    /// [`server_address`](Self::server_address) or build the client
    /// `with_origin`.
    #[must_use]
    pub fn client(metrics: &RpcMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
            side: Side::Client,
            server_address: None,
        }
    }

    /// The target of a client's calls, as the client was configured with
    /// it, instead of the request URI's host and port: an authority, parsed
    /// into `server_address` and `server_port` — a name (`echo`: no port),
    /// an address and port (`127.0.0.1:50051`), a bracketed IPv6 address
    /// (`[::1]:50051`, recorded as `::1`). Text that is not an authority is
    /// the address as it stands. The host is also the `peer_service` of
    /// [`Conventions::Old`](crate::Conventions::Old). Ignored on servers.
    ///
    /// ```
    /// use std::convert::Infallible;
    ///
    /// use http_body_util::Empty;
    /// use rpc_ext_metrics::{tower::MetricsLayer, Conventions, RpcMetrics};
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let metrics = RpcMetrics::builder().conventions(Conventions::Current).build()?;
    /// let addr: std::net::SocketAddr = "[::1]:50051".parse()?;
    /// let client = MetricsLayer::client(&metrics)
    ///     .server_address(addr.to_string())
    ///     .layer(service_fn(|_: http::Request<Empty<bytes::Bytes>>| async {
    ///         let reply = http::Response::builder()
    ///             .header("content-type", "application/grpc")
    ///             .header("grpc-status", "0")
    ///             .body(Empty::<bytes::Bytes>::new());
    ///         Ok::<_, Infallible>(reply.unwrap())
    ///     }));
    ///
    /// // What a tonic client made with `Client::new(channel)` sends: a path only.
    /// let request = http::Request::builder()
    ///     .uri("/echo.Echo/Say")
    ///     .header("content-type", "application/grpc")
    ///     .body(Empty::new())?;
    /// let response = client.oneshot(request).await?;
    /// http_body_util::BodyExt::collect(response.into_body()).await?;
    ///
    /// let text = rpc_ext_metrics::encode_text(metrics.registry())?;
    /// assert!(text.contains(r#"server_address="::1",server_port="50051""#), "{text}");
    /// // A name has no port.
    /// let by_name = MetricsLayer::client(&metrics).server_address("echo");
    /// # let _ = by_name;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn server_address(mut self, authority: impl AsRef<str>) -> Self {
        if self.side == Side::Client {
            self.server_address = Some((
                ServerTarget::parse(authority.as_ref()),
                crate::raw_key::target_id(),
            ));
        }
        self
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            layer: std::sync::Arc::new(self.clone()),
        }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    /// Shared: servers clone their service for every call, and one count
    /// is cheaper to move than the layer's own.
    layer: std::sync::Arc<MetricsLayer>,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for MetricsService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: http_body::Body,
    ResBody: http_body::Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let grpc = is_grpc(&request);
        let mut recorder = self.start(&request, grpc);
        if let Some(size) = request_size(&request, grpc) {
            recorder.request_size(size);
        }
        ObservedFuture::new(
            self.inner.call(request),
            MetricsObserver::new(recorder),
            grpc,
        )
    }
}

impl<S> MetricsService<S> {
    fn start<B>(&self, request: &Request<B>, grpc: bool) -> CallRecorder {
        let MetricsLayer { metrics, side, .. } = &*self.layer;
        let uri = request.uri();
        if grpc {
            return self.start_grpc(uri);
        }
        let call = Call::http(*side, request.method());
        match side {
            Side::Server => {
                let call = call.url_scheme(uri.scheme_str().unwrap_or("http"));
                match RouteTemplate::of(request.extensions()) {
                    Some(route) => metrics.start_call(call.route(route)),
                    // Outside the router: a listed template without
                    // parameters is left out by the path.
                    None if metrics.skips_http_path(uri.path()) => CallRecorder::skipped(),
                    // Recorded under `_OTHER`, never the raw path.
                    None => metrics.start_call(call),
                }
            }
            Side::Client => {
                let default_port = match uri.scheme_str() {
                    Some("https") => Some(443),
                    Some("http") => Some(80),
                    _ => None,
                };
                metrics.start_call(self.target(call, uri, default_port))
            }
        }
    }

    /// Starts a gRPC call: by its raw key if this thread has seen it,
    /// else from its path and target, keeping the key for the next one.
    fn start_grpc(&self, uri: &Uri) -> CallRecorder {
        let MetricsLayer { metrics, side, .. } = &*self.layer;
        let path = uri.path();
        let mut client_key;
        let key = match side {
            Side::Server => Some(path.as_bytes()),
            Side::Client => {
                client_key = KeyBuf::new();
                self.client_key(&mut client_key, path, uri);
                client_key.get()
            }
        };
        if let Some(recorder) = key.and_then(|key| metrics.start_known(*side, key)) {
            return recorder;
        }
        let (service, method) = grpc_service_method(path).unwrap_or((OTHER, OTHER));
        let call = Call::rpc(*side, RpcSystem::Grpc, service, method);
        let recorder = match side {
            Side::Server => metrics.start_untrusted_call(call),
            Side::Client => metrics.start_call(self.target(call, uri, None)),
        };
        if let Some(key) = key {
            metrics.remember(*side, key, &recorder);
        }
        recorder
    }

    /// What a client gRPC call's labels are read from: the path and the
    /// target (the configured one, else the URI's authority).
    #[inline]
    fn client_key(&self, key: &mut KeyBuf, path: &str, uri: &Uri) {
        match (&self.layer.server_address, uri.authority()) {
            (Some((_, id)), _) => {
                key.start(tag::CONFIGURED, path);
                key.push(&id.to_le_bytes());
            }
            (None, Some(authority)) => {
                key.start(tag::AUTHORITY, path);
                key.push(authority.as_str().as_bytes());
            }
            (None, None) => key.start(tag::NONE, path),
        }
    }

    /// A client call's target: the configured name, else the URI's host
    /// and port (`default_port` when the URI has none).
    fn target<'a>(&'a self, call: Call<'a>, uri: &'a Uri, default_port: Option<u16>) -> Call<'a> {
        if let Some((target, _)) = &self.layer.server_address {
            return call
                .server_address(target.address(), target.port())
                .peer_service(target.address());
        }
        match uri.host() {
            Some(host) => {
                // `server.address` is the bare IPv6 address, without brackets.
                let host = host.trim_start_matches('[').trim_end_matches(']');
                call.server_address(host, uri.port_u16().or(default_port))
                    .peer_service(host)
            }
            None => call.peer_service(OTHER),
        }
    }
}

fn request_size<B: http_body::Body>(request: &Request<B>, grpc: bool) -> Option<u64> {
    let exact = request.body().size_hint().exact();
    // gRPC requests carry no `content-length`: no need to look.
    if grpc {
        return exact;
    }
    exact.or_else(|| rpc_ext_core::content_length(request.headers()))
}

/// The future of [`MetricsService`].
pub type ResponseFuture<F> = ObservedFuture<F, MetricsObserver>;
/// The response body of [`MetricsService`].
pub type ResponseBody<B> = ObservedBody<B, MetricsObserver>;
