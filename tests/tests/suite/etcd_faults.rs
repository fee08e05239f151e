//! Registrations and resolvers survive etcd restarts, data loss and member loss.

use std::time::Duration;

use tests::{EtcdCluster, EtcdServer};
use rpc_ext_registry::{
    etcd::{EtcdRegistry, EtcdResolver},
    Registry, Resolver,
};

use crate::support::{instance, wait_for_keys, wait_for_ports, RECOVERY_DEADLINE, WATCH_DEADLINE};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_survives_etcd_restart_and_data_loss() -> anyhow::Result<()> {
    let mut etcd = EtcdServer::start().await?;
    let (registry, resolver) = connect(vec![etcd.endpoint()]).await?;
    let _a = registry.register(instance("echo", 8001)).await?;
    let _b = registry.register(instance("echo", 8002)).await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[8001, 8002], WATCH_DEADLINE).await?;

    // Same data dir: the instances come back (or never left) by themselves.
    etcd.kill();
    tokio::time::sleep(Duration::from_secs(3)).await; // longer than the TTL
    etcd.restart().await?;
    let mut fresh = connect(vec![etcd.endpoint()])
        .await?
        .1
        .subscribe("echo")
        .await?;
    wait_for_ports(&mut fresh, &[8001, 8002], RECOVERY_DEADLINE).await?;
    wait_for_ports(&mut watch, &[8001, 8002], RECOVERY_DEADLINE).await?;

    // Wiped data dir: etcd forgot everything; the registry writes it again
    // and the old resolver re-lists (the revision went backwards).
    etcd.wipe_and_restart().await?;
    wait_for_keys(&etcd.endpoint(), 2).await?;
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    wait_for_ports(&mut watch, &[8001, 8002], RECOVERY_DEADLINE).await?;
    // Updates after recovery still flow to the old watch.
    let _c = registry.register(instance("echo", 8003)).await?;
    wait_for_ports(&mut watch, &[8001, 8002, 8003], WATCH_DEADLINE).await?;
    raw.delete(
        "/registry-ext/echo/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await?;
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
