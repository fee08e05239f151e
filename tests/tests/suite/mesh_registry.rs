//! Mesh mode around a real etcd: in mesh mode nothing reaches etcd and
//! clients go to the address the mesh routes; out of it, etcd is used as
//! without the wrapper.

use std::{net::SocketAddr, time::Duration};

use echo::{servers, tonic_gen, volo_gen};
use etcd_client::GetOptions;
use rpc_ext_registry::{
    etcd::{EtcdRegistry, EtcdResolver},
    mesh::{MeshAware, MeshMode, AUTHORITY_TAG},
    volo::VoloDiscover,
    Error, Instance, Registry, Resolver,
};
use tests::{eventually, EtcdServer};
use tokio::{net::TcpListener, sync::watch};
use volo::discovery::Discover;

/// How long a call through a fresh client may take to be answered on a
/// loaded machine (connecting, the balancer's first endpoint).
const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// Every key etcd holds, with its value.
async fn etcd_keys(etcd: &EtcdServer) -> anyhow::Result<Vec<(String, String)>> {
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let response = raw.get("", Some(GetOptions::new().with_all_keys())).await?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect())
}

async fn etcd_registry(etcd: &EtcdServer) -> anyhow::Result<EtcdRegistry> {
    tests::init_test_logging();
    Ok(EtcdRegistry::builder([etcd.endpoint()]).build().await?)
}

fn env_mesh(value: &'static str) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    move |name| (name == "RPC_EXT_MESH").then(|| value.to_owned())
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_mode_writes_nothing_to_etcd_and_deregisters() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    for (how, registry) in [
        (
            "option",
            MeshAware::builder(etcd_registry(&etcd).await?)
                .mode(MeshMode::On)
                .build(),
        ),
        (
            "RPC_EXT_MESH=on",
            MeshAware::builder(etcd_registry(&etcd).await?)
                .env(env_mesh("on"))
                .build(),
        ),
    ] {
        assert!(registry.mesh().enabled, "{how}");
        let registration = registry.register(Instance::new("echo", addr(7101))).await?;
        // An etcd registration is written before `register` returns.
        let keys = etcd_keys(&etcd).await?;
        assert!(keys.is_empty(), "{how}: nothing in etcd, found {keys:?}");
        assert_eq!(registration.instance().address, addr(7101));
        let listed = registry.health().snapshot().registrations;
        assert_eq!(listed.len(), 1, "{how}");
        assert_eq!((listed[0].backend, &*listed[0].service), ("mesh", "echo"));
        registration.deregister().await?;
        assert!(registry.health().snapshot().registrations.is_empty());
        let keys = etcd_keys(&etcd).await?;
        assert!(keys.is_empty(), "{how}: {keys:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_mode_off_registers_in_etcd() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    for (how, port, registry, reason) in [
        (
            "option",
            7102,
            MeshAware::builder(etcd_registry(&etcd).await?)
                .mode(MeshMode::Off)
                .build(),
            "set by option",
        ),
        (
            "RPC_EXT_MESH=off",
            7103,
            MeshAware::builder(etcd_registry(&etcd).await?)
                .env(env_mesh("off"))
                .build(),
            "RPC_EXT_MESH",
        ),
    ] {
        assert_eq!(
            (registry.mesh().enabled, registry.mesh().reason),
            (false, reason)
        );
        let registration = registry.register(Instance::new("echo", addr(port))).await?;
        let keys = etcd_keys(&etcd).await?;
        let key = format!("/registry-ext/echo/127.0.0.1:{port}");
        assert_eq!(keys.len(), 1, "{how}: {keys:?}");
        assert_eq!(keys[0].0, key, "{how}");
        let value: serde_json::Value = serde_json::from_str(&keys[0].1)?;
        assert_eq!(value["address"], format!("127.0.0.1:{port}"), "{how}");
        assert!(registry.health().snapshot().registrations.is_empty());
        registration.deregister().await?;
        let keys = etcd_keys(&etcd).await?;
        assert!(keys.is_empty(), "{how}: deregistered, found {keys:?}");
    }
    Ok(())
}

struct Servers {
    volo: SocketAddr,
    tonic: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn start_servers() -> anyhow::Result<Servers> {
    let (stop, stopped) = watch::channel(false);
    let shutdown = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let tracing = rpc_ext_tracing::RpcTracing::builder().build();
    let volo_listener = TcpListener::bind("127.0.0.1:0").await?;
    let volo = volo_listener.local_addr()?;
    let (tracer, stopping) = (tracing.clone(), shutdown(stopped.clone()));
    tokio::spawn(async move { servers::serve_volo(volo_listener, &tracer, stopping).await });
    let tonic_listener = TcpListener::bind("127.0.0.1:0").await?;
    let tonic = tonic_listener.local_addr()?;
    let stopping = shutdown(stopped);
    tokio::spawn(async move { servers::serve_tonic(tonic_listener, &tracing, stopping).await });
    Ok(Servers { volo, tonic, stop })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volo_and_tonic_clients_reach_the_routed_server_in_mesh_mode() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let servers = start_servers().await?;
    // Decoys in etcd at a port nothing listens on: a wrapper that asked
    // etcd would send the calls there, and they would fail.
    let decoy_port = tests::free_port()?;
    let registry = etcd_registry(&etcd).await?;
    let _decoys = [
        registry
            .register(Instance::new("echo", addr(decoy_port)))
            .await?,
        registry
            .register(Instance::new("echo-tonic", addr(decoy_port)))
            .await?,
    ];
    // IPs, not `localhost`: a host whose `localhost` is ::1 too would get
    // two instances, one with no server behind it.
    let volo_route = servers.volo.to_string();
    let tonic_route = servers.tonic.to_string();
    let resolver = MeshAware::builder(EtcdResolver::builder([etcd.endpoint()]).build().await?)
        .mode(MeshMode::On)
        .route("echo", &volo_route)
        .route("echo-tonic", &tonic_route)
        .build();

    // Volo, through VoloDiscover: one instance, the routed address, tagged.
    let discover = VoloDiscover::new(resolver.clone());
    let found = discover
        .discover(&volo::context::Endpoint::new("echo".into()))
        .await?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].address, volo::net::Address::Ip(servers.volo));
    assert_eq!(found[0].tags[AUTHORITY_TAG], volo_route);
    let client = volo_gen::echo::EchoClientBuilder::new("echo")
        .discover(discover)
        .build();
    let reply = tokio::time::timeout(
        CALL_DEADLINE,
        client.say(volo_gen::echo::SayRequest {
            message: "hi".into(),
        }),
    )
    .await??;
    assert_eq!(reply.into_inner().served_by, servers.volo.to_string());

    // tonic, through the balanced channel.
    let channel = rpc_ext_registry::tonic::balanced_channel(&resolver, "echo-tonic").await?;
    let client = tonic_gen::echo_client::EchoClient::new(channel);
    let served_by = eventually(CALL_DEADLINE, "a tonic call to be answered", || {
        let mut client = client.clone();
        async move {
            let reply = client
                .say(tonic_gen::SayRequest {
                    message: "hi".into(),
                })
                .await
                .ok()?;
            Some(reply.into_inner().served_by)
        }
    })
    .await?;
    assert_eq!(served_by, servers.tonic.to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_fails_the_first_subscribe() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let resolver = MeshAware::builder(EtcdResolver::builder([etcd.endpoint()]).build().await?)
        .mode(MeshMode::On)
        .port(50051)
        .route("echo", "nonexistent.invalid")
        .build();
    // A route to a host, a host itself, and a Kubernetes target (its
    // Service DNS name, with no cluster DNS here).
    for service in [
        "echo",
        "nonexistent.example.invalid:80",
        "k8s://nonexistent.prod:grpc",
    ] {
        match resolver.subscribe(service).await {
            Err(Error::Resolve {
                service: failed,
                source,
            }) => {
                assert_eq!(failed, service);
                assert!(
                    matches!(
                        &*source,
                        Error::Backend {
                            backend: "mesh",
                            ..
                        } | Error::Timeout {
                            backend: "mesh",
                            ..
                        }
                    ),
                    "{source}"
                );
            }
            other => panic!("{service}: expected Error::Resolve, got {other:?}"),
        }
    }
    // Through Volo too: an error for the load balancer, not a panic.
    let discover = VoloDiscover::new(resolver.clone());
    assert!(discover
        .discover(&volo::context::Endpoint::new("echo".into()))
        .await
        .is_err());
    let followed = resolver.health().snapshot().subscriptions;
    assert_eq!(followed.len(), 3, "{followed:?}");
    assert!(followed
        .iter()
        .all(|s| s.backend == "mesh" && s.instances == 0 && s.errors >= 1));
    Ok(())
}
