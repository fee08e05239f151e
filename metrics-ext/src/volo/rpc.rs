//! Volo gRPC and Volo Thrift, servers and clients.
//!
//! Labels come from Volo's `RpcInfo`: for gRPC the method path
//! (`/package.Service/Method`), for Thrift the callee's service name and the
//! method name. On the server these come from the wire, so a method becomes
//! a series only once a call to it succeeded
//! ([`RpcMetrics::start_untrusted_call`]).

use motore::{layer::Layer, service::Service};
use volo::{context::Context, net::Address};

use super::address::IpText;
use crate::{
    thrift::{self, ThriftErrorKind},
    Call, GrpcCode, Outcome, RpcMetrics, RpcSystem, Side,
};

/// How the errors of a Volo framework map to an [`Outcome`].
pub trait RpcOutcome {
    /// The RPC system of this error type.
    const SYSTEM: RpcSystem;
    /// The outcome of a successful call.
    const OK: Outcome;
    /// The outcome of a call that ended with this error.
    fn outcome(&self) -> Outcome;
}

impl RpcOutcome for volo_grpc::Status {
    const SYSTEM: RpcSystem = RpcSystem::Grpc;
    const OK: Outcome = Outcome::Grpc(GrpcCode::OK);

    fn outcome(&self) -> Outcome {
        Outcome::Grpc(GrpcCode::new(self.code() as i32))
    }
}

impl RpcOutcome for volo_thrift::ServerError {
    const SYSTEM: RpcSystem = RpcSystem::Thrift;
    const OK: Outcome = Outcome::Thrift(thrift::OK);

    fn outcome(&self) -> Outcome {
        Outcome::Thrift(self.error_kind())
    }
}

impl RpcOutcome for volo_thrift::ClientError {
    const SYSTEM: RpcSystem = RpcSystem::Thrift;
    const OK: Outcome = Outcome::Thrift(thrift::OK);

    fn outcome(&self) -> Outcome {
        Outcome::Thrift(self.error_kind())
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
    /// Set by [`MetricsLayer::server_address`]; else the callee's address
    /// or name.
    server_address: Option<std::sync::Arc<str>>,
}

impl MetricsLayer {
    /// Server side: `rpc_server_*`.
    #[must_use]
    pub fn server(metrics: &RpcMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
            side: Side::Server,
            server_address: None,
        }
    }

    /// Client side: `rpc_client_*`. `server_address` and `server_port` are
    /// the callee's static address when the client has one at call start
    /// (`.address(..)` on the client builder), else `server_address` is the
    /// callee's service name (the name given to the client builder, which
    /// discovery resolves), unless
    /// [`server_address`](Self::server_address) says otherwise. The old
    /// names' `peer_service` is the callee's service name.
    #[must_use]
    pub fn client(metrics: &RpcMetrics) -> Self {
        Self {
            metrics: metrics.clone(),
            side: Side::Client,
            server_address: None,
        }
    }

    /// The `server_address` of a client's calls (and the old names'
    /// `peer_service`), with no `server_port`, instead of the callee's
    /// address or name. Ignored on servers.
    ///
    /// ```
    /// let metrics = rpc_ext_metrics::RpcMetrics::builder().build().unwrap();
    /// let layer = rpc_ext_metrics::volo::MetricsLayer::client(&metrics).server_address("echo");
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn server_address(mut self, name: impl Into<std::sync::Arc<str>>) -> Self {
        if self.side == Side::Client {
            self.server_address = Some(name.into());
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
            let callee = info.callee();
            let (service, method) = rpc_ext_core::grpc_service_method(path)
                .unwrap_or((callee.service_name_ref(), path));
            let MetricsLayer {
                metrics,
                side,
                server_address,
            } = &self.layer;
            let call = Call::rpc(*side, S::Error::SYSTEM, service, method);
            match (side, server_address) {
                (Side::Server, _) => metrics.start_untrusted_call(call),
                (Side::Client, Some(name)) => {
                    metrics.start_call(call.server_address(name, None).peer_service(name))
                }
                (Side::Client, None) => {
                    let mut ip = IpText::default();
                    let name = callee.service_name_ref();
                    let (address, port) = match &callee.address {
                        Some(Address::Ip(addr)) => (ip.format(addr.ip()), Some(addr.port())),
                        _ => (name, None),
                    };
                    metrics.start_call(call.server_address(address, port).peer_service(name))
                }
            }
        };
        let result = self.inner.call(cx, req).await;
        let outcome = match &result {
            Ok(_) => S::Error::OK,
            Err(error) => error.outcome(),
        };
        recorder.finish(outcome, None);
        result
    }
}
