//! Real RPCs routed by discovery through etcd: Volo clients through
//! `VoloDiscover`, tonic clients through the balanced channel.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use echo::{servers, tonic_gen, volo_gen};
use rpc_ext_registry::{
    etcd::{EtcdRegistry, EtcdResolver},
    volo::VoloDiscover,
    Instance, Registry,
};
use tests::{eventually, EtcdServer};
use tokio::{net::TcpListener, sync::watch};
use volo::discovery::Discover;

use crate::support::WATCH_DEADLINE;

struct Servers {
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn start_servers(count: usize, volo: bool) -> anyhow::Result<Servers> {
    let (stop, stopped) = watch::channel(false);
    let mut addrs = Vec::new();
    for _ in 0..count {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        let mut stopped = stopped.clone();
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let tracing = rpc_ext_tracing::RpcTracing::builder().build();
        if volo {
            tokio::spawn(async move { servers::serve_volo(listener, &tracing, shutdown).await });
        } else {
            tokio::spawn(async move { servers::serve_tonic(listener, &tracing, shutdown).await });
        }
    }
    Ok(Servers { addrs, stop })
}

async fn etcd_pair(etcd: &EtcdServer) -> anyhow::Result<(EtcdRegistry, EtcdResolver)> {
    tests::init_test_logging();
    Ok((
        EtcdRegistry::builder([etcd.endpoint()]).build().await?,
        EtcdResolver::builder([etcd.endpoint()]).build().await?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volo_client_follows_etcd_registrations() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (registry, resolver) = etcd_pair(&etcd).await?;
    let servers = start_servers(2, true).await?;
    let mut registrations = Vec::new();
    for addr in &servers.addrs {
        registrations.push(registry.register(Instance::new("echo", *addr)).await?);
    }

    let client = volo_gen::echo::EchoClientBuilder::new("echo")
        .discover(VoloDiscover::new(resolver))
        .build();
    let call = || {
        let client = client.clone();
        async move {
            client
                .say(volo_gen::echo::SayRequest {
                    message: "hi".into(),
                })
                .await
                .map(|r| r.into_inner().served_by.to_string())
        }
    };
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        seen.insert(call().await?);
    }
    let all: BTreeSet<String> = servers.addrs.iter().map(ToString::to_string).collect();
    assert_eq!(seen, all, "calls are spread over both instances");

    // Deregister the first: the load balancer drops it after the watch event.
    registrations.remove(0).deregister().await?;
    let remaining = servers.addrs[1].to_string();
    eventually(
        WATCH_DEADLINE,
        "calls to stop reaching the removed instance",
        || async {
            let mut served = BTreeSet::new();
            for _ in 0..10 {
                served.insert(call().await.ok()?);
            }
            (served == BTreeSet::from([remaining.clone()])).then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volo_discover_reports_added_updated_and_removed() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (registry, resolver) = etcd_pair(&etcd).await?;
    let discover = VoloDiscover::new(resolver);
    let endpoint = volo::context::Endpoint::new("echo".into());
    assert!(discover.discover(&endpoint).await?.is_empty());
    let mut changes = discover.watch(None).expect("watch is supported");

    let a: SocketAddr = "127.0.0.1:9001".parse()?;
    let _first = registry.register(Instance::new("echo", a)).await?;
    let change = tokio::time::timeout(WATCH_DEADLINE, changes.recv()).await??;
    assert_eq!(change.key, "echo");
    assert_eq!(change.added.len(), 1);
    assert_eq!(change.all.len(), 1);

    let _heavier = registry
        .register(
            Instance::new("echo", a)
                .with_weight(42)
                .with_tag("zone", "b"),
        )
        .await?;
    let change = tokio::time::timeout(WATCH_DEADLINE, changes.recv()).await??;
    assert_eq!(change.updated.len(), 1);
    assert_eq!(change.updated[0].weight, 42);
    assert_eq!(change.updated[0].tags["zone"], "b");

    // Weight 0 takes an instance out of rotation: Volo sees it removed.
    let _drained = registry
        .register(Instance::new("echo", a).with_weight(0))
        .await?;
    let change = tokio::time::timeout(WATCH_DEADLINE, changes.recv()).await??;
    assert_eq!(change.removed.len(), 1);
    assert!(change.all.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_balanced_channel_follows_etcd_registrations() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (registry, resolver) = etcd_pair(&etcd).await?;
    let servers = start_servers(3, false).await?;
    let mut registrations = Vec::new();
    for addr in &servers.addrs[..2] {
        registrations.push(registry.register(Instance::new("echo", *addr)).await?);
    }
    let channel = rpc_ext_registry::tonic::balanced_channel(&resolver, "echo").await?;
    let client = tonic_gen::echo_client::EchoClient::new(channel);
    let served = |calls: usize| {
        let client = client.clone();
        async move {
            let mut served = BTreeSet::new();
            for _ in 0..calls {
                let reply = client
                    .clone()
                    .say(tonic_gen::SayRequest {
                        message: "hi".into(),
                    })
                    .await
                    .ok()?;
                served.insert(reply.into_inner().served_by);
            }
            Some(served)
        }
    };
    let first_two: BTreeSet<String> = servers.addrs[..2].iter().map(ToString::to_string).collect();
    eventually(WATCH_DEADLINE, "calls to reach both instances", || async {
        (served(30).await? == first_two).then_some(())
    })
    .await?;

    // A third instance joins, the first leaves.
    registrations.push(
        registry
            .register(Instance::new("echo", servers.addrs[2]))
            .await?,
    );
    registrations.remove(0).deregister().await?;
    let last_two: BTreeSet<String> = servers.addrs[1..].iter().map(ToString::to_string).collect();
    eventually(
        Duration::from_secs(5),
        "calls to follow the new set",
        || async { (served(30).await? == last_two).then_some(()) },
    )
    .await?;
    Ok(())
}
