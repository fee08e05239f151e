//! [`TracingLayer`] and the [`TracingService`] it wraps around a service.

use std::{
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use rpc_ext_core::{is_grpc, CallEnd, CallObserver, ObservedBody, ObservedFuture, Side};

use super::RouteTemplate;
use crate::{
    address, propagation::RequestHeaders, ActiveCall, CallInfo, CallScope, HeaderInjector, Host,
    Outcome, RpcTracing, UrlParts,
};

/// Traces every call through the wrapped service.
///
/// On a server (`tonic::transport::Server::builder().layer(...)`, an axum
/// `Router::layer`, or any tower `ServiceBuilder`): the handler runs in the
/// call's span, continuing the caller's trace. A client is the same with
/// `TracingLayer::client(&tracing)` around its channel, which writes the
/// span's context into the request:
///
/// ```
/// use std::convert::Infallible;
///
/// use http_body_util::Full;
/// use opentelemetry::trace::TraceContextExt;
/// use rpc_ext_tracing::{tower::TracingLayer, RpcTracing};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
/// let tracing = RpcTracing::builder().tracer_provider(&provider).build();
/// let server = ServiceBuilder::new()
///     .layer(TracingLayer::server(&tracing))
///     .service(service_fn(|_: http::Request<Full<bytes::Bytes>>| async {
///         // The caller's trace continues in here.
///         let trace_id = opentelemetry::Context::current().span().span_context().trace_id();
///         Ok::<_, Infallible>(http::Response::new(Full::new(bytes::Bytes::from(trace_id.to_string()))))
///     }));
///
/// let request = http::Request::builder()
///     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .body(Full::default())?;
/// let response = server.oneshot(request).await?;
/// let body = http_body_util::BodyExt::collect(response.into_body()).await?.to_bytes();
/// assert_eq!(body, "4bf92f3577b34da6a3ce929d0e0e4736");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TracingLayer {
    tracing: RpcTracing,
    side: Side,
    server_address: Option<Arc<str>>,
}

impl TracingLayer {
    /// Server side: extract the caller's context, run the call in the span.
    /// `server.address` and `server.port` are read from the request's
    /// `:authority` or `Host`.
    #[must_use]
    pub fn server(tracing: &RpcTracing) -> Self {
        Self {
            tracing: tracing.clone(),
            side: Side::Server,
            server_address: None,
        }
    }

    /// Client side: a child of the current context, injected into the
    /// request. `server.address` and `server.port` are the host and port of
    /// the request URI; a tonic client made with `Client::new(channel)`
    /// sends URIs without a host (the channel adds it further in), so name
    /// the target with [`server_address`](Self::server_address) or build
    /// the client `with_origin`.
    #[must_use]
    pub fn client(tracing: &RpcTracing) -> Self {
        Self {
            tracing: tracing.clone(),
            side: Side::Client,
            server_address: None,
        }
    }

    /// The `server.address` of a client's calls instead of the request
    /// URI's host, with no `server.port`: the name the client calls the
    /// server by. Ignored on servers.
    ///
    /// ```
    /// use rpc_ext_tracing::{tower::TracingLayer, RpcTracing};
    ///
    /// let tracing = RpcTracing::builder().build();
    /// let layer = TracingLayer::client(&tracing).server_address("echo");
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn server_address(mut self, name: impl Into<Arc<str>>) -> Self {
        if !self.side.is_server() {
            self.server_address = Some(name.into());
        }
        self
    }
}

impl<S> tower::Layer<S> for TracingLayer {
    type Service = TracingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TracingService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`TracingLayer`].
#[derive(Debug, Clone)]
pub struct TracingService<S> {
    inner: S,
    layer: TracingLayer,
}

/// Ends the span when [`rpc_ext_core`] reports the call's end, and keeps
/// the span's context current while the call's future is polled, and on
/// the server side while the response body is (a streaming handler's code
/// runs there). A client's response body is read in the caller's context:
/// nothing below it runs on the caller's behalf.
pub struct TracingObserver {
    call: ActiveCall,
    side: Side,
}

impl std::fmt::Debug for TracingObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.call.fmt(f)
    }
}

impl CallObserver for TracingObserver {
    type Scope<'a> = Option<CallScope<'a>>;

    fn scope(&self) -> Self::Scope<'_> {
        Some(self.call.enter())
    }

    fn body_scope(&self) -> Self::Scope<'_> {
        self.side.is_server().then(|| self.call.enter())
    }

    fn end(self, end: CallEnd, response_bytes: u64) {
        let mut outcome = Outcome {
            response_size: Some(response_bytes),
            ..Outcome::default()
        };
        match end {
            CallEnd::Grpc(code) => outcome.grpc_code = Some(code),
            CallEnd::Http(status) => outcome.http_status = Some(status),
            CallEnd::Failed => {
                outcome.error_type = Some("transport".into());
                outcome.response_size = None;
            }
        }
        self.call.finish(&outcome);
    }
}

/// The future of [`TracingService`].
pub type ResponseFuture<F> = ObservedFuture<F, TracingObserver>;
/// The response body of [`TracingService`].
pub type ResponseBody<B> = ObservedBody<B, TracingObserver>;

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for TracingService<S>
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

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let grpc = is_grpc(&request);
        // Headers are taken out so the client side can write into them while
        // the call info borrows the rest of the request.
        let mut headers = std::mem::take(request.headers_mut());
        let call = if self.layer.side.is_server() {
            let authority = address::request_authority(request.uri(), &headers);
            let info = call_info(&request, authority, grpc, Side::Server);
            self.layer
                .tracing
                .start_server(&info, &RequestHeaders::new(&headers))
        } else {
            let authority = request.uri().authority().map(http::uri::Authority::as_str);
            let mut info = call_info(&request, authority, grpc, Side::Client);
            if let Some(name) = &self.layer.server_address {
                info = info.with_server(Host::Name(name), None);
            }
            self.layer
                .tracing
                .start_client(&info, &mut HeaderInjector(&mut headers))
        };
        *request.headers_mut() = headers;
        let observer = TracingObserver {
            call,
            side: self.layer.side,
        };
        // The inner `call` may already do work: run it in the span too.
        let future = {
            let _scope = observer.scope();
            self.inner.call(request)
        };
        ObservedFuture::new(future, observer, grpc)
    }
}

/// What the layer knows of a request: gRPC by its path, HTTP by its
/// method and, on servers, the route template when the router already
/// matched it. `authority` is where the request was addressed: a server's
/// `:authority` or `Host`, a client's URI authority.
fn call_info<'a, B: http_body::Body>(
    request: &'a Request<B>,
    authority: Option<&'a str>,
    grpc: bool,
    side: Side,
) -> CallInfo<'a> {
    let uri = request.uri();
    let mut info = if grpc {
        CallInfo::grpc(uri.path())
    } else {
        let route = if side.is_server() {
            RouteTemplate::of(request.extensions()).unwrap_or("")
        } else {
            ""
        };
        CallInfo::http(request.method().as_str(), route).with_url(UrlParts::of(uri))
    };
    info = info.with_request_size(request.body().size_hint().exact());
    let Some(authority) = authority else {
        return info;
    };
    let (host, port) = address::split_authority(authority);
    if host.is_empty() {
        return info;
    }
    if !side.is_server() {
        // A client connects to the address its URI names, when that is one.
        let peer = port.and_then(|port| Some(SocketAddr::new(host.parse().ok()?, port)));
        info = info.with_peer(peer);
    }
    info.with_server(Host::Name(host), port)
}
