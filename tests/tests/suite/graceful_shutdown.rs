//! SIGTERM to an example server: it deregisters, flushes its spans, then
//! exits 0.
//!
//! Needs the `discovery` binary next to the test binary's directory
//! (`scripts/test.sh` builds the example binaries first).

use std::{path::PathBuf, process::Command, time::Duration};

use etcd_client::GetOptions;
use harness::{eventually, EtcdServer};

fn example_binary(name: &str) -> Option<PathBuf> {
    // target/<profile>/deps/suite-<hash> → target/<profile>/<name>
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join(name);
    candidate.is_file().then_some(candidate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_and_exits_zero() -> anyhow::Result<()> {
    let Some(binary) = example_binary("discovery") else {
        anyhow::bail!("the `discovery` example is not built: run `cargo build --workspace --all-features --bins` (scripts/test.sh does)");
    };
    let etcd = EtcdServer::start().await?;
    let receiver = harness::otlp::OtlpReceiver::start().await?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], harness::free_port()?));
    let mut server = Command::new(binary)
        .args(["etcd", "volo-server", &addr.to_string()])
        .env("ETCD_ENDPOINTS", etcd.endpoint())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("RUST_LOG", "warn")
        .spawn()?;
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
    Ok(())
}
