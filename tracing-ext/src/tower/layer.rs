//! [`TracingLayer`] and the [`TracingService`] it wraps around a service.

use std::{
    net::SocketAddr,
    task::{Context, Poll},
};

use http::{Request, Response};
use rpc_ext_core::{is_grpc, CallObserver, ObservedBody, ObservedFuture, ServerTarget, Side};

use super::RouteTemplate;
pub use crate::observer::TracingObserver;
use crate::{
    address, propagation::RequestHeaders, CallInfo, HeaderInjector, Host, RpcTracing, UrlParts,
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
    server_address: Option<ServerTarget>,
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

    /// The target of a client's calls, as the client was configured with
    /// it, instead of the request URI's host and port: an authority, parsed
    /// into `server.address` and `server.port` — a name (`echo`: no port),
    /// an address and port (`127.0.0.1:50051`), a bracketed IPv6 address
    /// (`[::1]:50051`, recorded as `::1`). Text that is not an authority is
    /// the address as it stands. Ignored on servers.
    ///
    /// ```
    /// use rpc_ext_tracing::{tower::TracingLayer, RpcTracing};
    ///
    /// let tracing = RpcTracing::builder().build();
    /// // server.address = "echo", no server.port:
    /// let by_name = TracingLayer::client(&tracing).server_address("echo");
    /// // server.address = "::1", server.port = 50051:
    /// let addr: std::net::SocketAddr = "[::1]:50051".parse().unwrap();
    /// let by_address = TracingLayer::client(&tracing).server_address(addr.to_string());
    /// # let _ = (by_name, by_address);
    /// ```
    #[must_use]
    pub fn server_address(mut self, authority: impl AsRef<str>) -> Self {
        if !self.side.is_server() {
            self.server_address = Some(ServerTarget::parse(authority.as_ref()));
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
            if let Some(target) = &self.layer.server_address {
                info = info.with_server(Host::Name(target.address()), target.port());
            }
            self.layer
                .tracing
                .start_client(&info, &mut HeaderInjector(&mut headers))
        };
        *request.headers_mut() = headers;
        let observer = TracingObserver::new(call, self.layer.side);
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use opentelemetry::trace::SpanKind;
    use tower::{service_fn, Layer, ServiceExt};

    use super::TracingLayer;
    use crate::testing::{attr, Recorded};

    /// `server.address` and `server.port` of a tonic client's call (a
    /// path-only URI) through a client layer told `authority`.
    async fn target(authority: &str) -> (Option<String>, Option<String>) {
        let (tracing, recorded) = Recorded::tracing(|builder| builder);
        let client = TracingLayer::client(&tracing)
            .server_address(authority)
            .layer(service_fn(|_: http::Request<Empty<Bytes>>| async {
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "0")
                    .body(Empty::<Bytes>::new());
                Ok::<_, Infallible>(response.unwrap())
            }));
        let request = http::Request::builder()
            .uri("/echo.Echo/Say")
            .header("content-type", "application/grpc")
            .body(Empty::new())
            .unwrap();
        let response = client.oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        let span = recorded.only();
        assert_eq!(span.span_kind, SpanKind::Client);
        (
            attr(&span.attributes, "server.address"),
            attr(&span.attributes, "server.port"),
        )
    }

    #[tokio::test]
    async fn a_configured_target_is_read_as_an_authority() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(target("echo").await, (some("echo"), None));
        assert_eq!(
            target("127.0.0.1:50051").await,
            (some("127.0.0.1"), some("50051"))
        );
        assert_eq!(target("[::1]:50051").await, (some("::1"), some("50051")));
        assert_eq!(target("not a host").await, (some("not a host"), None));
    }
}
