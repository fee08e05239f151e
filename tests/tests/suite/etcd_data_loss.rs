//! After etcd loses its data, resolvers keep the last known instances while
//! the registries write theirs again, and notice a replaced cluster by its id.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use rpc_ext_registry::{
    etcd::{EtcdRegistry, EtcdResolver},
    Registry, Resolver, ServiceWatch,
};
use tests::{EtcdServer, FaultProxy};
use tokio::{net::TcpListener, sync::watch};

use crate::support::{instance, wait_for_keys, wait_for_ports, RECOVERY_DEADLINE, WATCH_DEADLINE};

async fn registry(endpoint: String) -> anyhow::Result<EtcdRegistry> {
    Ok(EtcdRegistry::builder([endpoint])
        .ttl(Duration::from_secs(2))
        .max_backoff(Duration::from_millis(500))
        .build()
        .await?)
}

fn resolver(endpoint: String) -> rpc_ext_registry::etcd::EtcdBuilder<EtcdResolver> {
    EtcdResolver::builder([endpoint]).max_backoff(Duration::from_millis(500))
}

/// Every instance set `watch` publishes from now on, as sorted ports.
/// Every snapshot's ports, in publication order.
type Snapshots = Arc<Mutex<Vec<Vec<u16>>>>;

fn record(mut watch: ServiceWatch) -> (Snapshots, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok(snapshot) = watch.changed().await {
                let mut ports: Vec<u16> = snapshot
                    .instances
                    .iter()
                    .map(|i| i.address.port())
                    .collect();
                ports.sort_unstable();
                seen.lock().unwrap().push(ports);
            }
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_empty_snapshot_while_servers_register_again_after_data_loss() -> anyhow::Result<()> {
    tests::init_test_logging();
    let mut etcd = EtcdServer::start().await?;
    // The registry reaches etcd through a proxy, so that the test decides
    // when it may write its registrations again: the resolver surely sees
    // the empty store first.
    let proxy = FaultProxy::in_front_of(&etcd.endpoint()).await?;
    let registry = registry(proxy.endpoint()).await?;
    let resolver = resolver(etcd.endpoint()).build().await?;
    let _a = registry.register(instance("echo", 8001)).await?;
    let _b = registry.register(instance("echo", 8002)).await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[8001, 8002], WATCH_DEADLINE).await?;
    let (seen, recorder) = record(resolver.subscribe("echo").await?);

    proxy.set_refusing(true);
    etcd.wipe_and_restart().await?;
    // Long enough for the resolver to reconnect, notice and list again
    // (its backoff is capped at 0.5 s), shorter than the 10 s grace.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_refusing(false);
    wait_for_keys(&etcd.endpoint(), 2).await?;
    wait_for_ports(&mut watch, &[8001, 8002], WATCH_DEADLINE).await?;
    tokio::time::sleep(Duration::from_millis(500)).await; // let late snapshots arrive
    recorder.abort();

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|ports| !ports.is_empty()),
        "an empty instance set was published after data loss: {seen:?}"
    );
    let current = watch.current();
    assert!(current.last_error.is_none(), "{:?}", current.last_error);
    assert_eq!(resolver.resolve("echo").await?.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_after_data_loss_is_published_once_the_grace_period_ends() -> anyhow::Result<()> {
    tests::init_test_logging();
    let mut etcd = EtcdServer::start().await?;
    let proxy = FaultProxy::in_front_of(&etcd.endpoint()).await?;
    let registry = registry(proxy.endpoint()).await?;
    let grace = Duration::from_secs(2);
    let resolver = resolver(etcd.endpoint())
        .data_loss_grace(grace)
        .build()
        .await?;
    let _a = registry.register(instance("echo", 8011)).await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[8011], WATCH_DEADLINE).await?;

    proxy.set_refusing(true);
    etcd.wipe_and_restart().await?;
    let restarted = tokio::time::Instant::now();
    // Nobody registers again: after the grace period, the truth (empty).
    wait_for_ports(&mut watch, &[], RECOVERY_DEADLINE).await?;
    assert!(
        restarted.elapsed() >= grace - Duration::from_millis(500),
        "empty shown {:?} after the restart, within the {grace:?} grace",
        restarted.elapsed()
    );
    // And the instance shows up as soon as it is back.
    proxy.set_refusing(false);
    wait_for_ports(&mut watch, &[8011], RECOVERY_DEADLINE).await?;
    Ok(())
}

/// A TCP proxy whose upstream can be switched; switching closes every
/// connection opened before.
struct SwitchProxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    epoch: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl SwitchProxy {
    async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let upstream = Arc::new(Mutex::new(upstream));
        let (epoch, _) = watch::channel(0u64);
        let task = tokio::spawn({
            let upstream = upstream.clone();
            let epoch = epoch.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let target = *upstream.lock().unwrap();
                    let mut switched = epoch.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = switched.changed() => {}
                        }
                    });
                }
            }
        });
        Ok(Self {
            addr,
            upstream,
            epoch,
            task,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn switch_to(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
        self.epoch.send_modify(|epoch| *epoch += 1);
    }
}

impl Drop for SwitchProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.epoch.send_modify(|epoch| *epoch += 1);
    }
}

fn socket_addr(endpoint: &str) -> anyhow::Result<SocketAddr> {
    Ok(endpoint.trim_start_matches("http://").parse()?)
}

async fn bump_revision(endpoint: &str, writes: usize) -> anyhow::Result<i64> {
    let mut raw = etcd_client::Client::connect([endpoint], None).await?;
    for i in 0..writes {
        raw.put("/unrelated/counter", i.to_string(), None).await?;
    }
    let response = raw.get("/unrelated/counter", None).await?;
    Ok(response.header().map_or(0, |h| h.revision()))
}

/// Another etcd cluster appears behind the resolver's endpoint, further in
/// revisions than the old one: only its cluster id tells it apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_id_alone_makes_the_resolver_list_again() -> anyhow::Result<()> {
    tests::init_test_logging();
    let old = EtcdServer::start().await?;
    let new = EtcdServer::start().await?;
    let old_registry = registry(old.endpoint()).await?;
    let new_registry = registry(new.endpoint()).await?;
    let _a = old_registry.register(instance("echo", 8021)).await?;
    // The new cluster's instance is written at a revision the old cluster
    // already passed (a watch resumed on the new cluster does not replay
    // it), and the new cluster then runs far ahead (the revision does not
    // go backwards).
    let old_revision = bump_revision(&old.endpoint(), 20).await?;
    let _b = new_registry.register(instance("echo", 8022)).await?;
    let new_revision = bump_revision(&new.endpoint(), 60).await?;
    assert!(
        new_revision > old_revision + 20,
        "{new_revision} vs {old_revision}"
    );

    let proxy = SwitchProxy::start(socket_addr(&old.endpoint())?).await?;
    let resolver = resolver(proxy.endpoint()).build().await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[8021], WATCH_DEADLINE).await?;

    proxy.switch_to(socket_addr(&new.endpoint())?);
    wait_for_ports(&mut watch, &[8022], RECOVERY_DEADLINE).await?;
    Ok(())
}
