//! The Echo servers: child processes (this binary with `SOAK_ROLE=server`)
//! serving Volo gRPC Echo with the metrics and tracing layers, `/metrics`
//! on a port of their own, spans over OTLP/HTTP, registered in etcd with
//! `EtcdRegistry`. Each slot keeps its metrics port across restarts (so
//! Prometheus scrapes one target per slot); a restarted server gets a new
//! gRPC port, as a rescheduled instance gets a new address, so that the
//! killed one's key has to expire.

use std::{
    collections::BTreeSet, net::SocketAddr, path::PathBuf, process::Command, time::Duration,
};

use anyhow::Context;
use echo::{servers::VoloEcho, volo_gen};
use rpc_ext_metrics::{MetricsEndpoint, RpcMetrics};
use rpc_ext_registry::{etcd::EtcdRegistry, Instance, Registry};
use rpc_ext_tracing::{
    otlp::{OtlpTracing, Transport},
    RpcTracing,
};
use tests::ChildGuard;

use super::{registrations::Registrations, DISCOVERY_SERVICE, SERVER_SERVICE_NAME};

/// The child's side: serves until killed.
pub fn run_child() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let listen: SocketAddr = var("SOAK_LISTEN")?.parse()?;
    let metrics_listen: SocketAddr = var("SOAK_METRICS_LISTEN")?.parse()?;
    let etcd = var("SOAK_ETCD")?;
    let otlp = var("SOAK_OTLP")?;
    let ttl = Duration::from_secs(var("SOAK_TTL_SECS")?.parse()?);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(async move {
            let metrics = RpcMetrics::builder().build()?;
            let _endpoint = serve_metrics(metrics_listen, &metrics).await?;
            let guard = OtlpTracing::new()
                .service_name(SERVER_SERVICE_NAME)
                .transport(Transport::HttpProtobuf)
                .endpoint(otlp)
                .scheduled_delay(Duration::from_secs(1))
                .install_global(false)
                .install()?;
            let tracing = RpcTracing::builder()
                .tracer_provider(guard.provider())
                .build();
            let listener = tokio::net::TcpListener::bind(listen).await?;
            // Tracing outermost, as in the quickstart.
            let server = tokio::spawn(
                volo_grpc::server::Server::new()
                    .layer_front(rpc_ext_metrics::volo::MetricsLayer::server(&metrics))
                    .layer_front(rpc_ext_tracing::volo::GrpcTracingLayer::server(&tracing))
                    .add_service(
                        volo_grpc::server::ServiceBuilder::new(volo_gen::echo::EchoServer::new(
                            VoloEcho { served_by: listen },
                        ))
                        .build(),
                    )
                    .run(volo::net::incoming::DefaultIncoming::from(listener)),
            );
            let registry = EtcdRegistry::builder([etcd]).ttl(ttl).build().await?;
            let _registration = registry
                .register(Instance::new(DISCOVERY_SERVICE, listen))
                .await?;
            println!("serving on {listen}, registered in etcd");
            server
                .await?
                .map_err(|e| anyhow::anyhow!("the Volo server stopped: {e}"))?;
            drop(guard);
            Ok(())
        })
}

/// Serves `/metrics`, retrying the bind for a while: the port was the
/// killed predecessor's a moment ago.
async fn serve_metrics(addr: SocketAddr, metrics: &RpcMetrics) -> anyhow::Result<MetricsEndpoint> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match MetricsEndpoint::serve(addr, metrics.registry().clone()).await {
            Ok(endpoint) => return Ok(endpoint),
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("binding {addr} for /metrics: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What every server is started with.
pub struct FleetConfig {
    pub etcd_endpoint: String,
    pub otlp_endpoint: String,
    pub ttl: Duration,
    pub dir: PathBuf,
}

/// The parent's side: the server slots, each running at most one server.
pub struct Fleet {
    config: FleetConfig,
    slots: Vec<Slot>,
    /// Every gRPC port handed out: a new server never takes the address of
    /// a killed one, whose key may still be in etcd.
    used_ports: BTreeSet<u16>,
}

struct Slot {
    metrics_port: u16,
    running: Option<Running>,
    log: PathBuf,
}

struct Running {
    address: SocketAddr,
    process: ChildGuard,
}

impl Fleet {
    pub fn new(config: FleetConfig, slots: usize) -> anyhow::Result<Self> {
        let slots = tests::free_ports(slots)?
            .into_iter()
            .enumerate()
            .map(|(index, metrics_port)| Slot {
                metrics_port,
                running: None,
                log: config.dir.join(format!("server-{index}.log")),
            })
            .collect::<Vec<Slot>>();
        let used_ports = slots.iter().map(|slot| slot.metrics_port).collect();
        Ok(Self {
            config,
            slots,
            used_ports,
        })
    }

    /// Keeps `port` (another process's, free while it is down) from being
    /// handed to a server.
    pub fn reserve(&mut self, port: u16) {
        self.used_ports.insert(port);
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Every slot's `/metrics` address, `127.0.0.1:<port>`, by slot.
    pub fn metrics_targets(&self) -> Vec<String> {
        self.slots
            .iter()
            .map(|slot| format!("127.0.0.1:{}", slot.metrics_port))
            .collect()
    }

    /// The running servers' process ids, by slot.
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.slots
            .iter()
            .map(|slot| slot.running.as_ref().and_then(|r| r.process.pid()))
            .collect()
    }

    /// Starts a server in `slot` on a new port and waits until etcd holds
    /// its key.
    pub async fn start(
        &mut self,
        slot: usize,
        registrations: &Registrations,
    ) -> anyhow::Result<SocketAddr> {
        let port = loop {
            let port = tests::free_port()?;
            if self.used_ports.insert(port) {
                break port;
            }
        };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let config = &self.config;
        let slot = &mut self.slots[slot];
        let mut command = Command::new(std::env::current_exe()?);
        super::child_env(&mut command, "server");
        command
            .env("SOAK_LISTEN", address.to_string())
            .env(
                "SOAK_METRICS_LISTEN",
                format!("127.0.0.1:{}", slot.metrics_port),
            )
            .env("SOAK_ETCD", &config.etcd_endpoint)
            .env("SOAK_OTLP", &config.otlp_endpoint)
            .env("SOAK_TTL_SECS", config.ttl.as_secs().to_string());
        registrations.expect(address);
        let mut process = ChildGuard::spawn(&format!("server {address}"), command, &slot.log)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !registrations.is_live(address) {
            process.check_running()?;
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "server {address} not in etcd within 30 s; log:\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slot.running = Some(Running { address, process });
        Ok(address)
    }

    /// The address of the server running in `slot`.
    pub fn address(&self, slot: usize) -> Option<SocketAddr> {
        self.slots[slot].running.as_ref().map(|r| r.address)
    }

    /// Kills the server in `slot` (SIGKILL): no deregistration, its lease
    /// runs out.
    pub fn kill(&mut self, slot: usize) {
        if let Some(mut running) = self.slots[slot].running.take() {
            running.process.kill();
        }
    }

    /// Fails if a server exited by itself.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for slot in &mut self.slots {
            if let Some(running) = slot.running.as_mut() {
                running.process.check_running()?;
            }
        }
        Ok(())
    }
}
