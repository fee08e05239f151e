//! `x-request-id` forwarding over real connections, for every carrier: a
//! tonic, a Volo gRPC, a Volo HTTP and a Volo Thrift server each receive a
//! request id and make one call to a backend that records what it got. The
//! backend sees exactly the inbound id, in the inbound trace, when
//! forwarding is on; nothing when it is off or the id is invalid.

use std::{
    cell::RefCell,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use echo::{
    servers::{TonicEcho, TonicReplies, VoloReplies},
    thrift::volo_thrift_gen::echo as thrift,
    tonic_gen, volo_gen,
};
use opentelemetry::propagation::{Extractor, Injector};
use rpc_ext_tracing::{
    volo::{MetaInfoExtractor, MetaInfoInjector},
    MeshMode, RpcTracing,
};
use tokio::net::TcpListener;
use volo_thrift::MaybeException;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

// ---- What the backends record ----

/// What one request brought a backend: every `x-request-id` value, and
/// the trace id of its `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    request_ids: Vec<String>,
    trace_id: Option<String>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn record<'a>(&self, request_ids: impl Iterator<Item = &'a str>, traceparent: Option<&str>) {
        self.0.lock().unwrap().push(Seen {
            request_ids: request_ids.map(str::to_owned).collect(),
            trace_id: traceparent.and_then(|tp| tp.get(3..35)).map(str::to_owned),
        });
    }

    /// The one request recorded since the last call.
    fn take_one(&self) -> Seen {
        let seen = std::mem::take(&mut *self.0.lock().unwrap());
        assert_eq!(seen.len(), 1, "{seen:#?}");
        seen.into_iter().next().unwrap()
    }
}

/// A tonic Echo backend that records the metadata of each call.
async fn grpc_backend(recorder: &Recorder) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let recorder = recorder.clone();
    let echo = tonic_gen::echo_server::EchoServer::with_interceptor(
        TonicEcho { served_by: addr },
        move |request: tonic::Request<()>| {
            let metadata = request.metadata();
            recorder.record(
                metadata
                    .get_all("x-request-id")
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
                metadata.get("traceparent").and_then(|v| v.to_str().ok()),
            );
            Ok(request)
        },
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(echo)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Ok(addr)
}

/// An HTTP backend (axum) that records the headers of each request.
async fn http_backend(recorder: &Recorder) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let recorder = recorder.clone();
    let router = axum::Router::new().route(
        "/record",
        axum::routing::get(move |headers: http::HeaderMap| async move {
            recorder.record(
                headers
                    .get_all("x-request-id")
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
                headers.get("traceparent").and_then(|v| v.to_str().ok()),
            );
            "recorded"
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// A Thrift backend that records the TTHeader values of each call.
#[derive(Clone)]
struct ThriftBackend(Recorder);

impl thrift::ThriftEcho for ThriftBackend {
    async fn say(
        &self,
        request: thrift::SayRequest,
    ) -> Result<
        MaybeException<thrift::SayReply, thrift::ThriftEchoSayException>,
        volo_thrift::ServerError,
    > {
        volo::METAINFO.with(|metainfo| {
            let metainfo = metainfo.borrow();
            // What the caller sent as transient values: every key, so a
            // second copy under another name would show.
            let sent = MetaInfoExtractor(&metainfo);
            self.0.record(
                sent.keys()
                    .into_iter()
                    .filter(|key| key.eq_ignore_ascii_case("x-request-id"))
                    .filter_map(|key| sent.get(key)),
                sent.get("traceparent"),
            );
        });
        Ok(MaybeException::Ok(thrift::SayReply {
            message: request.message,
            served_by: "thrift-backend".into(),
        }))
    }
}

async fn thrift_backend(recorder: &Recorder) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        thrift::ThriftEchoServer::new(ThriftBackend(recorder.clone()))
            .run(volo::net::incoming::DefaultIncoming::from(listener)),
    );
    Ok(addr)
}

// ---- The cases ----

/// Tracing for a frontend: mesh mode off, forwarding as `forward` says.
fn tracing(forward: bool) -> RpcTracing {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    RpcTracing::builder()
        .tracer_provider(&provider)
        .mesh(MeshMode::Off)
        .forward_request_id(forward)
        .build()
}

/// One inbound request: through the frontend with forwarding on or off,
/// with this `x-request-id`, and whether the backend should get it.
#[derive(Debug)]
struct Case {
    forward: bool,
    request_id: String,
    forwarded: bool,
}

/// The cases of every stack; `control` is an id with a control character
/// the stack's carrier can hold (HTTP and gRPC: a tab, TTHeader: any).
fn cases(control: &str) -> Vec<Case> {
    let case = |forward, request_id: &str, forwarded| Case {
        forward,
        request_id: request_id.to_owned(),
        forwarded,
    };
    vec![
        case(true, "abc-123", true),
        case(false, "abc-123", false),
        case(true, &"a".repeat(200), false),
        case(true, control, false),
    ]
}

/// Runs every case through a stack: `call(frontend, request_id)` sends one
/// request to that frontend, which relays it to the backend `recorder`
/// belongs to.
async fn check<F, Fut>(
    stack: &str,
    control: &str,
    frontends: [SocketAddr; 2],
    recorder: &Recorder,
    call: F,
) -> anyhow::Result<()>
where
    F: Fn(SocketAddr, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let [forwarding, not_forwarding] = frontends;
    for case in cases(control) {
        let frontend = if case.forward {
            forwarding
        } else {
            not_forwarding
        };
        call(frontend, case.request_id.clone()).await?;
        let expected = Seen {
            request_ids: if case.forwarded {
                vec![case.request_id.clone()]
            } else {
                Vec::new()
            },
            trace_id: Some(TRACE_ID.to_owned()),
        };
        assert_eq!(recorder.take_one(), expected, "{stack}: {case:?}");
    }
    Ok(())
}

// ---- tonic ----

/// A tonic Echo whose `Say` relays to the gRPC backend over tonic.
#[derive(Clone)]
struct TonicRelay {
    backend: tonic_gen::echo_client::EchoClient<
        rpc_ext_tracing::tower::TracingService<tonic::transport::Channel>,
    >,
}

#[tonic::async_trait]
impl tonic_gen::echo_server::Echo for TonicRelay {
    async fn say(
        &self,
        request: tonic::Request<tonic_gen::SayRequest>,
    ) -> Result<tonic::Response<tonic_gen::SayReply>, tonic::Status> {
        self.backend.clone().say(request.into_inner()).await
    }

    type CountStream = TonicReplies;

    async fn count(
        &self,
        _: tonic::Request<tonic_gen::CountRequest>,
    ) -> Result<tonic::Response<TonicReplies>, tonic::Status> {
        Err(tonic::Status::unimplemented("not relayed"))
    }

    async fn collect(
        &self,
        _: tonic::Request<tonic::Streaming<tonic_gen::SayRequest>>,
    ) -> Result<tonic::Response<tonic_gen::SayReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("not relayed"))
    }

    type ChatStream = TonicReplies;

    async fn chat(
        &self,
        _: tonic::Request<tonic::Streaming<tonic_gen::SayRequest>>,
    ) -> Result<tonic::Response<TonicReplies>, tonic::Status> {
        Err(tonic::Status::unimplemented("not relayed"))
    }
}

async fn tonic_frontend(forward: bool, backend: SocketAddr) -> anyhow::Result<SocketAddr> {
    let tracing = tracing(forward);
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{backend}"))?.connect_lazy();
    let relay = TonicRelay {
        backend: tonic_gen::echo_client::EchoClient::new(
            tower::ServiceBuilder::new()
                .layer(rpc_ext_tracing::tower::TracingLayer::client(&tracing))
                .service(channel),
        ),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(&tracing))
            .add_service(tonic_gen::echo_server::EchoServer::new(relay))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Ok(addr)
}

/// One `Say` to a gRPC frontend (tonic or Volo) from a plain tonic client,
/// with the inbound trace context and `request_id` in the metadata.
async fn say_over_grpc(frontend: SocketAddr, request_id: String) -> anyhow::Result<()> {
    let mut client =
        tonic_gen::echo_client::EchoClient::connect(format!("http://{frontend}")).await?;
    let mut request = tonic::Request::new(tonic_gen::SayRequest {
        message: "hi".to_owned(),
    });
    request
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse()?);
    request
        .metadata_mut()
        .insert("x-request-id", request_id.parse()?);
    client.say(request).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_server_forwards_the_request_id_in_grpc_metadata() -> anyhow::Result<()> {
    let recorder = Recorder::default();
    let backend = grpc_backend(&recorder).await?;
    let frontends = [
        tonic_frontend(true, backend).await?,
        tonic_frontend(false, backend).await?,
    ];
    check("tonic", "abc\t123", frontends, &recorder, say_over_grpc).await
}

// ---- Volo gRPC ----

/// A Volo gRPC Echo whose `Say` relays to the gRPC backend over Volo.
#[derive(Clone)]
struct VoloRelay {
    backend: volo_gen::echo::EchoClient,
}

impl volo_gen::echo::Echo for VoloRelay {
    async fn say(
        &self,
        request: volo_grpc::Request<volo_gen::echo::SayRequest>,
    ) -> Result<volo_grpc::Response<volo_gen::echo::SayReply>, volo_grpc::Status> {
        let reply = self.backend.say(request.into_inner()).await?;
        Ok(volo_grpc::Response::new(reply.into_inner()))
    }

    async fn count(
        &self,
        _: volo_grpc::Request<volo_gen::echo::CountRequest>,
    ) -> Result<volo_grpc::Response<VoloReplies>, volo_grpc::Status> {
        Err(volo_grpc::Status::unimplemented("not relayed"))
    }

    async fn collect(
        &self,
        _: volo_grpc::Request<volo_grpc::RecvStream<volo_gen::echo::SayRequest>>,
    ) -> Result<volo_grpc::Response<volo_gen::echo::SayReply>, volo_grpc::Status> {
        Err(volo_grpc::Status::unimplemented("not relayed"))
    }

    async fn chat(
        &self,
        _: volo_grpc::Request<volo_grpc::RecvStream<volo_gen::echo::SayRequest>>,
    ) -> Result<volo_grpc::Response<VoloReplies>, volo_grpc::Status> {
        Err(volo_grpc::Status::unimplemented("not relayed"))
    }
}

async fn volo_grpc_frontend(forward: bool, backend: SocketAddr) -> anyhow::Result<SocketAddr> {
    let tracing = tracing(forward);
    let relay = VoloRelay {
        backend: volo_gen::echo::EchoClientBuilder::new("backend")
            .layer_outer(rpc_ext_tracing::volo::GrpcTracingLayer::client(&tracing))
            .address(backend)
            .build(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        volo_grpc::server::Server::new()
            .layer_front(rpc_ext_tracing::volo::GrpcTracingLayer::server(&tracing))
            .add_service(
                volo_grpc::server::ServiceBuilder::new(volo_gen::echo::EchoServer::new(relay))
                    .build(),
            )
            .run(volo::net::incoming::DefaultIncoming::from(listener)),
    );
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volo_grpc_server_forwards_the_request_id_in_grpc_metadata() -> anyhow::Result<()> {
    let recorder = Recorder::default();
    let backend = grpc_backend(&recorder).await?;
    let frontends = [
        volo_grpc_frontend(true, backend).await?,
        volo_grpc_frontend(false, backend).await?,
    ];
    check("volo-grpc", "abc\t123", frontends, &recorder, say_over_grpc).await
}

// ---- Volo HTTP ----

async fn volo_http_frontend(forward: bool, backend: SocketAddr) -> anyhow::Result<SocketAddr> {
    use volo_http::server::route::{get, Router};

    let tracing = tracing(forward);
    let client = volo_http::client::Client::builder()
        .layer_outer(rpc_ext_tracing::volo::HttpTracingLayer::new(&tracing))
        .build()?;
    let router: Router = Router::new().route(
        "/relay",
        get(move || {
            let client = client.clone();
            async move {
                match client
                    .get(format!("http://{backend}/record"))
                    .send::<volo_http::body::Body>()
                    .await
                {
                    Ok(response) => response.status(),
                    Err(_) => http::StatusCode::BAD_GATEWAY,
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        volo_http::server::Server::new(router)
            .layer(rpc_ext_tracing::volo::HttpTracingLayer::new(&tracing))
            .run(volo::net::incoming::DefaultIncoming::from(listener)),
    );
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volo_http_server_forwards_the_request_id_in_headers() -> anyhow::Result<()> {
    let recorder = Recorder::default();
    let backend = http_backend(&recorder).await?;
    let frontends = [
        volo_http_frontend(true, backend).await?,
        volo_http_frontend(false, backend).await?,
    ];
    let http = reqwest::Client::new();
    check(
        "volo-http",
        "abc\t123",
        frontends,
        &recorder,
        |frontend, request_id| {
            let request = http
                .get(format!("http://{frontend}/relay"))
                .header("traceparent", TRACEPARENT)
                .header("x-request-id", request_id);
            async move {
                let status = request.send().await?.status();
                anyhow::ensure!(status == 200, "the relay answered {status}");
                Ok(())
            }
        },
    )
    .await
}

// ---- Volo Thrift ----

/// A Thrift Echo whose `say` relays to the Thrift backend.
#[derive(Clone)]
struct ThriftRelay {
    backend: thrift::ThriftEchoClient,
}

impl thrift::ThriftEcho for ThriftRelay {
    async fn say(
        &self,
        request: thrift::SayRequest,
    ) -> Result<
        MaybeException<thrift::SayReply, thrift::ThriftEchoSayException>,
        volo_thrift::ServerError,
    > {
        let reply = self
            .backend
            .say(request)
            .await
            .map_err(|error| anyhow::anyhow!("backend: {error}"))?;
        Ok(reply)
    }
}

async fn thrift_frontend(forward: bool, backend: SocketAddr) -> anyhow::Result<SocketAddr> {
    let tracing = tracing(forward);
    let relay = ThriftRelay {
        backend: thrift::ThriftEchoClientBuilder::new("backend")
            .layer_outer(rpc_ext_tracing::volo::ThriftTracingLayer::client(&tracing))
            .address(backend)
            .build(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        thrift::ThriftEchoServer::new(relay)
            .layer_front(rpc_ext_tracing::volo::ThriftTracingLayer::server(&tracing))
            .run(volo::net::incoming::DefaultIncoming::from(listener)),
    );
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volo_thrift_server_forwards_the_request_id_in_the_ttheader() -> anyhow::Result<()> {
    let recorder = Recorder::default();
    let backend = thrift_backend(&recorder).await?;
    let frontends = [
        thrift_frontend(true, backend).await?,
        thrift_frontend(false, backend).await?,
    ];
    check(
        "volo-thrift",
        "abc\u{1}123",
        frontends,
        &recorder,
        |frontend, request_id| async move {
            // A plain Thrift client sending the TTHeader values by hand,
            // as transient metainfo (what Volo's clients send onwards).
            let client = thrift::ThriftEchoClientBuilder::new("frontend")
                .address(frontend)
                .build();
            let mut metainfo = volo::context::MetaInfo::default();
            let mut sent = MetaInfoInjector(&mut metainfo);
            sent.set("traceparent", TRACEPARENT.to_owned());
            sent.set("x-request-id", request_id);
            let reply = volo::METAINFO
                .scope(
                    RefCell::new(metainfo),
                    client.say(thrift::SayRequest {
                        message: "hi".into(),
                    }),
                )
                .await?;
            anyhow::ensure!(matches!(reply, MaybeException::Ok(_)), "the relay threw");
            Ok(())
        },
    )
    .await
}
