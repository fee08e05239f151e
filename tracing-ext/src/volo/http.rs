//! Volo HTTP: on servers the caller's context comes from the request
//! headers and spans are named `METHOD route`, with the route template the
//! router matched (`GET /users/{id}`), the method alone when none did,
//! never the raw path (that is `url.path`); on clients the span (named by
//! the method, with `url.full`) is a child of the current context, which
//! is written into the request headers.

use motore::{layer::Layer, service::Service};
use volo::context::Context as _;
use volo_http::{
    context::{ClientContext, ServerContext},
    error::ClientError,
    request::Request,
    response::Response,
    server::{route::MatchedPath, IntoResponse},
};

use volo_http::client::target::{RemoteHost, RemoteTarget, Target};

use super::ip;
use crate::{
    address, propagation::RequestHeaders, CallInfo, HeaderInjector, Host, Outcome, RpcTracing,
    UrlParts,
};

/// `host[:port]` of a client's target, as its URL names it (IPv6 in
/// brackets, the scheme's default port left out).
fn authority_of(remote: &RemoteTarget) -> String {
    let host = match &remote.host {
        RemoteHost::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        RemoteHost::Ip(ip) => ip.to_string(),
        RemoteHost::Name(name) => name.to_string(),
    };
    if address::default_port(remote.scheme.as_str()) == Some(remote.port) {
        host
    } else {
        format!("{host}:{}", remote.port)
    }
}

/// Traces every request through a Volo HTTP server or client (the side
/// follows from the context type).
///
/// A server and a client, one call between them: the client's span is the
/// parent of the server's, which is named by the matched route.
///
/// ```
/// use opentelemetry::trace::TraceContextExt;
/// use rpc_ext_tracing::{volo::HttpTracingLayer, RpcTracing};
/// use volo_http::{
///     body::BodyConversion,
///     server::route::{get, Router},
/// };
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
/// let tracing = RpcTracing::builder().tracer_provider(&provider).build();
///
/// // The handler answers with the trace id its span belongs to.
/// let router: Router = Router::new().route(
///     "/users/{id}",
///     get(|| async {
///         opentelemetry::Context::current().span().span_context().trace_id().to_string()
///     }),
/// );
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// let server = volo_http::server::Server::new(router).layer(HttpTracingLayer::new(&tracing));
/// tokio::spawn(server.run(volo::net::incoming::DefaultIncoming::from(listener)));
///
/// let client = volo_http::client::Client::builder()
///     .layer_outer(HttpTracingLayer::new(&tracing))
///     .build()?;
/// let response = client
///     .get(format!("http://{addr}/users/7"))
///     .send::<volo_http::body::Body>()
///     .await?;
/// let trace_id = response.into_body().into_string().await?;
/// assert_eq!(trace_id.len(), 32, "the server's span continued the client's trace");
/// # Ok(()) }
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
        let call = {
            let (host, port) = address::request_authority(request.uri(), request.headers())
                .map_or(("", None), address::split_authority);
            let mut info = CallInfo::http(request.method().as_str(), "")
                .with_url(UrlParts::of(request.uri()))
                .with_peer(ip(cx.rpc_info().caller().address()));
            if !host.is_empty() {
                info = info.with_server(Host::Name(host), port);
            }
            self.layer
                .tracing
                .start_server(&info, &RequestHeaders::new(request.headers()))
        };
        let result = call.run(self.inner.call(cx, request)).await;
        let response = match result {
            Ok(response) => response.into_response(),
            Err(error) => error.into_response(),
        };
        // The router ran inside: the route it matched is known only now.
        if let Some(route) = cx.extensions().get::<MatchedPath>() {
            call.set_http_route(route.as_str());
        }
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
        let mut headers = std::mem::take(request.headers_mut());
        let call = {
            // The request carries only the path: the target is in the context.
            let target = match cx.target() {
                Target::Remote(remote) => Some(remote),
                _ => None,
            };
            let authority = target.map(authority_of);
            let mut url = UrlParts::of(request.uri());
            if let Some(remote) = target {
                url.scheme = Some(remote.scheme.as_str());
                url.authority = authority.as_deref();
            }
            let info = CallInfo::http(request.method().as_str(), "").with_url(url);
            let info = match target {
                Some(remote) => {
                    let host = match &remote.host {
                        RemoteHost::Ip(ip) => Host::Ip(*ip),
                        RemoteHost::Name(name) => Host::Name(name.as_str()),
                    };
                    info.with_server(host, Some(remote.port))
                }
                None => super::client_target(info, cx.rpc_info().callee()),
            };
            self.layer
                .tracing
                .start_client(&info, &mut HeaderInjector(&mut headers))
        };
        *request.headers_mut() = headers;
        let result = call.run(self.inner.call(cx, request)).await;
        let mut outcome = match &result {
            Ok(response) => Outcome {
                http_status: Some(response.status().as_u16()),
                ..Outcome::default()
            },
            Err(_) => Outcome {
                error_type: Some("transport".into()),
                ..Outcome::default()
            },
        };
        // Name resolution and load balancing chose the address during the call.
        outcome.peer_addr = ip(cx.rpc_info().callee().address());
        call.finish(&outcome);
        result
    }
}
