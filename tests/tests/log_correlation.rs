//! Log lines written inside a call carry the call's trace and span ids.
//!
//! A test binary of its own: the test installs a thread-scoped `tracing`
//! subscriber, and tracing-core caches each callsite's interest process-wide,
//! so a callsite first hit by a concurrent test on another thread (the span
//! the layers open, for one) can be cached as uninteresting and skip this
//! thread's subscriber. Alone in its process, nothing races it.

use std::time::Duration;

use echo::{servers::TonicEcho, tonic_gen};
use rpc_ext_tracing::{
    otlp::{OtlpTracing, Transport},
    RpcTracing,
};
use tests::otlp::{OtlpReceiver, Protocol, SPAN_KIND_SERVER};
use tokio::net::TcpListener;

/// Log lines written inside a call carry the call's trace and span ids.
#[tokio::test(flavor = "current_thread")]
async fn log_lines_inside_a_call_carry_the_trace_id() -> anyhow::Result<()> {
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs = Buffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_env_filter("info")
        .finish();
    // Current-thread runtime: the servers run on this thread, under this subscriber.
    let _default = tracing::subscriber::set_default(subscriber);

    let receiver = OtlpReceiver::start().await?;
    let backend_guard = OtlpTracing::new()
        .service_name("backend")
        .transport(Transport::HttpProtobuf)
        .endpoint(receiver.endpoint_for(Protocol::HttpProtobuf))
        .install_global(false)
        .install()?;
    let backend_tracing = RpcTracing::builder()
        .tracer_provider(backend_guard.provider())
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let backend = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(
                &backend_tracing,
            ))
            .layer(tower::util::MapRequestLayer::new(
                |request: http::Request<_>| {
                    tracing::info!("log correlation handler called");
                    request
                },
            ))
            .add_service(tonic_gen::echo_server::EchoServer::new(TonicEcho {
                served_by: backend,
            }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{backend}"))?
        .connect()
        .await?;
    tonic_gen::echo_client::EchoClient::new(channel)
        .say(tonic_gen::SayRequest {
            message: "log me".into(),
        })
        .await?;
    // The exporter needs this (only) runtime thread: flush from another one.
    let provider = backend_guard.provider().clone();
    tokio::task::spawn_blocking(move || provider.force_flush()).await??;
    let spans = receiver
        .wait_for(Duration::from_secs(10), "backend span", |spans| {
            spans
                .iter()
                .any(|s| s.service == "backend" && s.kind == SPAN_KIND_SERVER)
        })
        .await?;
    let backend = spans
        .iter()
        .find(|s| s.service == "backend" && s.kind == SPAN_KIND_SERVER)
        .expect("waited for above");

    let text = String::from_utf8(logs.0.lock().unwrap().clone())?;
    let line = text
        .lines()
        .find(|l| l.contains("log correlation handler called"))
        .unwrap_or_else(|| panic!("handler did not log: {text}"));
    assert!(
        line.contains(&format!("trace_id={}", backend.trace_id)),
        "{line}"
    );
    assert!(
        line.contains(&format!("span_id={}", backend.span_id)),
        "{line}"
    );
    Ok(())
}
