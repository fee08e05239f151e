//! Registrations and resolvers through network faults between them and a
//! healthy etcd: refused connections during a compaction, and latency.

use std::time::Duration;

use etcd_client::{CompactionOptions, GetOptions};
use rpc_ext_registry::{
    etcd::{EtcdRegistry, EtcdResolver},
    Registry, Resolver,
};
use tests::{EtcdServer, FaultProxy};

use crate::support::{instance, wait_for_ports, RECOVERY_DEADLINE, WATCH_DEADLINE};

async fn resolver(endpoint: String) -> anyhow::Result<EtcdResolver> {
    Ok(EtcdResolver::builder([endpoint])
        .max_backoff(Duration::from_millis(300))
        .build()
        .await?)
}

async fn registry(endpoint: String) -> anyhow::Result<EtcdRegistry> {
    Ok(EtcdRegistry::builder([endpoint])
        .ttl(Duration::from_secs(2))
        .max_backoff(Duration::from_millis(300))
        .build()
        .await?)
}

/// The lease holding `key`, if the key exists.
async fn lease_of(raw: &mut etcd_client::Client, key: &str) -> anyhow::Result<Option<i64>> {
    let response = raw.get(key, None).await?;
    Ok(response.kvs().first().map(etcd_client::KeyValue::lease))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_relists_after_compaction_past_its_revision() -> anyhow::Result<()> {
    tests::init_test_logging();
    let etcd = EtcdServer::start().await?;
    let proxy = FaultProxy::in_front_of(&etcd.endpoint()).await?;
    let registry = registry(etcd.endpoint()).await?;
    let resolver = resolver(proxy.endpoint()).await?;
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;

    let first = registry.register(instance("echo", 8001)).await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[8001], WATCH_DEADLINE).await?;

    // Cut the resolver off, and wait until it knows.
    proxy.set_refusing(true);
    tests::eventually(WATCH_DEADLINE, "the resolver to see the outage", || {
        let failed = watch.current().last_error.is_some();
        async move { failed.then_some(()) }
    })
    .await?;
    let seen_before = raw
        .get("/", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());

    // Meanwhile: one instance comes, one goes, unrelated writes move the
    // revision on, and the history the resolver would resume from is
    // compacted away.
    let _second = registry.register(instance("echo", 8002)).await?;
    first.deregister().await?;
    for n in 0..50 {
        raw.put(format!("/elsewhere/{n}"), "x", None).await?;
    }
    let head = raw
        .get("/", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    raw.compact(head, Some(CompactionOptions::new().with_physical()))
        .await?;
    assert!(
        head > seen_before + 50,
        "compaction must pass the watched revision"
    );

    proxy.set_refusing(false);
    wait_for_ports(&mut watch, &[8002], RECOVERY_DEADLINE).await?;
    tests::eventually(WATCH_DEADLINE, "the error to clear", || {
        let cleared = watch.current().last_error.is_none();
        async move { cleared.then_some(()) }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_watch_survive_latency_and_a_partition() -> anyhow::Result<()> {
    tests::init_test_logging();
    let etcd = EtcdServer::start().await?;
    let proxy = FaultProxy::in_front_of(&etcd.endpoint()).await?;
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    // 150 ms each way: a 300 ms round trip against a 2 s lease renewed
    // every 667 ms.
    proxy.set_delay(Duration::from_millis(150));
    let registry = registry(proxy.endpoint()).await?;
    let resolver = resolver(proxy.endpoint()).await?;

    let a = registry.register(instance("echo", 8001)).await?;
    let b = registry.register(instance("echo", 8002)).await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[8001, 8002], RECOVERY_DEADLINE).await?;

    // Slow but working: the leases are renewed, not replaced.
    let key = registry.key_of(b.instance());
    let lease = lease_of(&mut raw, &key).await?;
    assert!(lease.is_some());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        lease_of(&mut raw, &key).await?,
        lease,
        "lease churned under latency"
    );
    assert!(watch.current().last_error.is_none());

    let started = tokio::time::Instant::now();
    a.deregister().await?;
    wait_for_ports(&mut watch, &[8002], RECOVERY_DEADLINE).await?;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the delay was not applied"
    );

    // A partition longer than the lease TTL: etcd expires the lease. Once
    // the network is back the registration returns by itself.
    proxy.set_delay(Duration::ZERO);
    proxy.set_refusing(true);
    tests::eventually(RECOVERY_DEADLINE, "the lease to expire", || {
        let mut raw = raw.clone();
        let key = key.clone();
        async move { lease_of(&mut raw, &key).await.ok()?.is_none().then_some(()) }
    })
    .await?;
    proxy.set_refusing(false);
    tests::eventually(
        RECOVERY_DEADLINE,
        "re-registration after the partition",
        || {
            let mut raw = raw.clone();
            let key = key.clone();
            async move { lease_of(&mut raw, &key).await.ok()?.map(|_| ()) }
        },
    )
    .await?;
    wait_for_ports(&mut watch, &[8002], RECOVERY_DEADLINE).await?;
    let keys = raw
        .get("/registry-ext/echo/", Some(GetOptions::new().with_prefix()))
        .await?;
    assert_eq!(
        keys.kvs().len(),
        1,
        "exactly the live registration is stored"
    );
    drop(b);
    Ok(())
}
