//! The client under test: Volo gRPC, resolving through `EtcdResolver` and
//! `VoloDiscover`, with the metrics and tracing layers; and a layer that
//! notes which instance the load balancer picked for each call, so that a
//! failure can be traced to a killed server.

use std::{cell::Cell, net::SocketAddr, time::Duration};

use echo::volo_gen;
use faststr::FastStr;
use rpc_ext_metrics::RpcMetrics;
use rpc_ext_registry::{etcd::EtcdResolver, volo::VoloDiscover};
use rpc_ext_tracing::RpcTracing;
use volo::context::Context as _;

use super::DISCOVERY_SERVICE;

/// What every call sends and expects back.
const MESSAGE: &str = "soak";

/// A call that has no answer by then failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

tokio::task_local! {
    /// Set by the caller around one call; the layer below the load
    /// balancer writes the picked instance into it.
    static PICKED: Cell<Option<SocketAddr>>;
}

pub fn build(
    resolver: EtcdResolver,
    metrics: &RpcMetrics,
    tracing: &RpcTracing,
) -> volo_gen::echo::EchoClient {
    // Tracing outermost, as in the quickstart; the recorder below the load
    // balancer, where the instance is known.
    volo_gen::echo::EchoClientBuilder::new(DISCOVERY_SERVICE)
        .discover(VoloDiscover::new(resolver))
        .layer_inner(RecordPickedLayer)
        .layer_outer(rpc_ext_metrics::volo::MetricsLayer::client(metrics))
        .layer_outer(rpc_ext_tracing::volo::GrpcTracingLayer::client(tracing))
        .build()
}

/// One call: `Ok` when the echo came back, else why not; and the instance
/// the load balancer picked, if it picked one.
pub async fn call(client: &volo_gen::echo::EchoClient) -> (Result<(), String>, Option<SocketAddr>) {
    PICKED
        .scope(Cell::new(None), async {
            let request = volo_gen::echo::SayRequest {
                message: FastStr::from_static_str(MESSAGE),
            };
            let outcome = match tokio::time::timeout(CALL_TIMEOUT, client.say(request)).await {
                Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
                Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
                Ok(Ok(reply)) if reply.get_ref().message == MESSAGE => Ok(()),
                Ok(Ok(reply)) => Err(format!("wrong reply {:?}", reply.get_ref().message)),
            };
            (outcome, PICKED.with(Cell::get))
        })
        .await
}

#[derive(Clone, Copy)]
struct RecordPickedLayer;

impl<S> motore::layer::Layer<S> for RecordPickedLayer {
    type Service = RecordPicked<S>;

    fn layer(self, inner: S) -> Self::Service {
        RecordPicked { inner }
    }
}

#[derive(Clone)]
struct RecordPicked<S> {
    inner: S,
}

impl<Req, S> motore::service::Service<volo_grpc::context::ClientContext, Req> for RecordPicked<S>
where
    Req: Send + 'static,
    S: motore::service::Service<volo_grpc::context::ClientContext, Req> + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;

    async fn call(
        &self,
        cx: &mut volo_grpc::context::ClientContext,
        request: Req,
    ) -> Result<Self::Response, Self::Error> {
        if let Some(volo::net::Address::Ip(address)) = cx.rpc_info().callee().address() {
            // Outside a soak call's scope there is nothing to note.
            let _ = PICKED.try_with(|picked| picked.set(Some(address)));
        }
        self.inner.call(cx, request).await
    }
}
