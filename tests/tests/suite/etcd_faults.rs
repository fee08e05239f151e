//! Registrations and resolvers survive etcd restarts, data loss and member loss.

use std::{net::SocketAddr, time::Duration};

use etcd_client::GetOptions;
use rpc_ext_registry::{
    etcd::{EtcdRegistry, EtcdResolver},
    Registry, Resolver, ServiceSnapshot, ServiceWatch,
};
use tests::{eventually, EtcdCluster, EtcdServer};

use crate::support::{instance, wait_for_ports, RECOVERY_DEADLINE, WATCH_DEADLINE};

async fn connect(endpoints: Vec<String>) -> anyhow::Result<(EtcdRegistry, EtcdResolver)> {
    tests::init_test_logging();
    let registry = EtcdRegistry::builder(&endpoints)
        .ttl(Duration::from_secs(2))
        .max_backoff(Duration::from_millis(500))
        .build()
        .await?;
    let resolver = EtcdResolver::builder(&endpoints)
        .max_backoff(Duration::from_millis(500))
        .build()
        .await?;
    Ok((registry, resolver))
}

/// The ports of the `echo` instances etcd itself holds, sorted.
async fn ports_in_etcd(raw: &mut etcd_client::Client) -> anyhow::Result<Vec<u16>> {
    let keys = raw
        .get("/registry-ext/echo/", Some(GetOptions::new().with_prefix()))
        .await?;
    let mut ports = keys
        .kvs()
        .iter()
        .map(|kv| {
            // `<prefix>/<service>/<address>`
            let key = kv.key_str()?;
            let address: SocketAddr = key.rsplit('/').next().unwrap_or_default().parse()?;
            Ok(address.port())
        })
        .collect::<anyhow::Result<Vec<u16>>>()?;
    ports.sort_unstable();
    Ok(ports)
}

/// Waits until etcd holds exactly the `echo` instances at `want`.
async fn wait_for_ports_in_etcd(endpoint: &str, want: &[u16]) -> anyhow::Result<()> {
    let raw = etcd_client::Client::connect([endpoint], None).await?;
    eventually(RECOVERY_DEADLINE, "the registrations in etcd", || {
        let mut raw = raw.clone();
        async move { (ports_in_etcd(&mut raw).await.ok()? == want).then_some(()) }
    })
    .await
}

/// The revision etcd at `endpoint` is at.
async fn revision(endpoint: &str) -> anyhow::Result<i64> {
    let mut raw = etcd_client::Client::connect([endpoint], None).await?;
    let response = raw.get("/", None).await?;
    Ok(response.header().map_or(0, |h| h.revision()))
}

fn ports(snapshot: &ServiceSnapshot) -> Vec<u16> {
    snapshot
        .instances
        .iter()
        .map(|i| i.address.port())
        .collect()
}

/// Waits until `watch` reports the outage, and returns what it shows then.
async fn wait_for_outage(watch: &ServiceWatch) -> anyhow::Result<ServiceSnapshot> {
    eventually(
        Duration::from_secs(10),
        "the watch to report the outage",
        || {
            let snapshot = watch.current();
            async move { snapshot.last_error.is_some().then_some(snapshot) }
        },
    )
    .await
}

/// Waits until `watch` shows exactly `want` with no error.
async fn wait_for_recovery(watch: &ServiceWatch, want: &[u16]) -> anyhow::Result<ServiceSnapshot> {
    eventually(RECOVERY_DEADLINE, "the watch to recover", || {
        let snapshot = watch.current();
        async move { (snapshot.last_error.is_none() && ports(&snapshot) == want).then_some(snapshot) }
    })
    .await
    .map_err(|error| anyhow::anyhow!("{error}; it shows {:?}", watch.current()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_survives_etcd_restart_and_data_loss() -> anyhow::Result<()> {
    let mut etcd = EtcdServer::start().await?;
    let (registry, resolver) = connect(vec![etcd.endpoint()]).await?;
    let _a = registry.register(instance("echo", 8001)).await?;
    let _b = registry.register(instance("echo", 8002)).await?;
    // The existing watch: subscribed before the faults, followed through both.
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[8001, 8002], WATCH_DEADLINE).await?;
    let before = watch.current();
    assert!(before.last_error.is_none());

    // Killed for longer than the TTL, then restarted with its data.
    etcd.kill();
    let outage = wait_for_outage(&watch).await?;
    assert_eq!(ports(&outage), [8001, 8002], "the last known set is kept");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end_of_outage = watch.current();
    assert!(
        end_of_outage.last_error.is_some(),
        "the outage is still reported"
    );
    assert_eq!(ports(&end_of_outage), [8001, 8002]);
    assert_eq!(
        end_of_outage.generation, before.generation,
        "no set is published while etcd is down"
    );
    etcd.restart().await?;
    wait_for_ports_in_etcd(&etcd.endpoint(), &[8001, 8002]).await?;
    wait_for_recovery(&watch, &[8001, 8002]).await?;
    // Nothing changed in etcd, so nothing needed publishing (the generation
    // counts published sets); a change now shows the watch is live again.
    let c = registry.register(instance("echo", 8003)).await?;
    wait_for_ports(&mut watch, &[8001, 8002, 8003], WATCH_DEADLINE).await?;
    let live = watch.current();
    assert!(live.last_error.is_none());
    assert!(
        live.generation > before.generation,
        "generation {} after the restart, {} before",
        live.generation,
        before.generation
    );
    c.deregister().await?;
    wait_for_ports(&mut watch, &[8001, 8002], WATCH_DEADLINE).await?;

    // Data loss: a wiped data dir. The old store's revision is moved far
    // ahead first, so that a watch still waiting for it after the wipe
    // would miss every later write.
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    for n in 0..100 {
        raw.put(format!("/elsewhere/{n}"), "x", None).await?;
    }
    let old_revision = revision(&etcd.endpoint()).await?;
    let before = watch.current();
    etcd.kill();
    let outage = wait_for_outage(&watch).await?;
    assert_eq!(ports(&outage), [8001, 8002], "the last known set is kept");
    etcd.wipe_and_restart().await?;
    // The registry writes both again; the old watch lists the new store.
    wait_for_ports_in_etcd(&etcd.endpoint(), &[8001, 8002]).await?;
    let recovered = wait_for_recovery(&watch, &[8001, 8002]).await?;
    assert!(
        recovered.generation > before.generation,
        "generation {} after the wipe, {} before",
        recovered.generation,
        before.generation
    );
    // Updates after recovery still flow to the old watch, at revisions the
    // old store had passed long ago.
    let c = registry.register(instance("echo", 8003)).await?;
    wait_for_ports(&mut watch, &[8001, 8002, 8003], WATCH_DEADLINE).await?;
    let new_revision = revision(&etcd.endpoint()).await?;
    assert!(
        new_revision < old_revision,
        "the new store reached revision {new_revision}, the old one was at {old_revision}"
    );
    c.deregister().await?;
    wait_for_ports(&mut watch, &[8001, 8002], WATCH_DEADLINE).await?;
    assert!(watch.current().last_error.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_member_cluster_keeps_working_with_one_member_down() -> anyhow::Result<()> {
    let mut cluster = EtcdCluster::start(3).await?;
    let (registry, resolver) = connect(cluster.endpoints()).await?;
    let _a = registry.register(instance("echo", 8101)).await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[8101], WATCH_DEADLINE).await?;

    for victim in 0..3 {
        // A service nobody has resolved yet: resolving it after the kill
        // must list it from etcd instead of answering from a watch.
        let probe = format!("probe-{victim}");
        let _probe = registry.register(instance(&probe, 8201)).await?;

        cluster.members[victim].kill();
        // Requests sent at once may reach the dead member's connection
        // first; they must be retried on a surviving member, not fail.
        let port = 8102 + victim as u16;
        let (_b, probed) = tokio::try_join!(
            registry.register(instance("echo", port)),
            resolver.resolve(&probe),
        )?;
        assert_eq!(probed.len(), 1, "{probe} right after killing m{victim}");
        // Keep-alives and watches move to the surviving members.
        wait_for_ports(&mut watch, &[8101, port], RECOVERY_DEADLINE).await?;
        tokio::time::sleep(Duration::from_secs(3)).await; // > TTL: leases must be renewed
        assert_eq!(resolver.resolve("echo").await?.len(), 2);
        drop(_b);
        wait_for_ports(&mut watch, &[8101], RECOVERY_DEADLINE).await?;
        cluster.members[victim].restart().await?;
    }
    Ok(())
}
