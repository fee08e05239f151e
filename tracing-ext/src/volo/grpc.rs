//! Volo gRPC: the context travels in the gRPC metadata as `traceparent`,
//! `tracestate` and `baggage` (the same headers tonic and other OpenTelemetry
//! SDKs use), so Volo and tonic services join one trace.

use motore::{layer::Layer, service::Service};
use volo::context::Context;

use super::{client_target, ip};

use rpc_ext_core::{GrpcCode, Side};

use crate::{propagation::RequestHeaders, CallInfo, HeaderInjector, Outcome, RpcTracing};

/// Traces every call through a Volo gRPC service. A client takes it the
/// same way, on the generated client builder:
/// `EchoClientBuilder::new("echo").layer_outer(GrpcTracingLayer::client(&tracing))`
/// (`examples/src/bin/wiring.rs` runs both and makes a call).
///
/// Spans are named by the full method (`echo.Echo/Say`). A server span
/// carries the caller's address as `network.peer.*`; a client span the
/// target as `server.address` (the static address the client was given,
/// else the name it discovers, without a port) and, once the call is
/// done, the address load balancing picked as `network.peer.*`.
///
/// ```
/// use rpc_ext_tracing::{volo::GrpcTracingLayer, RpcTracing};
///
/// let tracing = RpcTracing::builder().build();
/// let server = volo_grpc::server::Server::new().layer_front(GrpcTracingLayer::server(&tracing));
/// // server.add_service(...).run(address).await
/// # let _ = server;
/// ```
#[derive(Debug, Clone)]
pub struct GrpcTracingLayer {
    tracing: RpcTracing,
    side: Side,
}

impl GrpcTracingLayer {
    /// Server side: continue the caller's trace, run the call in the span.
    #[must_use]
    pub fn server(tracing: &RpcTracing) -> Self {
        Self {
            tracing: tracing.clone(),
            side: Side::Server,
        }
    }

    /// Client side: a child of the current context, sent in the metadata.
    #[must_use]
    pub fn client(tracing: &RpcTracing) -> Self {
        Self {
            tracing: tracing.clone(),
            side: Side::Client,
        }
    }
}

impl<S> Layer<S> for GrpcTracingLayer {
    type Service = GrpcTracingService<S>;

    fn layer(self, inner: S) -> Self::Service {
        GrpcTracingService { inner, layer: self }
    }
}

/// The service made by [`GrpcTracingLayer`].
#[derive(Debug, Clone)]
pub struct GrpcTracingService<S> {
    inner: S,
    layer: GrpcTracingLayer,
}

impl<Cx, T, S> Service<Cx, volo_grpc::Request<T>> for GrpcTracingService<S>
where
    Cx: Context + Send + 'static,
    T: Send + 'static,
    S: Service<Cx, volo_grpc::Request<T>, Error = volo_grpc::Status> + Send + Sync + 'static,
    S::Response: Send,
{
    type Response = S::Response;
    type Error = volo_grpc::Status;

    async fn call(
        &self,
        cx: &mut Cx,
        mut request: volo_grpc::Request<T>,
    ) -> Result<Self::Response, Self::Error> {
        let server = self.layer.side.is_server();
        let call = {
            let rpc = cx.rpc_info();
            let info = CallInfo::grpc(rpc.method().as_str());
            if server {
                self.layer.tracing.start_server(
                    &info.with_peer(ip(rpc.caller().address())),
                    &RequestHeaders::new(request.metadata().headers()),
                )
            } else {
                self.layer.tracing.start_client(
                    &client_target(info, rpc.callee()),
                    &mut HeaderInjector(request.metadata_mut().headers_mut()),
                )
            }
        };
        let result = call.run(self.inner.call(cx, request)).await;
        let code = match &result {
            Ok(_) => GrpcCode::OK,
            Err(status) => GrpcCode::new(status.code() as i32),
        };
        call.finish(&Outcome {
            grpc_code: Some(code),
            // Load balancing chose the address during the call.
            peer_addr: if server {
                None
            } else {
                ip(cx.rpc_info().callee().address())
            },
            ..Outcome::default()
        });
        result
    }
}
