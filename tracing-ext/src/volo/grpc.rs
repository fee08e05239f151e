//! Volo gRPC: the context travels in the gRPC metadata as `traceparent`,
//! `tracestate` and `baggage` (the same headers tonic and other OpenTelemetry
//! SDKs use), so Volo and tonic services join one trace.
//!
//! A call's span lasts until its response stream ends, not until the layer
//! gets the response (see [`rpc_ext_core::volo_grpc`]): on a server, until
//! the response body has been sent with its trailers; on a client, until
//! the application drops a unary response or reads a streaming one,
//! wrapped in an [`ObservedStream`](super::ObservedStream), to its end.

use motore::{layer::Layer, service::Service};
use rpc_ext_core::{
    volo_grpc::{defer_end, observe_server_response},
    CallEnd, GrpcCode, Side,
};
use volo::context::Context;
use volo_grpc::{
    body::BoxBody,
    context::{ClientContext, ServerContext},
    Request, Response, Status,
};

use super::{client_target, ip};

use crate::{
    observer::{outcome, TracingObserver},
    propagation::RequestHeaders,
    CallInfo, HeaderInjector, RpcTracing,
};

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
/// A span ends when the call does, streams included:
///
/// - **Servers** (the layer goes on `Server::layer_front`, where responses
///   are bodies): when the response body has been sent, with the status of
///   its trailers; as cancelled when the client goes away before. The
///   span's context stays current while the body is produced, so a
///   streaming handler's work is inside it.
/// - **Clients**: a unary call when the application drops its response
///   (or takes its message with `into_inner()`); a streaming reply only if
///   the application wraps it in an [`ObservedStream`](super::ObservedStream),
///   when the stream ends (with its status) or is dropped (cancelled).
///   Unwrapped, a streaming call's span ends at once, with OK:
///
/// ```no_run
/// use rpc_ext_tracing::volo::ObservedStream;
/// # struct EchoClient;
/// # impl EchoClient {
/// #     async fn count(&self, _: u32) -> Result<volo_grpc::Response<volo_grpc::RecvStream<u32>>, volo_grpc::Status> {
/// #         unimplemented!("a generated client's server-streaming method")
/// #     }
/// # }
/// # async fn example(client: EchoClient, request: u32) -> Result<(), volo_grpc::Status> {
///
/// let mut replies = ObservedStream::new(client.count(request).await?);
/// while let Some(reply) = replies.message().await? {
///     // ...
/// #   let _ = reply;
/// }
/// // The client span ended with the status of the trailers.
/// # Ok(())
/// # }
/// ```
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
}

impl GrpcTracingLayer {
    /// Server side: continue the caller's trace, run the call in the span.
    #[must_use]
    pub fn server(tracing: &RpcTracing) -> Self {
        Self {
            tracing: tracing.clone(),
        }
    }

    /// Client side: a child of the current context, sent in the metadata.
    ///
    /// (The side is the context's: the same layer would trace a server's
    /// calls as a server's. The two names say where the layer goes.)
    #[must_use]
    pub fn client(tracing: &RpcTracing) -> Self {
        Self {
            tracing: tracing.clone(),
        }
    }
}

impl<S> Layer<S> for GrpcTracingLayer {
    type Service = GrpcTracingService<S>;

    fn layer(self, inner: S) -> Self::Service {
        GrpcTracingService { inner, layer: self }
    }
}

/// The service made by [`GrpcTracingLayer`]: a server's when called with a
/// [`ServerContext`], a client's with a [`ClientContext`].
#[derive(Debug, Clone)]
pub struct GrpcTracingService<S> {
    inner: S,
    layer: GrpcTracingLayer,
}

fn code(status: &Status) -> GrpcCode {
    GrpcCode::new(status.code() as i32)
}

impl<T, S> Service<ServerContext, Request<T>> for GrpcTracingService<S>
where
    T: Send + 'static,
    S: Service<ServerContext, Request<T>, Response = Response<BoxBody>, Error = Status>
        + Send
        + Sync
        + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Status;

    async fn call(
        &self,
        cx: &mut ServerContext,
        request: Request<T>,
    ) -> Result<Self::Response, Self::Error> {
        let call = {
            let rpc = cx.rpc_info();
            let info = CallInfo::grpc(rpc.method().as_str()).with_peer(ip(rpc.caller().address()));
            self.layer
                .tracing
                .start_server(&info, &RequestHeaders::new(request.metadata().headers()))
        };
        match call.run(self.inner.call(cx, request)).await {
            // The call ends with the body: its trailers carry the status.
            Ok(response) => Ok(observe_server_response(
                response,
                TracingObserver::new(call, Side::Server),
            )),
            Err(status) => {
                call.finish(&outcome(CallEnd::Grpc(code(&status))));
                Err(status)
            }
        }
    }
}

impl<T, U, S> Service<ClientContext, Request<T>> for GrpcTracingService<S>
where
    T: Send + 'static,
    U: Send + 'static,
    S: Service<ClientContext, Request<T>, Response = Response<U>, Error = Status>
        + Send
        + Sync
        + 'static,
{
    type Response = Response<U>;
    type Error = Status;

    async fn call(
        &self,
        cx: &mut ClientContext,
        mut request: Request<T>,
    ) -> Result<Self::Response, Self::Error> {
        let call = {
            let rpc = cx.rpc_info();
            let info = client_target(CallInfo::grpc(rpc.method().as_str()), rpc.callee());
            self.layer.tracing.start_client(
                &info,
                &mut HeaderInjector(request.metadata_mut().headers_mut()),
            )
        };
        let result = call.run(self.inner.call(cx, request)).await;
        // Load balancing chose the address during the call.
        let peer_addr = ip(cx.rpc_info().callee().address());
        match result {
            // The call ends when the application is done with the response.
            Ok(mut response) => {
                defer_end(&mut response, move |end| {
                    call.finish(&crate::Outcome {
                        peer_addr,
                        ..outcome(end)
                    });
                });
                Ok(response)
            }
            Err(status) => {
                call.finish(&crate::Outcome {
                    peer_addr,
                    ..outcome(CallEnd::Grpc(code(&status)))
                });
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        convert::Infallible,
        pin::Pin,
        sync::{Arc, Mutex},
        task::{Context as TaskContext, Poll},
    };

    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue};
    use http_body::Frame;
    use http_body_util::BodyExt;
    use motore::{layer::Layer, service::Service};
    use opentelemetry::trace::{SpanKind, TraceContextExt, TraceId};
    use volo::context::Context as _;
    use volo_grpc::{
        body::BoxBody,
        context::{ClientContext, ServerContext},
        Request, Response, Status,
    };

    use super::GrpcTracingLayer;
    use crate::testing::{attr, Recorded};

    const METHOD: &str = "/echo.Echo/Count";

    /// A response body sending `frames`, noting the trace current at each
    /// poll: where a streaming handler's code would run.
    struct Frames {
        frames: VecDeque<Frame<Bytes>>,
        seen: Arc<Mutex<Vec<TraceId>>>,
    }

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let current = opentelemetry::Context::current();
            self.seen
                .lock()
                .unwrap()
                .push(current.span().span_context().trace_id());
            Poll::Ready(self.frames.pop_front().map(Ok))
        }
    }

    /// A server streaming two messages, then `grpc-status: status`.
    #[derive(Clone, Default)]
    struct Streaming {
        seen: Arc<Mutex<Vec<TraceId>>>,
    }

    impl Service<ServerContext, Request<()>> for Streaming {
        type Response = Response<BoxBody>;
        type Error = Status;

        async fn call(
            &self,
            _: &mut ServerContext,
            _: Request<()>,
        ) -> Result<Self::Response, Self::Error> {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("14"));
            let frames = [
                Frame::data(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1])),
                Frame::data(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 2])),
                Frame::trailers(trailers),
            ];
            Ok(Response::new(volo_grpc::body::boxed(Frames {
                frames: frames.into(),
                seen: Arc::clone(&self.seen),
            })))
        }
    }

    fn server_context() -> ServerContext {
        let mut cx = ServerContext::default();
        cx.rpc_info_mut().set_method(METHOD.into());
        cx
    }

    fn tracing() -> (crate::RpcTracing, Recorded) {
        Recorded::tracing(|builder| builder.recognized_methods(["echo.Echo/Count"]))
    }

    #[tokio::test]
    async fn a_server_span_ends_with_the_trailers_and_covers_the_body() {
        let (tracing, recorded) = tracing();
        let handler = Streaming::default();
        let service = GrpcTracingLayer::server(&tracing).layer(handler.clone());
        let response = service
            .call(&mut server_context(), Request::new(()))
            .await
            .unwrap();
        assert!(recorded.ended().is_empty(), "ended before the stream");

        response.into_inner().collect().await.unwrap();
        let span = recorded.only();
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(span.name, "echo.Echo/Count");
        assert_eq!(
            attr(&span.attributes, "rpc.response.status_code").as_deref(),
            Some("UNAVAILABLE")
        );
        assert_eq!(
            attr(&span.attributes, "error.type").as_deref(),
            Some("UNAVAILABLE")
        );
        // The span's context was current at every poll of the body until
        // the trailers ended the call (the last poll, for the end of the
        // body, comes after).
        let seen = handler.seen.lock().unwrap().clone();
        let trace_id = span.span_context.trace_id();
        assert_eq!(seen, [trace_id, trace_id, trace_id, TraceId::INVALID]);
    }

    #[tokio::test]
    async fn a_server_body_dropped_unfinished_is_cancelled() {
        let (tracing, recorded) = tracing();
        let service = GrpcTracingLayer::server(&tracing).layer(Streaming::default());
        let response = service
            .call(&mut server_context(), Request::new(()))
            .await
            .unwrap();
        let mut body = response.into_inner();
        body.frame().await.unwrap().unwrap();
        drop(body);
        let span = recorded.only();
        assert_eq!(
            attr(&span.attributes, "error.type").as_deref(),
            Some("CANCELLED")
        );
    }

    /// A client transport answering `reply`.
    #[derive(Clone)]
    struct Transport(Result<u32, volo_grpc::Code>);

    impl Service<ClientContext, Request<()>> for Transport {
        type Response = Response<u32>;
        type Error = Status;

        async fn call(
            &self,
            _: &mut ClientContext,
            _: Request<()>,
        ) -> Result<Self::Response, Self::Error> {
            self.0
                .map(Response::new)
                .map_err(|code| Status::new(code, "no"))
        }
    }

    fn client_context() -> ClientContext {
        let mut cx = ClientContext::default();
        cx.rpc_info_mut().set_method(METHOD.into());
        cx
    }

    #[tokio::test]
    async fn a_client_span_ends_when_the_response_is_dropped() {
        let (tracing, recorded) = tracing();
        let service = GrpcTracingLayer::client(&tracing).layer(Transport(Ok(7)));
        let response = service
            .call(&mut client_context(), Request::new(()))
            .await
            .unwrap();
        assert!(
            recorded.ended().is_empty(),
            "ended before the reply was read"
        );
        assert_eq!(response.into_inner(), 7);
        let span = recorded.only();
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(
            attr(&span.attributes, "rpc.response.status_code").as_deref(),
            Some("OK")
        );
    }

    #[tokio::test]
    async fn a_failed_client_call_ends_at_once() {
        let (tracing, recorded) = tracing();
        let service =
            GrpcTracingLayer::client(&tracing).layer(Transport(Err(volo_grpc::Code::NotFound)));
        let status = service
            .call(&mut client_context(), Request::new(()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), volo_grpc::Code::NotFound);
        let span = recorded.only();
        assert_eq!(
            attr(&span.attributes, "error.type").as_deref(),
            Some("NOT_FOUND")
        );
    }
}
