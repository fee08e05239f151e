//! Servers that register themselves in a registry and clients that find
//! them there, for Volo and for tonic, with etcd, ZooKeeper, Consul or
//! Kubernetes.
//!
//! Each backend is a feature of this package (etcd's client needs `protoc`
//! at build time; ZooKeeper, Consul and Kubernetes do not):
//!
//! ```text
//! etcd &                                   # or: docker compose up -d etcd
//! cargo run -p examples --features etcd --bin discovery -- etcd volo-server 127.0.0.1:50051
//! cargo run -p examples --features etcd --bin discovery -- etcd volo-client
//! cargo run -p examples --features etcd --bin discovery -- etcd tonic-server 127.0.0.1:50061
//! cargo run -p examples --features etcd --bin discovery -- etcd tonic-client
//! ```
//!
//! `ETCD_ENDPOINTS` (comma-separated, default `http://127.0.0.1:2379`) points
//! at etcd; `ZOOKEEPER_CONNECT` (default `127.0.0.1:2181`, a `/chroot`
//! suffix allowed) at ZooKeeper; Consul is found through `CONSUL_HTTP_ADDR`, Kubernetes through
//! the in-cluster service account or `KUBECONFIG` (`K8S_NAMESPACE`, default
//! `default`). Servers deregister on Ctrl-C or SIGTERM before they stop
//! serving, then flush their spans.

// Built without any backend, only the usage and feature messages remain.
#![cfg_attr(
    not(any(
        feature = "etcd",
        feature = "zookeeper",
        feature = "consul",
        feature = "k8s"
    )),
    allow(dead_code, unused_imports, unused_variables)
)]

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context};
use echo::{servers, tonic_gen, volo_gen};
#[cfg(feature = "consul")]
use rpc_ext_registry::consul::{ConsulRegistry, ConsulResolver};
#[cfg(feature = "etcd")]
use rpc_ext_registry::etcd::{EtcdRegistry, EtcdResolver};
#[cfg(feature = "k8s")]
use rpc_ext_registry::k8s::{K8sRegistry, K8sResolver};
#[cfg(feature = "zookeeper")]
use rpc_ext_registry::zookeeper::{ZooKeeperRegistry, ZooKeeperResolver};
use rpc_ext_registry::{volo::VoloDiscover, Instance, Registry, Resolver};
use tokio::net::TcpListener;

const VOLO_SERVICE: &str = "echo-volo";
const TONIC_SERVICE: &str = "echo-tonic";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let backend = args.next().unwrap_or_default();
    let command = args.next().unwrap_or_default();
    let listen: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .context("the listen address must look like 127.0.0.1:50051")?;
    const USAGE: &str = "usage: discovery etcd|zookeeper|consul|k8s \
        volo-server|tonic-server [listen-addr] | volo-client | tonic-client";
    match (backend.as_str(), command.as_str()) {
        #[cfg(feature = "etcd")]
        ("etcd", "volo-server" | "tonic-server") => {
            let registry = EtcdRegistry::builder(etcd_endpoints()).build().await?;
            serve(registry, listen, command == "volo-server").await
        }
        #[cfg(feature = "zookeeper")]
        ("zookeeper", "volo-server" | "tonic-server") => {
            let registry = ZooKeeperRegistry::builder(zookeeper_connect())
                .build()
                .await?;
            serve(registry, listen, command == "volo-server").await
        }
        #[cfg(feature = "zookeeper")]
        ("zookeeper", "volo-client") => {
            let resolver = ZooKeeperResolver::builder(zookeeper_connect())
                .build()
                .await?;
            volo_client_of(resolver, VOLO_SERVICE).await
        }
        #[cfg(feature = "zookeeper")]
        ("zookeeper", "tonic-client") => {
            let resolver = ZooKeeperResolver::builder(zookeeper_connect())
                .build()
                .await?;
            tonic_client_of(resolver, TONIC_SERVICE).await
        }
        #[cfg(feature = "consul")]
        ("consul", "volo-server" | "tonic-server") => {
            let registry = ConsulRegistry::builder().build()?;
            serve(registry, listen, command == "volo-server").await
        }
        #[cfg(feature = "etcd")]
        ("etcd", "volo-client") => {
            let resolver = EtcdResolver::builder(etcd_endpoints()).build().await?;
            volo_client_of(resolver, VOLO_SERVICE).await
        }
        #[cfg(feature = "etcd")]
        ("etcd", "tonic-client") => {
            let resolver = EtcdResolver::builder(etcd_endpoints()).build().await?;
            tonic_client_of(resolver, TONIC_SERVICE).await
        }
        #[cfg(feature = "consul")]
        ("consul", "volo-client") => {
            volo_client_of(ConsulResolver::builder().build()?, VOLO_SERVICE).await
        }
        #[cfg(feature = "consul")]
        ("consul", "tonic-client") => {
            tonic_client_of(ConsulResolver::builder().build()?, TONIC_SERVICE).await
        }
        #[cfg(feature = "k8s")]
        ("k8s", "volo-server" | "tonic-server") => {
            let registry = K8sRegistry::try_default()
                .await?
                .namespace(k8s_namespace())
                .port_name("grpc");
            serve(registry, listen, command == "volo-server").await
        }
        #[cfg(feature = "k8s")]
        ("k8s", "volo-client") => {
            let target = format!("k8s://{VOLO_SERVICE}.{}:grpc", k8s_namespace());
            volo_client_of(K8sResolver::try_default().await?, &target).await
        }
        #[cfg(feature = "k8s")]
        ("k8s", "tonic-client") => {
            let target = format!("k8s://{TONIC_SERVICE}.{}:grpc", k8s_namespace());
            tonic_client_of(K8sResolver::try_default().await?, &target).await
        }
        (backend @ ("etcd" | "zookeeper" | "consul" | "k8s"), _) if !compiled_in(backend) => bail!(
            "this binary was built without the `{backend}` backend: \
             cargo run -p examples --features {backend} --bin discovery -- {backend} ..."
        ),
        _ => bail!(USAGE),
    }
}

#[cfg(feature = "etcd")]
fn etcd_endpoints() -> Vec<String> {
    std::env::var("ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

#[cfg(feature = "zookeeper")]
fn zookeeper_connect() -> String {
    std::env::var("ZOOKEEPER_CONNECT").unwrap_or_else(|_| "127.0.0.1:2181".into())
}

#[cfg(feature = "k8s")]
fn k8s_namespace() -> String {
    std::env::var("K8S_NAMESPACE").unwrap_or_else(|_| "default".into())
}

/// Whether the backend's feature was on when this binary was built.
fn compiled_in(backend: &str) -> bool {
    (backend == "etcd" && cfg!(feature = "etcd"))
        || (backend == "zookeeper" && cfg!(feature = "zookeeper"))
        || (backend == "consul" && cfg!(feature = "consul"))
        || (backend == "k8s" && cfg!(feature = "k8s"))
}

async fn serve(registry: impl Registry, listen: SocketAddr, volo: bool) -> anyhow::Result<()> {
    let service = if volo { VOLO_SERVICE } else { TONIC_SERVICE };
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let tracing_guard = match std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Some(_) => Some(
            rpc_ext_tracing::otlp::OtlpTracing::new()
                .service_name(service)
                .install()?,
        ),
        None => None,
    };
    let tracing = rpc_ext_tracing::RpcTracing::builder().build();
    let server = if volo {
        tokio::spawn(async move { servers::serve_volo(listener, &tracing, shutdown).await })
    } else {
        tokio::spawn(async move { servers::serve_tonic(listener, &tracing, shutdown).await })
    };

    // Listening on 0.0.0.0 registers the host's first non-loopback address.
    let registration = registry.register(Instance::new(service, local)).await?;
    println!(
        "{service} serving on {local}, registered as {}",
        registration.instance().address
    );

    shutdown_signal().await;
    // Leave the registry before closing the listener, so that no client is
    // sent to a server that is going away.
    registration.deregister().await?;
    let _ = stop_tx.send(true);
    server.await??;
    if let Some(guard) = tracing_guard {
        guard.shutdown()?; // export what is queued before exiting
    }
    println!("{service} deregistered and stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn volo_client_of(resolver: impl Resolver, service: &str) -> anyhow::Result<()> {
    let client = volo_gen::echo::EchoClientBuilder::new(service)
        .discover(VoloDiscover::new(resolver))
        .build();
    for i in 1..=5 {
        let reply = client
            .say(volo_gen::echo::SayRequest {
                message: format!("hello #{i}").into(),
            })
            .await?
            .into_inner();
        println!("{:?} served by {}", reply.message, reply.served_by);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn tonic_client_of(resolver: impl Resolver, service: &str) -> anyhow::Result<()> {
    let channel = rpc_ext_registry::tonic::balanced_channel(&resolver, service).await?;
    let mut client = tonic_gen::echo_client::EchoClient::new(channel);
    for i in 1..=5 {
        let reply = client
            .say(tonic_gen::SayRequest {
                message: format!("hello #{i}"),
            })
            .await?
            .into_inner();
        println!("{:?} served by {}", reply.message, reply.served_by);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
