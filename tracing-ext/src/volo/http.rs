//! Volo HTTP: on servers the caller's context comes from the request
//! headers and spans are named `METHOD route`, with the route template the
//! router matched (`GET /users/{id}`), never the raw path; on clients the
//! span (named by the method) is a child of the current context, which is
//! written into the request headers.

use motore::{layer::Layer, service::Service};
use volo::context::Context as _;
use volo_http::{
    context::{ClientContext, ServerContext},
    error::ClientError,
    request::Request,
    response::Response,
    server::{route::MatchedPath, IntoResponse},
};

use rpc_ext_core::OTHER;

use super::ip;
use crate::{
    propagation::RequestHeaders, CallInfo, HeaderInjector, Outcome, RpcSystem, RpcTracing,
};

/// Traces every request through a Volo HTTP server or client (the side
/// follows from the context type).
///
/// ```
/// use rpc_ext_tracing::{volo::HttpTracingLayer, RpcTracing};
///
/// let tracing = RpcTracing::builder().build();
/// // server: volo_http::server::Server::new(router).layer(HttpTracingLayer::new(&tracing))
/// // client: volo_http::client::Client::builder().layer_outer(HttpTracingLayer::new(&tracing))
/// let layer = HttpTracingLayer::new(&tracing);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct HttpTracingLayer {
    tracing: RpcTracing,
}

impl HttpTracingLayer {
    /// Traces with `tracing`'s tracer and propagator.
    #[must_use]
    pub fn new(tracing: &RpcTracing) -> Self {
        Self {
            tracing: tracing.clone(),
        }
    }
}

impl<S> Layer<S> for HttpTracingLayer {
    type Service = HttpTracingService<S>;

    fn layer(self, inner: S) -> Self::Service {
        HttpTracingService { inner, layer: self }
    }
}

/// The service made by [`HttpTracingLayer`].
#[derive(Debug, Clone)]
pub struct HttpTracingService<S> {
    inner: S,
    layer: HttpTracingLayer,
}

impl<B, S> Service<ServerContext, Request<B>> for HttpTracingService<S>
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
        let method = request.method().clone();
        let call = {
            let info = CallInfo {
                system: RpcSystem::Http,
                service: OTHER,
                method: method.as_str(),
                server_addr: rpc_ext_core::server_addr(request.uri(), request.headers()),
                peer_addr: ip(cx.rpc_info().caller().address()),
                request_size: None,
            };
            self.layer
                .tracing
                .start_server(&info, &RequestHeaders::new(request.headers()))
        };
        let result = call.run(self.inner.call(cx, request)).await;
        let response = match result {
            Ok(response) => response.into_response(),
            Err(error) => error.into_response(),
        };
        let route = cx
            .extensions()
            .get::<MatchedPath>()
            .map_or(OTHER, MatchedPath::as_str);
        call.set_http_route(method.as_str(), route);
        call.finish(&Outcome {
            http_status: Some(response.status().as_u16()),
            response_size: http_body::Body::size_hint(response.body()).exact(),
            ..Outcome::default()
        });
        Ok(response)
    }
}

impl<B, RB, S> Service<ClientContext, Request<B>> for HttpTracingService<S>
where
    B: Send + 'static,
    RB: Send + 'static,
    S: Service<ClientContext, Request<B>, Response = Response<RB>, Error = ClientError>
        + Send
        + Sync
        + 'static,
{
    type Response = Response<RB>;
    type Error = ClientError;

    async fn call(
        &self,
        cx: &mut ClientContext,
        mut request: Request<B>,
    ) -> Result<Response<RB>, ClientError> {
        let method = request.method().clone();
        let mut headers = std::mem::take(request.headers_mut());
        let call = {
            let server_addr = request
                .uri()
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .or_else(|| ip(cx.rpc_info().callee().address()));
            let info = CallInfo {
                system: RpcSystem::Http,
                service: "",
                method: method.as_str(),
                server_addr,
                peer_addr: server_addr,
                request_size: None,
            };
            self.layer
                .tracing
                .start_client(&info, &mut HeaderInjector(&mut headers))
        };
        *request.headers_mut() = headers;
        let result = call.run(self.inner.call(cx, request)).await;
        let outcome = match &result {
            Ok(response) => Outcome {
                http_status: Some(response.status().as_u16()),
                ..Outcome::default()
            },
            Err(_) => Outcome {
                error_type: Some("transport".into()),
                ..Outcome::default()
            },
        };
        call.finish(&outcome);
        result
    }
}
