//! Volo gRPC and Volo Thrift, servers and clients.
//!
//! Labels come from Volo's `RpcInfo`: for gRPC the method path
//! (`/package.Service/Method`), for Thrift the callee's service name and the
//! method name. On the server these come from the wire, so a method the
//! server does not know never becomes a series.

use motore::{layer::Layer, service::Service};
use volo::context::Context;

use crate::{
    thrift::{self, ThriftErrorKind},
    GrpcCode, RpcMetrics, RpcSystem, Side,
};

/// How an RPC error of a Volo framework maps to the `status_code` label.
pub trait RpcOutcome {
    /// The RPC system of this error type.
    const SYSTEM: RpcSystem;
    /// The label of a successful call.
    const OK: &'static str;
    /// The label of this error.
    fn status_label(&self) -> &'static str;
}

impl RpcOutcome for volo_grpc::Status {
    const SYSTEM: RpcSystem = RpcSystem::Grpc;
    const OK: &'static str = "0";

    fn status_label(&self) -> &'static str {
        GrpcCode::new(self.code() as i32).as_label()
    }
}

impl RpcOutcome for volo_thrift::ServerError {
    const SYSTEM: RpcSystem = RpcSystem::Thrift;
    const OK: &'static str = thrift::OK;

    fn status_label(&self) -> &'static str {
        self.error_kind()
    }
}

impl RpcOutcome for volo_thrift::ClientError {
    const SYSTEM: RpcSystem = RpcSystem::Thrift;
    const OK: &'static str = thrift::OK;

    fn status_label(&self) -> &'static str {
        self.error_kind()
    }
}

/// Records every call through a Volo service into [`RpcMetrics`]. A
/// client takes it the same way, on the generated client builder:
/// `EchoClientBuilder::new("echo").layer_outer(MetricsLayer::client(&metrics))`
/// (`examples/src/bin/wiring.rs` runs both and makes a call).
///
/// ```
/// use rpc_ext_metrics::{volo::MetricsLayer, RpcMetrics};
///
/// let metrics = RpcMetrics::builder().build().unwrap();
/// let server = volo_grpc::server::Server::new().layer_front(MetricsLayer::server(&metrics));
/// // server.add_service(...).run(address).await
/// # let _ = server;
/// ```
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: RpcMetrics,
    side: Side,
    /// Set by [`MetricsLayer::peer_service`]; else the callee's name.
    peer_service: Option<std::sync::Arc<str>>,
}

impl MetricsLayer {
    /// Server side: `rpc_server_*`.
    #[must_use]
    pub fn server(metrics: &RpcMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
            side: Side::Server,
            peer_service: None,
        }
    }

    /// Client side: `rpc_client_*`; the `peer_service` label is the
    /// callee's service name as the client knows it (the name given to the
    /// client builder), unless [`peer_service`](Self::peer_service) says
    /// otherwise.
    #[must_use]
    pub fn client(metrics: &RpcMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
            side: Side::Client,
            peer_service: None,
        }
    }

    /// The `peer_service` label of a client's calls, instead of the
    /// callee's service name (ignored on servers).
    #[must_use]
    pub fn peer_service(mut self, name: impl Into<std::sync::Arc<str>>) -> Self {
        if self.side == Side::Client {
            self.peer_service = Some(name.into());
        }
        self
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(self, inner: S) -> Self::Service {
        MetricsService { inner, layer: self }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    layer: MetricsLayer,
}

impl<Cx, Req, S> Service<Cx, Req> for MetricsService<S>
where
    Cx: Context + Send + 'static,
    Req: Send + 'static,
    S: Service<Cx, Req> + Send + Sync + 'static,
    S::Error: RpcOutcome,
{
    type Response = S::Response;
    type Error = S::Error;

    async fn call(&self, cx: &mut Cx, req: Req) -> Result<Self::Response, Self::Error> {
        let recorder = {
            let info = cx.rpc_info();
            let path = info.method().as_str();
            let callee = info.callee().service_name_ref();
            let (service, method) =
                rpc_ext_core::grpc_service_method(path).unwrap_or((callee, path));
            let MetricsLayer {
                metrics,
                side,
                peer_service,
            } = &self.layer;
            match side {
                Side::Server => {
                    metrics.start_untrusted_call(*side, S::Error::SYSTEM, service, method, "")
                }
                Side::Client => {
                    let peer = peer_service.as_deref().unwrap_or(callee);
                    metrics.start_call(*side, S::Error::SYSTEM, service, method, peer)
                }
            }
        };
        let result = self.inner.call(cx, req).await;
        let status = match &result {
            Ok(_) => S::Error::OK,
            Err(error) => error.status_label(),
        };
        recorder.finish(status, None);
        result
    }
}
