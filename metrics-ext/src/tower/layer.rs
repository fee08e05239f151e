//! [`MetricsLayer`] and the [`MetricsService`] it wraps around a service.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Request, Response};
use pin_project_lite::pin_project;

use super::{body::ResponseBody, RouteTemplate};
use crate::{status, CallRecorder, RpcMetrics, RpcSystem, Side, OVERFLOW_LABEL};

/// Records every call through the wrapped service into [`RpcMetrics`].
///
/// ```
/// use metrics_ext::{tower::MetricsLayer, RpcMetrics};
/// use tower::ServiceBuilder;
///
/// let metrics = RpcMetrics::builder().build().unwrap();
/// // server: tonic::transport::Server::builder().layer(MetricsLayer::server(&metrics))
/// let server_layer = MetricsLayer::server(&metrics);
/// // client: EchoClient::new(ServiceBuilder::new().layer(MetricsLayer::client(&metrics, "echo")).service(channel))
/// let client_layer = MetricsLayer::client(&metrics, "echo");
/// # let _ = (server_layer, client_layer, ServiceBuilder::new());
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

    /// Client side: `rpc_client_*`, with `peer_service` naming the callee.
    #[must_use]
    pub fn client(metrics: &RpcMetrics, peer_service: impl Into<std::sync::Arc<str>>) -> Self {
        Self {
            metrics: metrics.clone(),
            side: Side::Client,
            peer_service: peer_service.into(),
        }
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
        if let Some(size) = request_size(&request) {
            recorder.request_size(size);
        }
        ResponseFuture {
            inner: self.inner.call(request),
            recorder: Some(recorder),
            grpc,
        }
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
            let (service, method) = grpc_service_method(request.uri().path())
                .unwrap_or((OVERFLOW_LABEL, OVERFLOW_LABEL));
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

fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
fn grpc_service_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

fn route_template<B>(request: &Request<B>) -> &str {
    if let Some(RouteTemplate(route)) = request.extensions().get::<RouteTemplate>() {
        return route;
    }
    #[cfg(feature = "axum")]
    if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
        return matched.as_str();
    }
    OVERFLOW_LABEL
}

fn request_size<B: http_body::Body>(request: &Request<B>) -> Option<u64> {
    request.body().size_hint().exact().or_else(|| {
        request
            .headers()
            .get(http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    })
}

pin_project! {
    /// The future of [`MetricsService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        recorder: Option<CallRecorder>,
        grpc: bool,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let Some(recorder) = this.recorder.take() else {
            // Polled after completion: a caller bug; nothing left to record.
            return Poll::Ready(result.map(|r| r.map(ResponseBody::unrecorded)));
        };
        Poll::Ready(match result {
            Ok(response) => {
                let status = if *this.grpc {
                    grpc_status_from_headers(&response)
                } else {
                    Some(status::http_status_label(response.status().as_u16()))
                };
                Ok(response.map(|body| ResponseBody::new(body, recorder, *this.grpc, status)))
            }
            Err(error) => {
                // No response at all: the transport failed (client side) or
                // the service errored before answering.
                let status = if *this.grpc {
                    status::grpc_status_label(14) // UNAVAILABLE
                } else {
                    "error"
                };
                recorder.finish(status, None);
                Err(error)
            }
        })
    }
}

/// The gRPC status carried in the headers of a trailers-only response, or
/// implied by a non-200 HTTP status; `None` when it will come in trailers.
fn grpc_status_from_headers<B>(response: &Response<B>) -> Option<&'static str> {
    if let Some(code) = response.headers().get("grpc-status") {
        return Some(parse_grpc_status(code));
    }
    match response.status().as_u16() {
        200 => None,
        // The gRPC HTTP mapping for responses without a grpc-status.
        400 => Some(status::grpc_status_label(13)),
        401 => Some(status::grpc_status_label(16)),
        403 => Some(status::grpc_status_label(7)),
        404 => Some(status::grpc_status_label(12)),
        429 | 502 | 503 | 504 => Some(status::grpc_status_label(14)),
        _ => Some(status::grpc_status_label(2)),
    }
}

pub(super) fn parse_grpc_status(value: &http::HeaderValue) -> &'static str {
    let code = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(2);
    status::grpc_status_label(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            grpc_service_method("/echo.Echo/Say"),
            Some(("echo.Echo", "Say"))
        );
        assert_eq!(grpc_service_method("/echo.Echo/"), None);
        assert_eq!(grpc_service_method("//Say"), None);
        assert_eq!(grpc_service_method("/a/b/c"), None);
        assert_eq!(grpc_service_method("no-slash"), None);
    }
}
