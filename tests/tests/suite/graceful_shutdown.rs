//! SIGTERM to an example server: it deregisters, flushes its spans, then
//! exits 0.
//!
//! Needs the `discovery` binary next to the test binary's directory
//! (`scripts/test.sh` builds the example binaries first).

use std::{process::Command, time::Duration};

use etcd_client::GetOptions;
use tests::{
    eventually,
    otlp::{OtlpReceiver, Protocol},
    EtcdServer,
};

use crate::support::example_binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_and_flushes_over_otlp_http_the_default() -> anyhow::Result<()> {
    sigterm_deregisters_and_exits_zero(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_and_flushes_over_otlp_grpc() -> anyhow::Result<()> {
    sigterm_deregisters_and_exits_zero(Some(Protocol::Grpc)).await
}

/// `protocol`: `None` leaves `OTEL_EXPORTER_OTLP_PROTOCOL` unset.
async fn sigterm_deregisters_and_exits_zero(protocol: Option<Protocol>) -> anyhow::Result<()> {
    let binary = example_binary("discovery")?;
    let etcd = EtcdServer::start().await?;
    let receiver = OtlpReceiver::start().await?;
    let wire = protocol.unwrap_or(Protocol::HttpProtobuf);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tests::free_port()?));
    let mut command = Command::new(binary);
    command
        .args(["etcd", "volo-server", &addr.to_string()])
        .env("ETCD_ENDPOINTS", etcd.endpoint())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint_for(wire))
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env("RUST_LOG", "warn");
    if let Some(protocol) = protocol {
        command.env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env_value());
    }
    let mut server = command.spawn()?;
    let raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let count = || {
        let mut raw = raw.clone();
        async move {
            raw.get(
                "/registry-ext/echo-volo/",
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .ok()
            .map(|r| r.kvs().len())
        }
    };
    eventually(
        Duration::from_secs(30),
        "the server to register",
        || async { (count().await? == 1).then_some(()) },
    )
    .await?;

    // One traced call; its span waits in the batch queue (5 s delay).
    let client = echo::volo_gen::echo::EchoClientBuilder::new("echo-volo")
        .address(addr)
        .build();
    client
        .say(echo::volo_gen::echo::SayRequest {
            message: "bye".into(),
        })
        .await?;

    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()?;
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.try_wait()? {
                return anyhow::Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = server.kill();
                anyhow::bail!("the server did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await??;
    assert!(exit.success(), "exit status {exit}");
    assert_eq!(count().await, Some(0), "the key outlived the server");
    let spans = receiver.spans();
    assert!(
        spans
            .iter()
            .any(|s| s.service == "echo-volo" && s.name == "echo.Echo/Say"),
        "the span was not flushed before exit: {spans:#?}"
    );
    assert!(
        receiver.export_requests_over(wire) > 0,
        "nothing came over {wire:?}"
    );
    Ok(())
}
