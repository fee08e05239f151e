//! Echo servers for both frameworks: each answers with the message and the
//! address that served it, and fails on demand (`message == "fail"`) so that
//! error paths can be exercised.

use std::net::SocketAddr;

use crate::{tonic_gen, volo_gen};

/// The message that makes an Echo server answer with an error.
pub const FAIL: &str = "fail";

/// Volo gRPC implementation of Echo.
#[derive(Clone)]
pub struct VoloEcho {
    pub served_by: SocketAddr,
}

impl volo_gen::echo::Echo for VoloEcho {
    async fn say(
        &self,
        request: volo_grpc::Request<volo_gen::echo::SayRequest>,
    ) -> Result<volo_grpc::Response<volo_gen::echo::SayReply>, volo_grpc::Status> {
        let message = request.into_inner().message;
        tracing::info!(%message, "volo echo handling a request");
        if message == FAIL {
            return Err(volo_grpc::Status::invalid_argument("asked to fail"));
        }
        Ok(volo_grpc::Response::new(volo_gen::echo::SayReply {
            message,
            served_by: self.served_by.to_string().into(),
        }))
    }
}

/// tonic implementation of Echo.
#[derive(Clone)]
pub struct TonicEcho {
    pub served_by: SocketAddr,
}

#[tonic::async_trait]
impl tonic_gen::echo_server::Echo for TonicEcho {
    async fn say(
        &self,
        request: tonic::Request<tonic_gen::SayRequest>,
    ) -> Result<tonic::Response<tonic_gen::SayReply>, tonic::Status> {
        let message = request.into_inner().message;
        tracing::info!(%message, "tonic echo handling a request");
        if message == FAIL {
            return Err(tonic::Status::invalid_argument("asked to fail"));
        }
        Ok(tonic::Response::new(tonic_gen::SayReply {
            message,
            served_by: self.served_by.to_string(),
        }))
    }
}

/// Serves Volo Echo on `listener`, traced with `tracing`, until `shutdown`
/// resolves.
pub async fn serve_volo(
    listener: tokio::net::TcpListener,
    tracing: &rpc_ext_tracing::RpcTracing,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let served_by = listener.local_addr()?;
    volo_grpc::server::Server::new()
        .layer_front(rpc_ext_tracing::volo::GrpcTracingLayer::server(tracing))
        .add_service(
            volo_grpc::server::ServiceBuilder::new(volo_gen::echo::EchoServer::new(VoloEcho {
                served_by,
            }))
            .build(),
        )
        .run_with_shutdown(
            volo::net::incoming::DefaultIncoming::from(listener),
            async {
                shutdown.await;
                Ok(())
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("volo server failed: {e}"))
}

/// Serves tonic Echo on `listener`, traced with `tracing`, until `shutdown`
/// resolves.
pub async fn serve_tonic(
    listener: tokio::net::TcpListener,
    tracing: &rpc_ext_tracing::RpcTracing,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let served_by = listener.local_addr()?;
    tonic::transport::Server::builder()
        .layer(rpc_ext_tracing::tower::TracingLayer::server(tracing))
        .add_service(tonic_gen::echo_server::EchoServer::new(TonicEcho {
            served_by,
        }))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
