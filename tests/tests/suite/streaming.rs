//! Streaming gRPC calls are measured until their streams end: for each kind
//! (server streaming `Count`, client streaming `Collect`, bidirectional
//! `Chat`) and each way a stream ends (its trailers say OK, its trailers
//! carry an error mid-stream, the client cancels mid-stream), both the
//! server's and the client's span and call duration cover the time the
//! stream was open, with the status the trailers carried (CANCELLED for a
//! cancel).
//!
//! Spans cross a real OTLP wire to the harness's receiver; metrics are read
//! from the registry text. The stream's open time is measured by the test
//! from its own side, between instants both spans must contain (see
//! [`Clock`]). Messages come `INTERVAL` apart and every stream stays open
//! `INTERVAL` after its last message, so that a call measured when its
//! handler returns (or at its last message) would come out short.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use echo::{servers::FAIL, tonic_gen, volo_gen};
use rpc_ext_metrics::volo::ObservedStream;
use rpc_ext_metrics::RpcMetrics;
use rpc_ext_tracing::{otlp::TracingGuard, RpcTracing};
use tests::otlp::{OtlpReceiver, Protocol, ReceivedSpan, SPAN_KIND_CLIENT, SPAN_KIND_SERVER};
use tokio::{net::TcpListener, sync::mpsc, sync::watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{
    observed_volo_echo_client, pipeline, serve_observed_tonic_echo, serve_volo_echo, until_stopped,
};

// The names asserted: OpenTelemetry semantic conventions v1.44.0, as their
// OTel → Prometheus translation spells the metrics. Adjust them here.

/// The span attribute with the gRPC status name.
const STATUS_ATTRIBUTE: &str = "rpc.response.status_code";
/// The span attribute naming a failure.
const ERROR_TYPE_ATTRIBUTE: &str = "error.type";
/// The call duration histograms, in seconds (`_sum` and `_count` series).
const SERVER_DURATION: &str = "rpc_server_call_duration_seconds";
const CLIENT_DURATION: &str = "rpc_client_call_duration_seconds";
/// Their labels: the full method and the gRPC status name.
const METHOD_LABEL: &str = "rpc_method";
const STATUS_LABEL: &str = "rpc_response_status_code";
/// The status names of the three endings.
const OK: &str = "OK";
const UNAVAILABLE: &str = "UNAVAILABLE";
const CANCELLED: &str = "CANCELLED";

/// `rpc.method`, the span name and the `rpc_method` label of a method.
fn full_method(method: Method) -> String {
    format!("echo.Echo/{method:?}")
}

/// The pause between messages (and before a stream ends).
const INTERVAL: Duration = Duration::from_millis(100);
/// How long spans and metrics may take to arrive after the call.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Method {
    /// Server streaming.
    Count,
    /// Client streaming.
    Collect,
    /// Bidirectional.
    Chat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The trailers say OK.
    Normal,
    /// Some messages, then UNAVAILABLE in the trailers.
    Error,
    /// The client goes away mid-stream.
    Cancel,
}

#[derive(Debug, Clone, Copy)]
enum Framework {
    Tonic,
    Volo,
}

macro_rules! scenarios {
    ($($name:ident: $framework:ident $method:ident $ending:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                run(Framework::$framework, Method::$method, Ending::$ending).await
            }
        )*
    };
}

scenarios! {
    tonic_server_streaming_ends_ok: Tonic Count Normal;
    tonic_server_streaming_fails_mid_stream: Tonic Count Error;
    tonic_server_streaming_cancelled_by_the_client: Tonic Count Cancel;
    tonic_client_streaming_ends_ok: Tonic Collect Normal;
    tonic_client_streaming_fails_mid_stream: Tonic Collect Error;
    tonic_client_streaming_cancelled_by_the_client: Tonic Collect Cancel;
    tonic_bidi_streaming_ends_ok: Tonic Chat Normal;
    tonic_bidi_streaming_fails_mid_stream: Tonic Chat Error;
    tonic_bidi_streaming_cancelled_by_the_client: Tonic Chat Cancel;
}

scenarios! {
    volo_server_streaming_ends_ok: Volo Count Normal;
    volo_server_streaming_fails_mid_stream: Volo Count Error;
    volo_server_streaming_cancelled_by_the_client: Volo Count Cancel;
    volo_client_streaming_ends_ok: Volo Collect Normal;
    volo_client_streaming_fails_mid_stream: Volo Collect Error;
    volo_client_streaming_cancelled_by_the_client: Volo Collect Cancel;
    volo_bidi_streaming_ends_ok: Volo Chat Normal;
    volo_bidi_streaming_fails_mid_stream: Volo Chat Error;
    volo_bidi_streaming_cancelled_by_the_client: Volo Chat Cancel;
}

/// One call of `method` through a traced and metered server and client of
/// `framework`, ending as `ending`; then the checks.
async fn run(framework: Framework, method: Method, ending: Ending) -> anyhow::Result<()> {
    tests::init_test_logging();
    let telemetry = Telemetry::start().await?;
    let (_stop, stopped) = watch::channel(false);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let open = match framework {
        Framework::Tonic => {
            let addr = serve_observed_tonic_echo(
                listener,
                &telemetry.server_tracing,
                &telemetry.server_metrics,
                stopped,
            )?;
            let mut client = tonic_client(addr, &telemetry).await?;
            match method {
                Method::Count => tonic_count(&mut client, ending).await?,
                Method::Collect => tonic_collect(&client, ending).await?,
                Method::Chat => tonic_chat(&mut client, ending).await?,
            }
        }
        Framework::Volo => {
            // A stack of `(inner, outer)`: metrics outside tracing.
            let server_layers = motore::layer::Stack::new(
                rpc_ext_tracing::volo::GrpcTracingLayer::server(&telemetry.server_tracing),
                rpc_ext_metrics::volo::MetricsLayer::server(&telemetry.server_metrics),
            );
            let addr = serve_volo_echo(listener, server_layers, until_stopped(stopped))?;
            let client = observed_volo_echo_client(
                addr,
                &telemetry.client_tracing,
                &telemetry.client_metrics,
            );
            match method {
                Method::Count => volo_count(&client, ending).await?,
                Method::Collect => volo_collect(&client, ending).await?,
                Method::Chat => volo_chat(&client, ending).await?,
            }
        }
    };
    telemetry.check(method, ending, open).await
}

/// Instants the test sees on its side of a stream: the first message (sent
/// or received), and the last thing before the end (the last message, or
/// the moment the client cancels). Both spans started before the first and
/// end after the last, so they last at least [`Clock::open`]. (A server
/// span ends when the trailers are sent, which can precede the client's
/// receipt of the last message; but the stream stays open `INTERVAL` after
/// it: the `Count` server pauses before ending, the test before ending
/// `Chat`'s requests, and `Collect` answers only after the last request.)
#[derive(Default)]
struct Clock {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Clock {
    fn tick(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn open(&self) -> anyhow::Result<Duration> {
        match (self.first, self.last) {
            (Some(first), Some(last)) => Ok(last - first),
            _ => anyhow::bail!("no message went through"),
        }
    }
}

/// The message of a request that ends as `ending`.
fn message(ending: Ending) -> &'static str {
    if ending == Ending::Error {
        FAIL
    } else {
        "hi"
    }
}

fn expected_status(ending: Ending) -> &'static str {
    match ending {
        Ending::Normal => OK,
        Ending::Error => UNAVAILABLE,
        Ending::Cancel => CANCELLED,
    }
}

/// Both sides' telemetry: spans to one OTLP receiver (as services "server"
/// and "client"), metrics in one registry per side.
struct Telemetry {
    receiver: OtlpReceiver,
    server_tracing: RpcTracing,
    client_tracing: RpcTracing,
    server_metrics: RpcMetrics,
    client_metrics: RpcMetrics,
    _guards: [TracingGuard; 2],
}

impl Telemetry {
    async fn start() -> anyhow::Result<Self> {
        let receiver = OtlpReceiver::start().await?;
        let (server_guard, _) = pipeline("server", &receiver, Protocol::Grpc)?;
        let (client_guard, _) = pipeline("client", &receiver, Protocol::Grpc)?;
        Ok(Self {
            server_tracing: tracing(&server_guard),
            client_tracing: tracing(&client_guard),
            server_metrics: metrics()?,
            client_metrics: metrics()?,
            receiver,
            _guards: [server_guard, client_guard],
        })
    }

    async fn check(&self, method: Method, ending: Ending, open: Duration) -> anyhow::Result<()> {
        let name = full_method(method);
        let status = expected_status(ending);
        let sides = [
            (
                "server",
                SPAN_KIND_SERVER,
                &self.server_metrics,
                SERVER_DURATION,
            ),
            (
                "client",
                SPAN_KIND_CLIENT,
                &self.client_metrics,
                CLIENT_DURATION,
            ),
        ];
        let find = |spans: &[ReceivedSpan], service: &str, kind: i32| {
            spans
                .iter()
                .find(|s| s.service == service && s.kind == kind && s.name == name)
                .cloned()
        };
        let spans = self
            .receiver
            .wait_for(DEADLINE, &format!("both spans of {name}"), |spans| {
                sides
                    .iter()
                    .all(|(service, kind, ..)| find(spans, service, *kind).is_some())
            })
            .await?;
        for (service, kind, metrics, duration) in sides {
            let span = find(&spans, service, kind).context("checked above")?;
            assert!(
                span.duration() >= open,
                "the {service} span lasted {:?}, the stream was open {open:?}: {span:#?}",
                span.duration()
            );
            check_status(&span, ending);

            let labels = [(METHOD_LABEL, name.as_str()), (STATUS_LABEL, status)];
            let (count, seconds) =
                tests::eventually(DEADLINE, &format!("{duration}{{{labels:?}}}"), || async {
                    let text = rpc_ext_metrics::encode_text(metrics.registry()).ok()?;
                    let count = sample(&text, &format!("{duration}_count"), &labels)?;
                    let sum = sample(&text, &format!("{duration}_sum"), &labels)?;
                    Some((count, sum))
                })
                .await
                .map_err(|e| {
                    let text = rpc_ext_metrics::encode_text(metrics.registry()).unwrap_or_default();
                    anyhow::anyhow!("{e}; the {service} metrics:\n{text}")
                })?;
            assert_eq!(count, 1.0, "one {service} call");
            assert!(
                seconds >= open.as_secs_f64(),
                "the {service} call lasted {seconds} s, the stream was open {open:?}"
            );
        }
        Ok(())
    }
}

/// Echo's methods, declared to both sides. Undeclared, a server names a
/// method `_OTHER` until traffic shows it serves it (method names come from
/// the network), and the one call of a test may fail or be cancelled.
const METHODS: [&str; 4] = [
    "echo.Echo/Say",
    "echo.Echo/Count",
    "echo.Echo/Collect",
    "echo.Echo/Chat",
];

/// Tracing into `guard`'s pipeline, propagating W3C trace context, with
/// Echo's methods declared.
fn tracing(guard: &TracingGuard) -> RpcTracing {
    RpcTracing::builder()
        .tracer_provider(guard.provider())
        .propagator(opentelemetry::propagation::TextMapCompositePropagator::new(
            vec![Box::new(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            )],
        ))
        .recognized_methods(METHODS)
        .build()
}

fn metrics() -> anyhow::Result<RpcMetrics> {
    Ok(RpcMetrics::builder().recognized_methods(METHODS).build()?)
}

/// The span's status: the trailers' status, an error for UNAVAILABLE (a
/// failure on both sides); a cancel is CANCELLED, as the status (a handler
/// that saw the reset and returned it) or as the error (a call dropped
/// unfinished), whichever came first.
fn check_status(span: &ReceivedSpan, ending: Ending) {
    let (status, error) = (span.attr(STATUS_ATTRIBUTE), span.attr(ERROR_TYPE_ATTRIBUTE));
    match ending {
        Ending::Normal => assert_eq!((status, error), (OK, ""), "{span:#?}"),
        Ending::Error => assert_eq!((status, error), (UNAVAILABLE, UNAVAILABLE), "{span:#?}"),
        Ending::Cancel => assert!(
            [status, error].contains(&CANCELLED)
                && [CANCELLED, ""].contains(&status)
                && [CANCELLED, ""].contains(&error),
            "not cancelled: {span:#?}"
        ),
    }
}

/// The value of the sample `name{labels...}` in Prometheus text (the
/// labels given must all be there, in any order, among others).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (set, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let pairs: Vec<&str> = set.split(',').collect();
        labels
            .iter()
            .all(|(key, value)| pairs.contains(&format!("{key}=\"{value}\"").as_str()))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// Keeps a cancelled call's request stream open until the test ends. A
/// client that drops a call still waiting for its response has hyper reset
/// the stream, but only if the request stream has not ended first: the
/// server would then see the end of the requests, and answer.
fn keep_open<T: Send + 'static>(requests: mpsc::Sender<T>) {
    tokio::spawn(async move {
        let _open = requests;
        std::future::pending::<()>().await;
    });
}

// ---- tonic ----

type TonicClient = tonic_gen::echo_client::EchoClient<
    rpc_ext_metrics::tower::MetricsService<
        rpc_ext_tracing::tower::TracingService<tonic::transport::Channel>,
    >,
>;

async fn tonic_client(
    addr: std::net::SocketAddr,
    telemetry: &Telemetry,
) -> anyhow::Result<TonicClient> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(tonic_gen::echo_client::EchoClient::new(
        tower::ServiceBuilder::new()
            .layer(rpc_ext_metrics::tower::MetricsLayer::client(
                &telemetry.client_metrics,
            ))
            .layer(rpc_ext_tracing::tower::TracingLayer::client(
                &telemetry.client_tracing,
            ))
            .service(channel),
    ))
}

fn tonic_say(message: &str) -> tonic_gen::SayRequest {
    tonic_gen::SayRequest {
        message: message.to_owned(),
    }
}

async fn tonic_count(client: &mut TonicClient, ending: Ending) -> anyhow::Result<Duration> {
    let request = tonic_gen::CountRequest {
        message: message(ending).to_owned(),
        // A cancelled stream would go on for long.
        count: if ending == Ending::Cancel { 100 } else { 3 },
        interval_ms: INTERVAL.as_millis().try_into()?,
    };
    let mut replies = client.count(request).await?.into_inner();
    let mut clock = Clock::default();
    match ending {
        Ending::Normal => {
            let mut received = 0;
            while replies.message().await?.is_some() {
                clock.tick();
                received += 1;
            }
            assert_eq!(received, 3);
        }
        Ending::Error => loop {
            match replies.message().await {
                Ok(Some(_)) => clock.tick(),
                Ok(None) => anyhow::bail!("the stream ended without its error"),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    break;
                }
            }
        },
        Ending::Cancel => {
            for _ in 0..2 {
                replies.message().await?.context("a reply")?;
                clock.tick();
            }
            // The client cancels now, mid-stream.
            clock.tick();
            drop(replies);
        }
    }
    clock.open()
}

async fn tonic_collect(client: &TonicClient, ending: Ending) -> anyhow::Result<Duration> {
    let (requests, stream) = mpsc::channel(4);
    let mut caller = client.clone();
    let call = tokio::spawn(async move { caller.collect(ReceiverStream::new(stream)).await });
    let mut clock = Clock::default();
    let messages: &[&str] = match ending {
        Ending::Normal => &["a", "b", "c"],
        Ending::Error => &["a", "b", FAIL],
        Ending::Cancel => &["a", "b"],
    };
    for text in messages {
        tokio::time::sleep(INTERVAL).await;
        clock.tick();
        requests.send(tonic_say(text)).await?;
    }
    match ending {
        Ending::Normal => {
            drop(requests);
            assert_eq!(call.await??.into_inner().message, "a b c");
        }
        Ending::Error => {
            let status = call.await?.expect_err("the call failed");
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        }
        Ending::Cancel => {
            tokio::time::sleep(INTERVAL).await;
            clock.tick();
            call.abort();
            assert!(call.await.is_err_and(|e| e.is_cancelled()));
            keep_open(requests);
        }
    }
    clock.open()
}

async fn tonic_chat(client: &mut TonicClient, ending: Ending) -> anyhow::Result<Duration> {
    let (requests, stream) = mpsc::channel(4);
    let mut replies = client.chat(ReceiverStream::new(stream)).await?.into_inner();
    let mut clock = Clock::default();
    for text in ["a", "b"] {
        tokio::time::sleep(INTERVAL).await;
        requests.send(tonic_say(text)).await?;
        let reply = replies.message().await?.context("an echo")?;
        assert_eq!(reply.message, text);
        clock.tick();
    }
    tokio::time::sleep(INTERVAL).await;
    match ending {
        Ending::Normal => {
            drop(requests);
            assert!(replies.message().await?.is_none());
        }
        Ending::Error => {
            requests.send(tonic_say(FAIL)).await?;
            let status = replies.message().await.expect_err("the call failed");
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        }
        Ending::Cancel => {
            clock.tick();
            drop(replies);
            // With the response headers in, hyper resets the stream only
            // once the request stream ends too: the end of the requests
            // and the reset go out together, and the server sees the reset.
            drop(requests);
        }
    }
    clock.open()
}

// ---- Volo gRPC ----

fn volo_say(message: &str) -> volo_gen::echo::SayRequest {
    volo_gen::echo::SayRequest {
        message: message.to_owned().into(),
    }
}

async fn volo_count(
    client: &volo_gen::echo::EchoClient,
    ending: Ending,
) -> anyhow::Result<Duration> {
    let request = volo_gen::echo::CountRequest {
        message: message(ending).into(),
        count: if ending == Ending::Cancel { 100 } else { 3 },
        interval_ms: INTERVAL.as_millis().try_into()?,
    };
    let mut replies = ObservedStream::new(client.count(request).await?);
    let mut clock = Clock::default();
    match ending {
        Ending::Normal => {
            let mut received = 0;
            while replies.message().await?.is_some() {
                clock.tick();
                received += 1;
            }
            assert_eq!(received, 3);
        }
        Ending::Error => loop {
            match replies.message().await {
                Ok(Some(_)) => clock.tick(),
                Ok(None) => anyhow::bail!("the stream ended without its error"),
                Err(status) => {
                    assert_eq!(status.code(), volo_grpc::Code::Unavailable, "{status:?}");
                    break;
                }
            }
        },
        Ending::Cancel => {
            for _ in 0..2 {
                replies.message().await?.context("a reply")?;
                clock.tick();
            }
            // The client cancels now, mid-stream.
            clock.tick();
            drop(replies);
        }
    }
    clock.open()
}

async fn volo_collect(
    client: &volo_gen::echo::EchoClient,
    ending: Ending,
) -> anyhow::Result<Duration> {
    let (requests, stream) = mpsc::channel(4);
    let caller = client.clone();
    let call = tokio::spawn(async move { caller.collect(ReceiverStream::new(stream)).await });
    let mut clock = Clock::default();
    let messages: &[&str] = match ending {
        Ending::Normal => &["a", "b", "c"],
        Ending::Error => &["a", "b", FAIL],
        Ending::Cancel => &["a", "b"],
    };
    for text in messages {
        tokio::time::sleep(INTERVAL).await;
        clock.tick();
        requests.send(volo_say(text)).await?;
    }
    match ending {
        Ending::Normal => {
            drop(requests);
            assert_eq!(&*call.await??.into_inner().message, "a b c");
        }
        Ending::Error => {
            let status = call.await?.expect_err("the call failed");
            assert_eq!(status.code(), volo_grpc::Code::Unavailable, "{status:?}");
        }
        Ending::Cancel => {
            tokio::time::sleep(INTERVAL).await;
            clock.tick();
            call.abort();
            assert!(call.await.is_err_and(|e| e.is_cancelled()));
            keep_open(requests);
        }
    }
    clock.open()
}

async fn volo_chat(
    client: &volo_gen::echo::EchoClient,
    ending: Ending,
) -> anyhow::Result<Duration> {
    let (requests, stream) = mpsc::channel(4);
    let mut replies = ObservedStream::new(client.chat(ReceiverStream::new(stream)).await?);
    let mut clock = Clock::default();
    for text in ["a", "b"] {
        tokio::time::sleep(INTERVAL).await;
        requests.send(volo_say(text)).await?;
        let reply = replies.message().await?.context("an echo")?;
        assert_eq!(&*reply.message, text);
        clock.tick();
    }
    tokio::time::sleep(INTERVAL).await;
    match ending {
        Ending::Normal => {
            drop(requests);
            assert!(replies.message().await?.is_none());
        }
        Ending::Error => {
            requests.send(volo_say(FAIL)).await?;
            let status = replies.message().await.expect_err("the call failed");
            assert_eq!(status.code(), volo_grpc::Code::Unavailable, "{status:?}");
        }
        Ending::Cancel => {
            clock.tick();
            drop(replies);
            // As for tonic.
            drop(requests);
        }
    }
    clock.open()
}
