//! [`MetricsLayer`] and the [`MetricsService`] it wraps around a service.

use std::task::{Context, Poll};

use http::{Request, Response};
use rpc_ext_core::{
    grpc_service_method, is_grpc, CallEnd, CallObserver, ObservedBody, ObservedFuture,
};

use super::RouteTemplate;
use crate::{status, CallRecorder, GrpcCode, RpcMetrics, RpcSystem, Side, OTHER};

/// Records every call through the wrapped service into [`RpcMetrics`].
///
/// On a server (`tonic::transport::Server::builder().layer(...)`, an axum
/// `Router::layer`, or any tower `ServiceBuilder`); a client is the same
/// with `MetricsLayer::client(&metrics).peer_service("echo")` around its
/// channel:
///
/// ```
/// use std::convert::Infallible;
///
/// use http_body_util::Full;
/// use rpc_ext_metrics::{tower::{MetricsLayer, RouteTemplate}, RpcMetrics};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let metrics = RpcMetrics::builder().build()?;
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
/// assert!(text.contains(r#"rpc_server_requests_total{rpc_method="GET",rpc_service="/hello",rpc_system="http",status_code="200"} 1"#));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: RpcMetrics,
    side: Side,
    peer_service: std::sync::Arc<str>,
}

impl MetricsLayer {
    /// Server side: `rpc_server_*`.
    #[must_use]
    pub fn server(metrics: &RpcMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
            side: Side::Server,
            peer_service: "".into(),
        }
    }

    /// Client side: `rpc_client_*`. A tower service does not know whom it
    /// calls: name the callee with [`peer_service`](Self::peer_service),
    /// else the `peer_service` label is `_other`.
    #[must_use]
    pub fn client(metrics: &RpcMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
            side: Side::Client,
            peer_service: OTHER.into(),
        }
    }

    /// The `peer_service` label of a client's calls: the callee's service
    /// name as the client knows it (ignored on servers).
    #[must_use]
    pub fn peer_service(mut self, name: impl Into<std::sync::Arc<str>>) -> Self {
        if self.side == Side::Client {
            self.peer_service = name.into();
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
        ObservedFuture::new(
            self.inner.call(request),
            MetricsObserver { recorder, grpc },
            grpc,
        )
    }
}

impl<S> MetricsService<S> {
    fn start<B>(&self, request: &Request<B>, grpc: bool) -> CallRecorder {
        let MetricsLayer {
            metrics,
            side,
            peer_service,
        } = &self.layer;
        if grpc {
            let (service, method) =
                grpc_service_method(request.uri().path()).unwrap_or((OTHER, OTHER));
            return metrics.start_untrusted_call(
                *side,
                RpcSystem::Grpc,
                service,
                method,
                peer_service,
            );
        }
        let route = route_template(request);
        metrics.start_call(
            *side,
            RpcSystem::Http,
            route,
            request.method().as_str(),
            peer_service,
        )
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
    grpc: bool,
}

impl CallObserver for MetricsObserver {
    type Scope<'a> = ();

    fn scope(&self) {}

    fn end(self, end: CallEnd, response_bytes: u64) {
        let status = match end {
            CallEnd::Grpc(code) => code.as_label(),
            CallEnd::Http(code) => status::http_status_label(code),
            // No response: UNAVAILABLE for gRPC, a fixed label for HTTP.
            CallEnd::Failed if self.grpc => GrpcCode::UNAVAILABLE.as_label(),
            CallEnd::Failed => "error",
        };
        let size = (end != CallEnd::Failed).then_some(response_bytes);
        self.recorder.finish(status, size);
    }
}

/// The future of [`MetricsService`].
pub type ResponseFuture<F> = ObservedFuture<F, MetricsObserver>;
/// The response body of [`MetricsService`].
pub type ResponseBody<B> = ObservedBody<B, MetricsObserver>;
