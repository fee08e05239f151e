//! Echo servers for both frameworks: each answers with the message and the
//! address that served it, and fails on demand (`message == "fail"`) so that
//! error paths can be exercised: `Say` with INVALID_ARGUMENT, the streaming
//! methods with [`STREAM_FAILURE`] mid-stream (see `proto/echo.proto`).

use std::{net::SocketAddr, pin::Pin, time::Duration};

use futures::{Stream, StreamExt};

use crate::{
    streaming::{echo_each, paced},
    tonic_gen, volo_gen,
};

/// The message that makes an Echo server answer with an error.
pub const FAIL: &str = "fail";

/// The status a streaming call fails with on [`FAIL`]: UNAVAILABLE (14), a
/// server error, so that both sides count the call as failed.
pub const STREAM_FAILURE: i32 = 14;

const STREAM_FAILURE_MESSAGE: &str = "asked to fail mid-stream";

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

    async fn count(
        &self,
        request: volo_grpc::Request<volo_gen::echo::CountRequest>,
    ) -> Result<volo_grpc::Response<VoloReplies>, volo_grpc::Status> {
        let request = request.into_inner();
        let end = if request.message == FAIL {
            Err(volo_grpc::Status::unavailable(STREAM_FAILURE_MESSAGE))
        } else {
            Ok(())
        };
        let served_by = self.served_by;
        let replies = paced(
            request.count,
            Duration::from_millis(request.interval_ms.into()),
            end,
            move |n| volo_reply(format!("{} {n}", request.message), served_by),
        );
        Ok(volo_grpc::Response::new(replies.boxed()))
    }

    async fn collect(
        &self,
        request: volo_grpc::Request<volo_grpc::RecvStream<volo_gen::echo::SayRequest>>,
    ) -> Result<volo_grpc::Response<volo_gen::echo::SayReply>, volo_grpc::Status> {
        let mut requests = request.into_inner();
        let mut messages = Vec::new();
        while let Some(request) = requests.next().await {
            let message = request?.message;
            if message == FAIL {
                return Err(volo_grpc::Status::unavailable(STREAM_FAILURE_MESSAGE));
            }
            messages.push(message);
        }
        Ok(volo_grpc::Response::new(volo_reply(
            messages.join(" "),
            self.served_by,
        )))
    }

    async fn chat(
        &self,
        request: volo_grpc::Request<volo_grpc::RecvStream<volo_gen::echo::SayRequest>>,
    ) -> Result<volo_grpc::Response<VoloReplies>, volo_grpc::Status> {
        let served_by = self.served_by;
        let replies = echo_each(
            request.into_inner(),
            |request| request.message == FAIL,
            || volo_grpc::Status::unavailable(STREAM_FAILURE_MESSAGE),
            move |request| volo_reply(request.message.to_string(), served_by),
        );
        Ok(volo_grpc::Response::new(replies.boxed()))
    }
}

/// The reply stream of Volo's streaming methods.
pub type VoloReplies =
    volo_grpc::BoxStream<'static, Result<volo_gen::echo::SayReply, volo_grpc::Status>>;

fn volo_reply(message: String, served_by: SocketAddr) -> volo_gen::echo::SayReply {
    volo_gen::echo::SayReply {
        message: message.into(),
        served_by: served_by.to_string().into(),
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

    type CountStream = TonicReplies;

    async fn count(
        &self,
        request: tonic::Request<tonic_gen::CountRequest>,
    ) -> Result<tonic::Response<TonicReplies>, tonic::Status> {
        let request = request.into_inner();
        let end = if request.message == FAIL {
            Err(tonic::Status::unavailable(STREAM_FAILURE_MESSAGE))
        } else {
            Ok(())
        };
        let served_by = self.served_by;
        let replies = paced(
            request.count,
            Duration::from_millis(request.interval_ms.into()),
            end,
            move |n| tonic_reply(format!("{} {n}", request.message), served_by),
        );
        Ok(tonic::Response::new(Box::pin(replies)))
    }

    async fn collect(
        &self,
        request: tonic::Request<tonic::Streaming<tonic_gen::SayRequest>>,
    ) -> Result<tonic::Response<tonic_gen::SayReply>, tonic::Status> {
        let mut requests = request.into_inner();
        let mut messages = Vec::new();
        while let Some(message) = requests.message().await? {
            if message.message == FAIL {
                return Err(tonic::Status::unavailable(STREAM_FAILURE_MESSAGE));
            }
            messages.push(message.message);
        }
        Ok(tonic::Response::new(tonic_reply(
            messages.join(" "),
            self.served_by,
        )))
    }

    type ChatStream = TonicReplies;

    async fn chat(
        &self,
        request: tonic::Request<tonic::Streaming<tonic_gen::SayRequest>>,
    ) -> Result<tonic::Response<TonicReplies>, tonic::Status> {
        let served_by = self.served_by;
        let replies = echo_each(
            request.into_inner(),
            |request| request.message == FAIL,
            || tonic::Status::unavailable(STREAM_FAILURE_MESSAGE),
            move |request| tonic_reply(request.message, served_by),
        );
        Ok(tonic::Response::new(Box::pin(replies)))
    }
}

/// The reply stream of tonic's streaming methods.
pub type TonicReplies =
    Pin<Box<dyn Stream<Item = Result<tonic_gen::SayReply, tonic::Status>> + Send + 'static>>;

fn tonic_reply(message: String, served_by: SocketAddr) -> tonic_gen::SayReply {
    tonic_gen::SayReply {
        message,
        served_by: served_by.to_string(),
    }
}

/// Volo Thrift implementation of `ThriftEcho`: a declared `EchoError` for
/// the message [`FAIL`].
#[derive(Clone)]
pub struct ThriftEcho {
    pub served_by: SocketAddr,
}

impl crate::thrift::volo_thrift_gen::echo::ThriftEcho for ThriftEcho {
    async fn say(
        &self,
        request: crate::thrift::volo_thrift_gen::echo::SayRequest,
    ) -> Result<
        volo_thrift::MaybeException<
            crate::thrift::volo_thrift_gen::echo::SayReply,
            crate::thrift::volo_thrift_gen::echo::ThriftEchoSayException,
        >,
        volo_thrift::ServerError,
    > {
        use crate::thrift::volo_thrift_gen::echo as gen;
        tracing::info!(message = %request.message, "thrift echo handling a request");
        if request.message == FAIL {
            return Ok(volo_thrift::MaybeException::Exception(
                gen::ThriftEchoSayException::Error(gen::EchoError {
                    reason: "asked to fail".into(),
                }),
            ));
        }
        Ok(volo_thrift::MaybeException::Ok(gen::SayReply {
            message: request.message,
            served_by: self.served_by.to_string().into(),
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
