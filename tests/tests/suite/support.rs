//! Helpers shared by the integration tests.

use std::{fmt::Debug, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use rpc_ext_metrics::RpcMetrics;
use rpc_ext_registry::{
    health::{RegistrationHealth, RegistryHealth, SubscriptionHealth},
    Instance, ServiceWatch,
};
use rpc_ext_tracing::{
    otlp::{OtlpTracing, TracingGuard, Transport},
    RpcTracing,
};
use tests::{
    k8s::K8sStandIn,
    otlp::{OtlpReceiver, Protocol},
};
use tokio::{net::TcpListener, sync::watch};

use echo::{
    servers::{TonicEcho, VoloEcho},
    tonic_gen, volo_gen,
};

/// An example binary built next to the test binary (`scripts/test.sh`
/// builds them first: `cargo build --workspace --all-features --bins`).
pub fn example_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    // target/<profile>/deps/suite-<hash> → target/<profile>/<name>
    let exe = std::env::current_exe()?;
    let candidate = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|dir| dir.join(name));
    match candidate {
        Some(path) if path.is_file() => Ok(path),
        _ => anyhow::bail!(
            "the `{name}` example is not built: run `cargo build --workspace --all-features \
             --bins` (scripts/test.sh does)"
        ),
    }
}

/// How long a change may take to reach a watcher in these tests; the
/// measured figures are in BENCHMARKS.md.
pub const WATCH_DEADLINE: Duration = Duration::from_secs(2);

/// How long recovery after an etcd fault may take: backoff cap + lease TTL.
pub const RECOVERY_DEADLINE: Duration = Duration::from_secs(20);

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn instance(service: &str, port: u16) -> Instance {
    Instance::new(service, addr(port))
}

/// Waits until the watch shows exactly `ports` (sorted).
pub async fn wait_for_ports(
    watch: &mut ServiceWatch,
    ports: &[u16],
    deadline: Duration,
) -> anyhow::Result<()> {
    let want: Vec<SocketAddr> = ports.iter().map(|p| addr(*p)).collect();
    wait_for_addresses(watch, &want, deadline).await
}

/// Waits until the watch shows exactly `want`, in address order.
pub async fn wait_for_addresses(
    watch: &mut ServiceWatch,
    want: &[SocketAddr],
    deadline: Duration,
) -> anyhow::Result<()> {
    tokio::time::timeout(
        deadline,
        watch.wait_for(|instances| instances.iter().map(|i| i.address).eq(want.iter().copied())),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "{} did not show {want:?} within {deadline:?}; it shows {:?}",
            watch.service(),
            watch.current().instances
        )
    })??;
    Ok(())
}

/// Waits until the watch shows exactly `want` (`ip:port`, in address
/// order).
pub async fn wait_for_ips_within(
    watch: &mut ServiceWatch,
    want: &[&str],
    deadline: Duration,
) -> anyhow::Result<()> {
    let want: Vec<SocketAddr> = want.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    wait_for_addresses(watch, &want, deadline).await
}

/// The name of the one slice of `service` in the Kubernetes stand-in's
/// `default` namespace (its Lease has the same name).
pub fn slice_name(api: &K8sStandIn, service: &str) -> anyhow::Result<String> {
    let names: Vec<String> = api
        .names("default")
        .into_iter()
        .filter(|name| name.starts_with(&format!("{service}-")))
        .collect();
    match names.as_slice() {
        [name] => Ok(name.clone()),
        _ => anyhow::bail!("expected one slice of {service}, found {names:?}"),
    }
}

/// The one entry of `entries`, if any: the tests give a health handle at
/// most one registration and one subscription.
fn only<T: Debug>(mut entries: Vec<T>) -> Option<T> {
    assert!(entries.len() <= 1, "{entries:?}");
    entries.pop()
}

/// The one registration `health` lists, if any.
pub fn only_registration(health: &RegistryHealth) -> Option<RegistrationHealth> {
    only(health.snapshot().registrations)
}

/// The one subscription `health` lists, if any.
pub fn only_subscription(health: &RegistryHealth) -> Option<SubscriptionHealth> {
    only(health.snapshot().subscriptions)
}

/// Waits up to `deadline` until `entry` shows an entry that satisfies
/// `check`; the error says what it showed last.
async fn entry_where<T: Debug>(
    deadline: Duration,
    what: &str,
    entry: impl Fn() -> Option<T>,
    check: impl Fn(&T) -> bool,
) -> anyhow::Result<T> {
    tests::eventually(deadline, what, || {
        let found = entry().filter(&check);
        async move { found }
    })
    .await
    .map_err(|error| anyhow::anyhow!("{error}; it shows {:?}", entry()))
}

/// Waits up to `deadline` until the one registration in `health`
/// satisfies `check`.
pub async fn registration_where(
    health: &RegistryHealth,
    deadline: Duration,
    what: &str,
    check: impl Fn(&RegistrationHealth) -> bool,
) -> anyhow::Result<RegistrationHealth> {
    entry_where(deadline, what, || only_registration(health), check).await
}

/// Waits up to `deadline` until the one subscription in `health`
/// satisfies `check`.
pub async fn subscription_where(
    health: &RegistryHealth,
    deadline: Duration,
    what: &str,
    check: impl Fn(&SubscriptionHealth) -> bool,
) -> anyhow::Result<SubscriptionHealth> {
    entry_where(deadline, what, || only_subscription(health), check).await
}

/// What `promtool check metrics` says of the exposition `text` (the
/// callers decide what they accept: warnings or only a clean pass).
pub fn promtool_check_metrics(text: &str) -> anyhow::Result<std::process::Output> {
    let promtool = tests::require_binary("promtool", "prometheus")?;
    let mut check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        &mut check.stdin.take().context("promtool's stdin")?,
        text.as_bytes(),
    )?;
    Ok(check.wait_with_output()?)
}

/// Completes once `stopped` turns true or its sender is dropped: a
/// server's shutdown signal.
pub async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Serves Echo with tonic on `listener` until `stopped` turns true, the
/// tracing layer outside the metrics layer; returns the address served.
pub fn serve_observed_tonic_echo(
    listener: TcpListener,
    tracing: &RpcTracing,
    metrics: &RpcMetrics,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(rpc_ext_tracing::tower::TracingLayer::server(tracing))
            .layer(rpc_ext_metrics::tower::MetricsLayer::server(metrics))
            .add_service(tonic_gen::echo_server::EchoServer::new(TonicEcho {
                served_by: addr,
            }))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                until_stopped(stopped),
            ),
    );
    Ok(addr)
}

/// Serves Echo with Volo on `listener` behind `layer` (one layer, or a
/// stack of them) until `shutdown` completes; returns the address served.
pub fn serve_volo_echo<L>(
    listener: TcpListener,
    layer: L,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SocketAddr>
where
    L: motore::layer::Layer<volo_grpc::server::Router> + Send + 'static,
    L::Service: motore::Service<
            volo_grpc::context::ServerContext,
            volo_grpc::Request<volo_grpc::body::BoxBody>,
            Response = volo_grpc::Response<volo_grpc::body::BoxBody>,
        > + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as motore::Service<
        volo_grpc::context::ServerContext,
        volo_grpc::Request<volo_grpc::body::BoxBody>,
    >>::Error: Into<volo_grpc::Status>,
{
    let addr = listener.local_addr()?;
    tokio::spawn(
        volo_grpc::server::Server::new()
            .layer_front(layer)
            .add_service(
                volo_grpc::server::ServiceBuilder::new(volo_gen::echo::EchoServer::new(VoloEcho {
                    served_by: addr,
                }))
                .build(),
            )
            .run_with_shutdown(
                volo::net::incoming::DefaultIncoming::from(listener),
                async move {
                    shutdown.await;
                    Ok(())
                },
            ),
    );
    Ok(addr)
}

/// A Volo Echo client of `addr`, the tracing layer outside the metrics
/// layer (the first `layer_outer` is a client's outermost layer).
pub fn observed_volo_echo_client(
    addr: SocketAddr,
    tracing: &RpcTracing,
    metrics: &RpcMetrics,
) -> volo_gen::echo::EchoClient {
    volo_gen::echo::EchoClientBuilder::new("echo")
        .layer_outer(rpc_ext_tracing::volo::GrpcTracingLayer::client(tracing))
        .layer_outer(rpc_ext_metrics::volo::MetricsLayer::client(metrics))
        .address(addr)
        .build()
}

/// A pipeline for one "service": its own provider and resource, exporting
/// over `protocol` to the receiver, not installed globally.
pub fn pipeline(
    service: &str,
    receiver: &OtlpReceiver,
    protocol: Protocol,
) -> anyhow::Result<(TracingGuard, RpcTracing)> {
    let guard = OtlpTracing::new()
        .service_name(service)
        .transport(transport(protocol))
        .endpoint(receiver.endpoint_for(protocol))
        .scheduled_delay(Duration::from_millis(100))
        .install_global(false)
        .install()?;
    let tracing = RpcTracing::builder()
        .tracer_provider(guard.provider())
        .propagator(opentelemetry::propagation::TextMapCompositePropagator::new(
            vec![
                Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
                Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
            ],
        ))
        .build();
    Ok((guard, tracing))
}

/// The exporter setting for the harness's protocol.
pub fn transport(protocol: Protocol) -> Transport {
    match protocol {
        Protocol::Grpc => Transport::Grpc,
        Protocol::HttpProtobuf => Transport::HttpProtobuf,
    }
}

pub type TracedTonicClient = tonic_gen::echo_client::EchoClient<
    rpc_ext_tracing::tower::TracingService<tonic::transport::Channel>,
>;

/// Waits until etcd itself holds `count` keys under the `echo` prefix.
pub async fn wait_for_keys(endpoint: &str, count: usize) -> anyhow::Result<()> {
    let raw = etcd_client::Client::connect([endpoint], None).await?;
    tests::eventually(RECOVERY_DEADLINE, "registrations in etcd", || {
        let mut raw = raw.clone();
        async move {
            let keys = raw
                .get(
                    "/registry-ext/echo/",
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .ok()?;
            (keys.kvs().len() == count).then_some(())
        }
    })
    .await
}
