//! Volo HTTP. Servers: `http_route` is the route template the router
//! matched (`/users/{id}`), never the raw path; unmatched requests are
//! recorded under [`OTHER`](crate::OTHER). Clients: `server_address` and
//! `server_port` are the request URI's host and port, else the callee's
//! static address, else its name.

use http_body::Body as _;
use motore::{layer::Layer, service::Service};
use volo::{context::Context as _, net::Address};
use volo_http::{
    context::{ClientContext, ServerContext},
    error::ClientError,
    request::Request,
    response::Response,
    server::{route::MatchedPath, IntoResponse},
};

use super::address::IpText;
use crate::{Call, CallRecorder, Outcome, RpcMetrics, Side};

/// Records every request through a Volo HTTP server or client (the side
/// follows from the context type).
///
/// On servers, add it with `Server::layer` so it sees every request: the
/// route is read from the router's `MatchedPath` once the router has run.
/// On clients, add it with `ClientBuilder::layer_outer`.
///
/// Routes listed in [`RpcMetricsBuilder::skip_http_routes`](crate::RpcMetricsBuilder::skip_http_routes)
/// are left out on servers: a request whose path is a listed template
/// without parameters (`/healthz`) records nothing at all; one the router
/// matched to a listed template with parameters (`/debug/{name}`) is known
/// only after the router ran, so it is counted in flight while it runs,
/// then records no duration and no size.
///
/// A server and a client, one call between them:
///
/// ```
/// use rpc_ext_metrics::{volo::HttpMetricsLayer, RpcMetrics};
/// use volo_http::server::route::{get, Router};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let metrics = RpcMetrics::builder().build()?;
/// let router: Router = Router::new().route("/users/{id}", get(|| async { "a user" }));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// let server = volo_http::server::Server::new(router).layer(HttpMetricsLayer::new(&metrics));
/// tokio::spawn(server.run(volo::net::incoming::DefaultIncoming::from(listener)));
///
/// let client = volo_http::client::Client::builder()
///     .layer_outer(HttpMetricsLayer::new(&metrics))
///     .build()?;
/// let response = client
///     .get(format!("http://{addr}/users/7"))
///     .send::<volo_http::body::Body>()
///     .await?;
/// assert_eq!(response.status(), 200);
///
/// let text = rpc_ext_metrics::encode_text(metrics.registry())?;
/// // The server's series is labelled by the route template, never the path.
/// assert!(text.contains(r#"http_route="/users/{id}""#), "{text}");
/// assert!(text.contains("http_client_request_duration_seconds_count"), "{text}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HttpMetricsLayer {
    metrics: RpcMetrics,
}

impl HttpMetricsLayer {
    /// Records into `metrics` (`http_server_*` or `http_client_*`; with
    /// [`Conventions::Old`](crate::Conventions::Old), `rpc_server_*` or
    /// `rpc_client_*` with `rpc_system="http"`).
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
        // Normalized at once: `call` borrows nothing from the request.
        let call = Call::http(Side::Server, request.method())
            .url_scheme(request.uri().scheme_str().unwrap_or("http"));
        // The router runs inside: before it, a listed route template
        // without parameters is left out by the path; one with parameters
        // once the router has matched it (see `relabel`).
        let mut recorder = if metrics.skips_http_path(request.uri().path()) {
            CallRecorder::skipped()
        } else {
            metrics.start_call(call)
        };
        if let Some(size) = rpc_ext_core::content_length(request.headers()) {
            recorder.request_size(size);
        }
        let response = match self.inner.call(cx, request).await {
            Ok(response) => response.into_response(),
            Err(error) => error.into_response(),
        };
        if let Some(route) = cx.extensions().get::<MatchedPath>() {
            recorder.relabel(metrics, call.route(route.as_str()));
        }
        let size = response.body().size_hint().exact();
        recorder.finish(Outcome::Http(response.status().as_u16()), size);
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
        let mut recorder = {
            let uri = request.uri();
            let callee = cx.rpc_info().callee();
            let name = callee.service_name_ref();
            let mut ip = IpText::default();
            let host = uri
                .host()
                .map(|host| host.trim_start_matches('[').trim_end_matches(']'));
            let (address, port) = match (host, &callee.address) {
                (Some(host), _) => {
                    let default_port = match uri.scheme_str() {
                        Some("https") => 443,
                        _ => 80,
                    };
                    (host, Some(uri.port_u16().unwrap_or(default_port)))
                }
                (None, Some(Address::Ip(addr))) => (ip.format(addr.ip()), Some(addr.port())),
                (None, _) => (name, None),
            };
            let call = Call::http(Side::Client, request.method())
                .server_address(address, port)
                .peer_service(host.unwrap_or(name));
            self.layer.metrics.start_call(call)
        };
        if let Some(size) = rpc_ext_core::content_length(request.headers()) {
            recorder.request_size(size);
        }
        let result = self.inner.call(cx, request).await;
        match &result {
            Ok(response) => recorder.finish(
                Outcome::Http(response.status().as_u16()),
                response.body().size_hint().exact(),
            ),
            Err(_) => recorder.finish(Outcome::Failed, None),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use motore::{layer::Layer, service::Service};
    use volo_http::{
        body::Body,
        context::ServerContext,
        request::Request,
        server::route::{get, Router},
    };

    use super::HttpMetricsLayer;
    use crate::{Conventions, RpcMetrics};

    /// Serves `paths` through the layer in front of a router, as
    /// `Server::layer` puts it.
    async fn serve(metrics: &RpcMetrics, paths: &[&str]) {
        let router: Router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/debug/{name}", get(|| async { "debug" }))
            .route("/users/{id}", get(|| async { "a user" }));
        let service = HttpMetricsLayer::new(metrics).layer(router);
        for path in paths {
            let mut cx = ServerContext::new(volo::net::Address::from(
                "127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap(),
            ));
            let request = Request::builder().uri(*path).body(Body::empty()).unwrap();
            let response = service.call(&mut cx, request).await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
    }

    #[tokio::test]
    async fn listed_routes_record_no_call() {
        let metrics = RpcMetrics::builder()
            .conventions(Conventions::Current)
            .skip_http_routes(["/healthz", "/debug/{name}"])
            .build()
            .unwrap();
        // `/healthz` is left out by its path, before the router runs;
        // `/debug/{name}` once the router matched it.
        serve(&metrics, &["/healthz", "/debug/x"]).await;
        let text = crate::encode_text(metrics.registry()).unwrap();
        assert!(!text.contains("http_server_request_duration"), "{text}");
        // The route with parameters was in flight while it ran.
        assert!(
            text.contains(
                r#"http_server_active_requests{http_request_method="GET",url_scheme="http"} 0"#
            ),
            "{text}"
        );

        serve(&metrics, &["/users/1"]).await;
        let text = crate::encode_text(metrics.registry()).unwrap();
        assert!(
            text.contains(r#"http_server_request_duration_seconds_count{error_type="",http_request_method="GET",http_response_status_code="200",http_route="/users/{id}",url_scheme="http"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains("healthz") && !text.contains("debug"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_route_left_out_by_its_path_is_never_in_flight() {
        let metrics = RpcMetrics::builder()
            .skip_http_routes(["/healthz"])
            .build()
            .unwrap();
        serve(&metrics, &["/healthz"]).await;
        let text = crate::encode_text(metrics.registry()).unwrap();
        assert!(text.lines().all(|line| line.starts_with('#')), "{text}");
    }

    #[tokio::test]
    async fn routes_are_recorded_by_default() {
        let metrics = RpcMetrics::builder()
            .conventions(Conventions::Current)
            .build()
            .unwrap();
        serve(&metrics, &["/healthz", "/debug/x"]).await;
        let text = crate::encode_text(metrics.registry()).unwrap();
        for route in ["/healthz", "/debug/{name}"] {
            assert!(text.contains(&format!(r#"http_route="{route}""#)), "{text}");
        }
    }
}
