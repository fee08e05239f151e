//! OTLP export as users get it: the quickstart binary with only
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set (OTLP/HTTP, the default) and with each
//! alternative and `OTEL_*` setting, read back by the harness's receiver
//! (opentelemetry-proto, not the code under test); and shutdown within its
//! deadline against a collector that never answers.

use std::{process::Output, time::Duration};

use opentelemetry::trace::{Tracer, TracerProvider};
use rpc_ext_tracing::otlp::{Error, OtlpTracing, Transport};
use tests::otlp::{OtlpReceiver, Protocol, TraceFault};
use tokio::{net::TcpListener, time::Instant};

use crate::support::example_binary;

/// Spans of one quickstart run: 3 rounds, each a Volo and a tonic call,
/// each traced on the client and on the server.
const QUICKSTART_SPANS: usize = 12;

/// Runs the quickstart with `env` on top of an environment without any
/// `OTEL_*` variable, as a new user's shell has.
async fn quickstart(env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(example_binary("quickstart")?);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("OTEL_")) {
        command.env_remove(name);
    }
    command
        .env("RUST_LOG", "warn")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .map_err(|_| anyhow::anyhow!("the quickstart did not exit within 60 s"))??;
    Ok(output)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The quickstart exited 0, said it exported every span, and the receiver
/// got every one of them over `protocol` and nothing over the other.
fn assert_every_span_delivered(
    output: &Output,
    receiver: &OtlpReceiver,
    protocol: Protocol,
) -> anyhow::Result<()> {
    let stdout = text(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "quickstart failed ({}):\n{stdout}\n{}",
        output.status,
        text(&output.stderr)
    );
    let spans: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|span| span.service == "quickstart")
        .collect();
    assert_eq!(spans.len(), QUICKSTART_SPANS, "{spans:#?}");
    assert!(
        spans.iter().all(|span| span.name == "echo.Echo/Say"),
        "{spans:#?}"
    );
    assert!(
        stdout.contains(&format!(
            "spans: {QUICKSTART_SPANS} ended, {QUICKSTART_SPANS} exported, 0 dropped"
        )),
        "{stdout}"
    );
    let other = Protocol::ALL.into_iter().find(|p| *p != protocol).unwrap();
    assert!(receiver.export_requests_over(protocol) > 0);
    assert_eq!(receiver.export_requests_over(other), 0, "sent over {other}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_with_only_the_endpoint_set_delivers_every_span_over_otlp_http(
) -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let endpoint = receiver.endpoint_for(Protocol::HttpProtobuf);
    let output = quickstart(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await?;
    assert_every_span_delivered(&output, &receiver, Protocol::HttpProtobuf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_delivers_every_span_over_otlp_grpc() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let endpoint = receiver.endpoint_for(Protocol::Grpc);
    let output = quickstart(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ])
    .await?;
    assert_every_span_delivered(&output, &receiver, Protocol::Grpc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compression_reaches_the_collector_compressed() -> anyhow::Result<()> {
    for protocol in Protocol::ALL {
        let receiver = OtlpReceiver::start().await?;
        let endpoint = receiver.endpoint_for(protocol);
        let output = quickstart(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env_value()),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ])
        .await?;
        assert_every_span_delivered(&output, &receiver, protocol)?;
        assert_eq!(
            receiver.gzip_requests(),
            receiver.export_requests(),
            "{protocol}: every request compressed"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_the_certificate_variables() -> anyhow::Result<()> {
    for protocol in Protocol::ALL {
        let receiver = OtlpReceiver::start_tls(true).await?;
        let endpoint = receiver.endpoint_for(protocol);
        let ca = receiver.ca_certificate_path().display().to_string();
        let cert = receiver.client_certificate_path().display().to_string();
        let key = receiver.client_key_path().display().to_string();
        assert!(endpoint.starts_with("https://"), "{endpoint}");
        let output = quickstart(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env_value()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
        ])
        .await?;
        assert_every_span_delivered(&output, &receiver, protocol)?;

        // Without the collector's certificate nothing is trusted: the spans
        // are lost, and the quickstart says so.
        let refused = OtlpReceiver::start_tls(false).await?;
        let endpoint = refused.endpoint_for(protocol);
        let output = quickstart(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env_value()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ])
        .await?;
        assert!(!output.status.success(), "{protocol}: {output:?}");
        assert!(
            text(&output.stderr).contains("spans were not exported at shutdown"),
            "{protocol}: {}",
            text(&output.stderr)
        );
        assert_eq!(refused.spans().len(), 0);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_disabled_and_exporter_none_send_nothing_console_prints() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let endpoint = receiver.endpoint_for(Protocol::HttpProtobuf);
    for (variable, value) in [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_TRACES_EXPORTER", "console"),
    ] {
        let output = quickstart(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            (variable, value),
        ])
        .await?;
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "{variable}={value}: {output:?}");
        assert_eq!(receiver.export_requests(), 0, "{variable}={value}");
        if value == "console" {
            assert!(stdout.contains("echo.Echo/Say"), "{stdout}");
        } else {
            assert!(
                stdout.contains("spans: 0 ended"),
                "{variable}={value}: {stdout}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_protocol_is_a_clear_error() -> anyhow::Result<()> {
    let output = quickstart(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ])
    .await?;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not supported"),
        "{stderr}"
    );
    Ok(())
}

/// `OTEL_BSP_EXPORT_TIMEOUT` bounds each export: a collector answering after
/// 3 s would be waited for within the 5 s shutdown deadline, but not with a
/// 300 ms export timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_timeout_variable_bounds_each_export() -> anyhow::Result<()> {
    for protocol in Protocol::ALL {
        let receiver = OtlpReceiver::start().await?;
        receiver.set_trace_fault(TraceFault::Slow(Duration::from_secs(3)));
        let endpoint = receiver.endpoint_for(protocol);
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env_value()),
        ];
        let patient = quickstart(&env).await?;
        assert!(patient.status.success(), "{protocol}: {patient:?}");
        let hasty = quickstart(&[env[0], env[1], ("OTEL_BSP_EXPORT_TIMEOUT", "300")]).await?;
        assert!(!hasty.status.success(), "{protocol}: {hasty:?}");
        assert!(
            text(&hasty.stderr).contains("12 spans were not exported at shutdown"),
            "{protocol}: {}",
            text(&hasty.stderr)
        );
    }
    Ok(())
}

/// A collector that accepts connections and never answers.
async fn hung_collector() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(format!("http://{addr}"))
}

const QUEUED: u64 = 2_048;

fn pipeline_with_queued_spans(
    transport: Transport,
    endpoint: String,
    deadline: Duration,
) -> anyhow::Result<rpc_ext_tracing::otlp::TracingGuard> {
    let guard = OtlpTracing::new()
        .service_name("hung")
        .transport(transport)
        .endpoint(endpoint)
        .scheduled_delay(Duration::from_secs(600))
        .shutdown_timeout(deadline)
        .install_global(false)
        .install()?;
    let tracer = guard.provider().tracer("test");
    for _ in 0..QUEUED {
        drop(tracer.start("queued"));
    }
    assert_eq!(guard.stats().ended(), QUEUED);
    assert_eq!(guard.stats().dropped(), 0, "the default queue holds 2,048");
    Ok(guard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_its_deadline_against_a_hung_collector_and_counts_the_loss(
) -> anyhow::Result<()> {
    const DEADLINE: Duration = Duration::from_secs(2);
    for transport in [Transport::Grpc, Transport::HttpProtobuf] {
        let guard = pipeline_with_queued_spans(transport, hung_collector().await?, DEADLINE)?;
        let started = Instant::now();
        let result = guard.shutdown();
        let took = started.elapsed();
        assert!(
            took < DEADLINE + Duration::from_secs(1),
            "{transport:?}: shutdown took {took:?}"
        );
        match result {
            Err(Error::SpansLost { lost, .. }) => assert_eq!(lost, QUEUED, "{transport:?}"),
            other => panic!("{transport:?}: {other:?}"),
        }
    }
    Ok(())
}

/// Dropped on a current-thread runtime, the guard does not hold the only
/// runtime thread for its deadline.
#[tokio::test(flavor = "current_thread")]
async fn dropping_the_guard_on_a_current_thread_runtime_does_not_block_it() -> anyhow::Result<()> {
    for transport in [Transport::Grpc, Transport::HttpProtobuf] {
        let guard =
            pipeline_with_queued_spans(transport, hung_collector().await?, Duration::from_secs(5))?;
        let started = Instant::now();
        drop(guard);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "{transport:?}: drop took {took:?}"
        );
    }
    Ok(())
}
