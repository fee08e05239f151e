//! Volo HTTP. Servers: labels are the route template the router matched
//! (`rpc_service = "/users/{id}"`, `rpc_method = "GET"`), never the raw path;
//! unmatched requests are recorded under [`OTHER`]. Clients: a
//! client knows no route template, so `rpc_service` is [`OTHER`],
//! `rpc_method` the HTTP method and `peer_service` the target host.

use http_body::Body as _;
use motore::{layer::Layer, service::Service};
use volo::context::Context as _;
use volo_http::{
    context::{ClientContext, ServerContext},
    error::ClientError,
    request::Request,
    response::Response,
    server::{route::MatchedPath, IntoResponse},
};

use crate::{status, RpcMetrics, RpcSystem, Side, OTHER};

/// Records every request through a Volo HTTP server or client (the side
/// follows from the context type).
///
/// On servers, add it with `Server::layer` so it sees every request: the
/// route is read from the router's `MatchedPath` once the router has run.
/// On clients, add it with `ClientBuilder::layer_outer`.
///
/// ```
/// use rpc_ext_metrics::{volo::HttpMetricsLayer, RpcMetrics};
///
/// let metrics = RpcMetrics::builder().build().unwrap();
/// // volo_http::server::Server::new(router).layer(HttpMetricsLayer::new(&metrics))
/// let layer = HttpMetricsLayer::new(&metrics);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct HttpMetricsLayer {
    metrics: RpcMetrics,
}

impl HttpMetricsLayer {
    /// Records into `metrics` (`rpc_server_*` or `rpc_client_*`, `rpc_system = "http"`).
    #[must_use]
    pub fn new(metrics: &RpcMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
        }
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetricsService<S>;

    fn layer(self, inner: S) -> Self::Service {
        HttpMetricsService { inner, layer: self }
    }
}

/// The service made by [`HttpMetricsLayer`].
#[derive(Debug, Clone)]
pub struct HttpMetricsService<S> {
    inner: S,
    layer: HttpMetricsLayer,
}

impl<B, S> Service<ServerContext, Request<B>> for HttpMetricsService<S>
where
    B: Send + 'static,
    S: Service<ServerContext, Request<B>> + Send + Sync + 'static,
    S::Response: IntoResponse,
    S::Error: IntoResponse,
{
    type Response = Response;
    type Error = std::convert::Infallible;

    async fn call(
        &self,
        cx: &mut ServerContext,
        request: Request<B>,
    ) -> Result<Response, Self::Error> {
        let metrics = &self.layer.metrics;
        let method = request.method().clone();
        let mut recorder =
            metrics.start_call(Side::Server, RpcSystem::Http, OTHER, method.as_str(), "");
        if let Some(size) = rpc_ext_core::content_length(request.headers()) {
            recorder.request_size(size);
        }
        let response = match self.inner.call(cx, request).await {
            Ok(response) => response.into_response(),
            Err(error) => error.into_response(),
        };
        if let Some(route) = cx.extensions().get::<MatchedPath>() {
            recorder.relabel(metrics, route.as_str(), method.as_str());
        }
        let size = response.body().size_hint().exact();
        recorder.finish(status::http_status_label(response.status().as_u16()), size);
        Ok(response)
    }
}

impl<B, RB, S> Service<ClientContext, Request<B>> for HttpMetricsService<S>
where
    B: Send + 'static,
    RB: Send + 'static,
    S: Service<ClientContext, Request<B>, Response = Response<RB>, Error = ClientError>
        + Send
        + Sync
        + 'static,
    RB: http_body::Body,
{
    type Response = Response<RB>;
    type Error = ClientError;

    async fn call(
        &self,
        cx: &mut ClientContext,
        request: Request<B>,
    ) -> Result<Response<RB>, ClientError> {
        let host = request
            .uri()
            .host()
            .map(str::to_owned)
            .unwrap_or_else(|| cx.rpc_info().callee().service_name_ref().to_owned());
        let mut recorder = self.layer.metrics.start_call(
            Side::Client,
            RpcSystem::Http,
            OTHER,
            request.method().as_str(),
            &host,
        );
        if let Some(size) = rpc_ext_core::content_length(request.headers()) {
            recorder.request_size(size);
        }
        let result = self.inner.call(cx, request).await;
        match &result {
            Ok(response) => recorder.finish(
                status::http_status_label(response.status().as_u16()),
                response.body().size_hint().exact(),
            ),
            Err(_) => recorder.finish("error", None),
        }
        result
    }
}
