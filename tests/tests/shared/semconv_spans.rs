//! What the semantic-conventions conformance test expects of every span,
//! and the calls it makes through every stack: shared by the suite's test
//! (`suite/semconv_conformance.rs`, the OpenTelemetry SDK path) and
//! `fastrace.rs` (the fastrace path), so both paths are held to one list.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use echo::{
    servers::{TonicEcho, VoloEcho, FAIL},
    thrift::volo_thrift_gen::echo as thrift,
    tonic_gen, volo_gen,
};
use rpc_ext_core::volo_grpc::ObservedStream;
use rpc_ext_metrics::RpcMetrics;
use rpc_ext_tracing::RpcTracing;
use tests::otlp::{ReceivedSpan, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tower::ServiceExt as _;

// ---- The current names: semantic conventions v1.44.0 ----

/// Every attribute an RPC span may carry.
pub const RPC_SPAN_ATTRIBUTES: &[&str] = &[
    "rpc.system.name",
    "rpc.method",
    "rpc.method_original",
    "rpc.response.status_code",
    "error.type",
    "server.address",
    "server.port",
    "network.peer.address",
    "network.peer.port",
];

/// Every attribute an HTTP span may carry.
/// The attributes whose values are integers (all others are strings).
pub const INT_ATTRIBUTES: &[&str] = &[
    "server.port",
    "network.peer.port",
    "http.response.status_code",
];

pub const HTTP_SPAN_ATTRIBUTES: &[&str] = &[
    "http.request.method",
    "http.request.method_original",
    "http.route",
    "http.response.status_code",
    "error.type",
    "server.address",
    "server.port",
    "network.peer.address",
    "network.peer.port",
    "url.scheme",
    "url.path",
    "url.query",
    "url.full",
];

// ---- The spans every stack must produce ----

/// One expected span: who reports it, its kind and name, and attributes
/// that must hold these values (`"*"`: present, any value).
pub struct Expected {
    pub service: &'static str,
    pub kind: i32,
    pub name: &'static str,
    pub attributes: &'static [(&'static str, &'static str)],
}

const GRPC_OK: &[(&str, &str)] = &[
    ("rpc.system.name", "grpc"),
    ("rpc.response.status_code", "OK"),
];
const TONIC_CLIENT_OK: &[(&str, &str)] = &[
    ("rpc.system.name", "grpc"),
    ("rpc.response.status_code", "OK"),
    ("server.address", "127.0.0.1"),
    ("server.port", "*"),
];
const VOLO_CLIENT_OK: &[(&str, &str)] = &[
    ("rpc.system.name", "grpc"),
    ("rpc.response.status_code", "OK"),
    ("server.address", "127.0.0.1"),
    ("server.port", "*"),
    ("network.peer.address", "127.0.0.1"),
    ("network.peer.port", "*"),
];
const THRIFT: &[(&str, &str)] = &[
    ("rpc.system.name", "apache_thrift"),
    ("rpc.method", "ThriftEcho/say"),
];

/// The spans of the calls `run_calls` makes (some more arrive; each is
/// checked against the lists above all the same).
pub fn expected_spans() -> Vec<Expected> {
    let mut expected = Vec::new();
    for service in ["tonic", "volo"] {
        for name in [
            "echo.Echo/Say",
            "echo.Echo/Count",
            "echo.Echo/Collect",
            "echo.Echo/Chat",
        ] {
            expected.push(Expected {
                service,
                kind: SPAN_KIND_SERVER,
                name,
                attributes: GRPC_OK,
            });
            expected.push(Expected {
                service,
                kind: SPAN_KIND_CLIENT,
                name,
                attributes: if service == "volo" {
                    // Volo tells its layers the instance it called.
                    VOLO_CLIENT_OK
                } else {
                    TONIC_CLIENT_OK
                },
            });
        }
        // `Say` asked to fail: INVALID_ARGUMENT is the caller's error, an
        // error on the client only.
        expected.push(Expected {
            service,
            kind: SPAN_KIND_CLIENT,
            name: "echo.Echo/Say",
            attributes: &[
                ("rpc.response.status_code", "INVALID_ARGUMENT"),
                ("error.type", "INVALID_ARGUMENT"),
            ],
        });
        expected.push(Expected {
            service,
            kind: SPAN_KIND_SERVER,
            name: "echo.Echo/Say",
            attributes: &[("rpc.response.status_code", "INVALID_ARGUMENT")],
        });
    }
    // A method the tonic server does not serve.
    expected.push(Expected {
        service: "tonic",
        kind: SPAN_KIND_SERVER,
        name: "grpc",
        attributes: &[
            ("rpc.method", "_OTHER"),
            ("rpc.method_original", "echo.Echo/Missing"),
            ("rpc.response.status_code", "UNIMPLEMENTED"),
            ("error.type", "UNIMPLEMENTED"),
        ],
    });
    for kind in [SPAN_KIND_SERVER, SPAN_KIND_CLIENT] {
        expected.push(Expected {
            service: "thrift",
            kind,
            name: "ThriftEcho/say",
            attributes: THRIFT,
        });
    }
    for service in ["volo-http", "axum"] {
        expected.push(Expected {
            service,
            kind: SPAN_KIND_SERVER,
            name: if service == "axum" {
                "GET /orders/{id}"
            } else {
                "GET /users/{id}"
            },
            attributes: &[
                ("http.request.method", "GET"),
                ("http.route", "*"),
                ("http.response.status_code", "200"),
                ("url.scheme", "http"),
                ("url.path", "*"),
                ("url.query", "page=2"),
            ],
        });
        expected.push(Expected {
            service,
            kind: SPAN_KIND_CLIENT,
            name: "GET",
            attributes: &[
                ("http.request.method", "GET"),
                ("http.response.status_code", "200"),
                ("url.full", "*"),
                ("server.address", "127.0.0.1"),
                ("server.port", "*"),
            ],
        });
    }
    // No route matched: named by the method alone. (An axum layer added
    // with `Router::layer` sees only the routes it wraps.)
    expected.push(Expected {
        service: "volo-http",
        kind: SPAN_KIND_SERVER,
        name: "GET",
        attributes: &[
            ("http.request.method", "GET"),
            ("http.response.status_code", "404"),
            ("url.path", "/nowhere"),
        ],
    });
    expected
}

pub fn find<'a>(spans: &'a [ReceivedSpan], expected: &Expected) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|span| {
        span.service == expected.service
            && span.kind == expected.kind
            && span.name == expected.name
            && expected
                .attributes
                .iter()
                .all(|(key, value)| match span.attributes.get(*key) {
                    Some(_) if *value == "*" => true,
                    Some(got) => got == value,
                    None => false,
                })
    })
}

/// Every span of [`expected_spans`] as `receiver` has them, within 20 s;
/// else an error naming those missing, labelled `what`.
pub async fn wait_for_expected_spans(
    receiver: &tests::otlp::OtlpReceiver,
    what: &str,
) -> anyhow::Result<Vec<ReceivedSpan>> {
    receiver
        .wait_for(Duration::from_secs(20), "every expected span", |spans| {
            expected_spans().iter().all(|e| find(spans, e).is_some())
        })
        .await
        .map_err(|e| {
            let missing: Vec<_> = expected_spans()
                .into_iter()
                .filter(|e| find(&receiver.spans(), e).is_none())
                .map(|e| format!("{} {} {}", e.service, e.kind, e.name))
                .collect();
            anyhow::anyhow!(
                "{what}{e}: missing {missing:?}\nreceived {:#?}",
                receiver.spans()
            )
        })
}

/// The rules every span follows, whichever stack made it.
pub fn check_span(span: &ReceivedSpan) {
    let rpc = span.attributes.contains_key("rpc.system.name");
    let allowed = if rpc {
        RPC_SPAN_ATTRIBUTES
    } else {
        HTTP_SPAN_ATTRIBUTES
    };
    for key in span.attributes.keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "{key} is not a current attribute: {span:#?}"
        );
        let expected_type = if INT_ATTRIBUTES.contains(&key.as_str()) {
            "int"
        } else {
            "string"
        };
        assert_eq!(
            span.attribute_types.get(key).copied(),
            Some(expected_type),
            "{key}: {span:#?}"
        );
    }
    assert_eq!(
        span.status_code == STATUS_ERROR,
        span.attributes.contains_key("error.type"),
        "error status iff error.type: {span:#?}"
    );
    let client = span.kind == SPAN_KIND_CLIENT;
    if client {
        assert!(
            span.attributes.contains_key("server.address"),
            "a client span without server.address: {span:#?}"
        );
    }
    if rpc {
        let method = span.attr("rpc.method");
        if method == "_OTHER" {
            assert_eq!(span.name, span.attr("rpc.system.name"), "{span:#?}");
            assert!(!span.attr("rpc.method_original").is_empty(), "{span:#?}");
        } else {
            assert_eq!(span.name, method, "{span:#?}");
            assert!(
                method.contains('/'),
                "rpc.method is the full method: {span:#?}"
            );
            assert_eq!(span.attr("rpc.method_original"), "", "{span:#?}");
        }
        if span.attr("rpc.system.name") == "grpc" {
            assert!(
                !span.attr("rpc.response.status_code").is_empty(),
                "{span:#?}"
            );
        }
        return;
    }
    let method = span.attr("http.request.method");
    assert!(!method.is_empty(), "neither RPC nor HTTP: {span:#?}");
    let route = span.attr("http.route");
    let named = if method == "_OTHER" { "HTTP" } else { method };
    if client {
        assert_eq!(route, "", "http.route on a client span: {span:#?}");
        assert_eq!(span.name, named, "{span:#?}");
        assert!(!span.attr("url.full").is_empty(), "{span:#?}");
    } else {
        let name = if route.is_empty() {
            named.to_owned()
        } else {
            format!("{named} {route}")
        };
        assert_eq!(span.name, name, "{span:#?}");
        assert!(!span.attr("url.scheme").is_empty(), "{span:#?}");
        assert!(!span.attr("url.path").is_empty(), "{span:#?}");
        assert_eq!(span.attr("url.full"), "", "{span:#?}");
    }
}

// ---- The calls ----

/// What every stack is instrumented with: one metrics registry, and a
/// tracing pipeline per stack (the OTLP resource tells the stacks apart).
pub struct Calls<'a> {
    pub metrics: &'a RpcMetrics,
    pub tracing: &'a HashMap<&'static str, RpcTracing>,
}

fn say_tonic(message: &str) -> tonic_gen::SayRequest {
    tonic_gen::SayRequest {
        message: message.to_owned(),
    }
}

fn say_volo(message: &str) -> volo_gen::echo::SayRequest {
    volo_gen::echo::SayRequest {
        message: message.to_owned().into(),
    }
}

impl Calls<'_> {
    fn tracing(&self, stack: &str) -> &RpcTracing {
        &self.tracing[stack]
    }

    pub async fn tonic(&self) -> anyhow::Result<()> {
        let tracing = self.tracing("tonic");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(rpc_ext_tracing::tower::TracingLayer::server(tracing))
                .layer(rpc_ext_metrics::tower::MetricsLayer::server(self.metrics))
                .add_service(tonic_gen::echo_server::EchoServer::new(TonicEcho {
                    served_by: addr,
                }))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        // A tonic client's requests carry no authority at this layer: the
        // target is named to the layers.
        let service = tower::ServiceBuilder::new()
            .layer(
                rpc_ext_metrics::tower::MetricsLayer::client(self.metrics)
                    .server_address(addr.to_string()),
            )
            .layer(
                rpc_ext_tracing::tower::TracingLayer::client(tracing)
                    .server_address(addr.to_string()),
            )
            .service(channel);
        let mut client = tonic_gen::echo_client::EchoClient::new(service.clone());
        client.say(say_tonic("hi")).await?;
        let failed = client
            .say(say_tonic(FAIL))
            .await
            .expect_err("asked to fail");
        assert_eq!(failed.code(), tonic::Code::InvalidArgument);
        let mut replies = client
            .count(tonic_gen::CountRequest {
                message: "n".into(),
                count: 2,
                interval_ms: 10,
            })
            .await?
            .into_inner();
        while replies.message().await?.is_some() {}
        let collected = client
            .collect(tokio_stream::iter([say_tonic("a"), say_tonic("b")]))
            .await?;
        assert_eq!(collected.into_inner().message, "a b");
        let mut chat = client
            .chat(tokio_stream::iter([say_tonic("a"), say_tonic("b")]))
            .await?
            .into_inner();
        while chat.message().await?.is_some() {}

        // A path the server does not serve, through the same client layers.
        let mut grpc = tonic::client::Grpc::new(service);
        grpc.ready().await?;
        let missing = grpc
            .unary::<_, tonic_gen::SayReply, _>(
                tonic::Request::new(say_tonic("hi")),
                http::uri::PathAndQuery::from_static("/echo.Echo/Missing"),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("not served");
        assert_eq!(missing.code(), tonic::Code::Unimplemented);
        Ok(())
    }

    pub async fn volo_grpc(&self) -> anyhow::Result<()> {
        let tracing = self.tracing("volo");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            volo_grpc::server::Server::new()
                .layer_front(rpc_ext_tracing::volo::GrpcTracingLayer::server(tracing))
                .layer_front(rpc_ext_metrics::volo::MetricsLayer::server(self.metrics))
                .add_service(
                    volo_grpc::server::ServiceBuilder::new(volo_gen::echo::EchoServer::new(
                        VoloEcho { served_by: addr },
                    ))
                    .build(),
                )
                .run(volo::net::incoming::DefaultIncoming::from(listener)),
        );
        let client = volo_gen::echo::EchoClientBuilder::new("echo")
            .layer_outer(rpc_ext_tracing::volo::GrpcTracingLayer::client(tracing))
            .layer_outer(rpc_ext_metrics::volo::MetricsLayer::client(self.metrics))
            .address(addr)
            .build();
        client.say(say_volo("hi")).await?.into_inner();
        let failed = client.say(say_volo(FAIL)).await.expect_err("asked to fail");
        assert_eq!(failed.code(), volo_grpc::Code::InvalidArgument);
        let mut replies = ObservedStream::new(
            client
                .count(volo_gen::echo::CountRequest {
                    message: "n".into(),
                    count: 2,
                    interval_ms: 10,
                })
                .await?,
        );
        while replies.next().await.transpose()?.is_some() {}
        let collected = client
            .collect(tokio_stream::iter([say_volo("a"), say_volo("b")]))
            .await?
            .into_inner();
        assert_eq!(&*collected.message, "a b");
        let mut chat = ObservedStream::new(
            client
                .chat(tokio_stream::iter([say_volo("a"), say_volo("b")]))
                .await?,
        );
        while chat.next().await.transpose()?.is_some() {}
        Ok(())
    }

    pub async fn volo_thrift(&self) -> anyhow::Result<()> {
        #[derive(Clone)]
        struct Echo;
        impl thrift::ThriftEcho for Echo {
            async fn say(
                &self,
                request: thrift::SayRequest,
            ) -> Result<
                volo_thrift::MaybeException<thrift::SayReply, thrift::ThriftEchoSayException>,
                volo_thrift::ServerError,
            > {
                Ok(volo_thrift::MaybeException::Ok(thrift::SayReply {
                    message: request.message,
                    served_by: "thrift".into(),
                }))
            }
        }
        let tracing = self.tracing("thrift");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            thrift::ThriftEchoServer::new(Echo)
                .layer_front(rpc_ext_metrics::volo::MetricsLayer::server(self.metrics))
                .layer_front(rpc_ext_tracing::volo::ThriftTracingLayer::server(tracing))
                .run(volo::net::incoming::DefaultIncoming::from(listener)),
        );
        let client = thrift::ThriftEchoClientBuilder::new("thrift-echo")
            .layer_outer(rpc_ext_tracing::volo::ThriftTracingLayer::client(tracing))
            .layer_outer(rpc_ext_metrics::volo::MetricsLayer::client(self.metrics))
            .address(addr)
            .build();
        // The server may not be accepting yet.
        tests::eventually(Duration::from_secs(5), "a Thrift answer", || async {
            client
                .say(thrift::SayRequest {
                    message: "hi".into(),
                })
                .await
                .ok()
        })
        .await?;
        Ok(())
    }

    pub async fn volo_http(&self) -> anyhow::Result<()> {
        use volo_http::server::route::{get, Router};

        let tracing = self.tracing("volo-http");
        let router: Router = Router::new().route("/users/{id}", get(|| async { "a user" }));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            volo_http::server::Server::new(router)
                .layer(rpc_ext_tracing::volo::HttpTracingLayer::new(tracing))
                .layer(rpc_ext_metrics::volo::HttpMetricsLayer::new(self.metrics))
                .run(volo::net::incoming::DefaultIncoming::from(listener)),
        );
        let client = volo_http::client::Client::builder()
            .layer_outer(rpc_ext_tracing::volo::HttpTracingLayer::new(tracing))
            .layer_outer(rpc_ext_metrics::volo::HttpMetricsLayer::new(self.metrics))
            .build()?;
        for (path, status) in [("/users/7?page=2", 200), ("/nowhere", 404)] {
            let response = client
                .get(format!("http://{addr}{path}"))
                .send::<volo_http::body::Body>()
                .await?;
            assert_eq!(response.status().as_u16(), status, "{path}");
        }
        Ok(())
    }

    pub async fn axum(&self) -> anyhow::Result<()> {
        let tracing = self.tracing("axum");
        let app = axum::Router::new()
            .route("/orders/{id}", axum::routing::get(|| async { "an order" }))
            .layer(rpc_ext_metrics::tower::MetricsLayer::server(self.metrics))
            .layer(rpc_ext_tracing::tower::TracingLayer::server(tracing));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let client = tower::ServiceBuilder::new()
            .layer(rpc_ext_metrics::tower::MetricsLayer::client(self.metrics))
            .layer(rpc_ext_tracing::tower::TracingLayer::client(tracing))
            .service(http);
        for (path, status) in [("/orders/1?page=2", 200), ("/nowhere", 404)] {
            let request = http::Request::get(format!("http://{addr}{path}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())?;
            let response = client.clone().oneshot(request).await?;
            assert_eq!(response.status().as_u16(), status, "{path}");
            http_body_util::BodyExt::collect(response.into_body()).await?;
        }
        Ok(())
    }
}
