//! [`MetricsLayer`] and the [`MetricsService`] it wraps around a service.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response, Uri};
use rpc_ext_core::{
    grpc_service_method, is_grpc, CallEnd, CallObserver, ObservedBody, ObservedFuture,
};

use super::RouteTemplate;
use crate::{Call, CallRecorder, Outcome, RpcMetrics, RpcSystem, Side, OTHER};

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
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: RpcMetrics,
    side: Side,
    server_address: Option<Arc<str>>,
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

    /// The `server_address` of a client's calls (and the `peer_service` of
    /// [`Conventions::Old`](crate::Conventions::Old)) instead of the
    /// request URI's host, with no `server_port`: the name the client
    /// calls the server by. Ignored on servers.
    ///
    /// ```
    /// let metrics = rpc_ext_metrics::RpcMetrics::builder().build().unwrap();
    /// let layer = rpc_ext_metrics::tower::MetricsLayer::client(&metrics).server_address("echo");
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn server_address(mut self, name: impl Into<Arc<str>>) -> Self {
        if self.side == Side::Client {
            self.server_address = Some(name.into());
        }
        self
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    layer: MetricsLayer,
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
        ObservedFuture::new(self.inner.call(request), MetricsObserver { recorder }, grpc)
    }
}

impl<S> MetricsService<S> {
    fn start<B>(&self, request: &Request<B>, grpc: bool) -> CallRecorder {
        let MetricsLayer { metrics, side, .. } = &self.layer;
        let uri = request.uri();
        if grpc {
            let (service, method) = grpc_service_method(uri.path()).unwrap_or((OTHER, OTHER));
            let call = Call::rpc(*side, RpcSystem::Grpc, service, method);
            return match side {
                Side::Server => metrics.start_untrusted_call(call),
                Side::Client => metrics.start_call(self.target(call, uri, None)),
            };
        }
        let call = Call::http(*side, request.method());
        match side {
            Side::Server => metrics.start_call(
                call.route(route_template(request))
                    .url_scheme(uri.scheme_str().unwrap_or("http")),
            ),
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

    /// A client call's target: the configured name, else the URI's host
    /// and port (`default_port` when the URI has none).
    fn target<'a>(&'a self, call: Call<'a>, uri: &'a Uri, default_port: Option<u16>) -> Call<'a> {
        if let Some(name) = &self.layer.server_address {
            return call.server_address(name, None).peer_service(name);
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

fn route_template<B>(request: &Request<B>) -> &str {
    RouteTemplate::of(request.extensions()).unwrap_or(OTHER)
}

fn request_size<B: http_body::Body>(request: &Request<B>, grpc: bool) -> Option<u64> {
    let exact = request.body().size_hint().exact();
    // gRPC requests carry no `content-length`: no need to look.
    if grpc {
        return exact;
    }
    exact.or_else(|| rpc_ext_core::content_length(request.headers()))
}

/// Finishes the call record when [`rpc_ext_core`] reports the call's end;
/// dropped unended (the caller went away), the record is a cancellation.
#[derive(Debug)]
pub struct MetricsObserver {
    recorder: CallRecorder,
}

impl CallObserver for MetricsObserver {
    type Scope<'a> = ();

    fn scope(&self) {}

    fn end(self, end: CallEnd, response_bytes: u64) {
        let size = (end != CallEnd::Failed).then_some(response_bytes);
        self.recorder.finish(Outcome::from(end), size);
    }
}

/// The future of [`MetricsService`].
pub type ResponseFuture<F> = ObservedFuture<F, MetricsObserver>;
/// The response body of [`MetricsService`].
pub type ResponseBody<B> = ObservedBody<B, MetricsObserver>;
