//! The etcd registry and resolver against a real etcd: what is etcd's own
//! (keys, leases, values written by others). What every backend must do is
//! in `conformance`.

use std::{net::SocketAddr, time::Duration};

use etcd_client::PutOptions;
use rpc_ext_registry::{
    etcd::{EtcdRegistry, EtcdResolver},
    Instance, Registry, Resolver, ServiceSnapshot, DEFAULT_WEIGHT,
};
use tests::{eventually, EtcdServer, FaultProxy};

use crate::support::{instance, wait_for_ports, RECOVERY_DEADLINE, WATCH_DEADLINE};

async fn connect(etcd: &EtcdServer) -> anyhow::Result<(EtcdRegistry, EtcdResolver)> {
    tests::init_test_logging();
    let registry = EtcdRegistry::builder([etcd.endpoint()])
        .ttl(Duration::from_secs(2))
        .max_backoff(Duration::from_millis(500))
        .build()
        .await?;
    let resolver = EtcdResolver::builder([etcd.endpoint()])
        .max_backoff(Duration::from_millis(500))
        .build()
        .await?;
    Ok((registry, resolver))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_skipped() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (registry, resolver) = connect(&etcd).await?;
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    raw.put("/registry-ext/echo/junk", "{not json", None)
        .await?;
    raw.put(
        "/registry-ext/echo/v9",
        r#"{"version":9,"service":"echo","address":"127.0.0.1:1"}"#,
        None,
    )
    .await?;
    raw.put("/registry-ext/echo/bytes", vec![0xff, 0x00, 0xfe], None)
        .await?;
    let _good = registry.register(instance("echo", 7101)).await?;

    let mut watch = resolver.subscribe("echo").await?;
    assert_eq!(watch.current().instances.len(), 1);
    // Junk written while watching is skipped too, and a valid key turned to
    // junk drops out.
    raw.put("/registry-ext/echo/late-junk", "[]", None).await?;
    raw.put("/registry-ext/echo/127.0.0.1:7101", "garbage", None)
        .await?;
    wait_for_ports(&mut watch, &[], WATCH_DEADLINE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_name_with_a_slash_is_refused_before_any_write() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (registry, resolver) = connect(&etcd).await?;
    // `a/b` would be stored under `/registry-ext/a/b/…`, inside the range of
    // service `a`.
    match registry.register(instance("a/b", 7102)).await {
        Err(rpc_ext_registry::Error::InvalidInstance(reason)) => {
            assert!(reason.contains("a/b"), "{reason}");
        }
        other => anyhow::bail!("expected InvalidInstance, got {other:?}"),
    }
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let stored = raw
        .get(
            "/registry-ext/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    assert_eq!(stored.kvs().len(), 0, "nothing was written");
    assert!(resolver.resolve("a").await?.is_empty());
    Ok(())
}

/// Dropping the handle deregisters (the watch side is
/// `conformance::etcd::dropping_the_handle_deregisters`); in etcd that
/// revokes the registration's lease, so that no lease is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_registration_revokes_its_lease() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (registry, _) = connect(&etcd).await?;
    let registration = registry.register(instance("echo", 7201)).await?;
    let raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    assert_eq!(raw.clone().leases().await?.leases().len(), 1);
    drop(registration);
    eventually(WATCH_DEADLINE, "the lease revoked, the key gone", || {
        let mut raw = raw.clone();
        async move {
            let leases = raw.leases().await.ok()?.leases().len();
            let keys = raw
                .get(
                    "/registry-ext/echo/",
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .ok()?
                .kvs()
                .len();
            (leases == 0 && keys == 0).then_some(())
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unspecified_listen_address_is_advertised_as_routable() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let registry = EtcdRegistry::builder([etcd.endpoint()])
        .advertise_ip("127.0.0.9".parse()?)
        .build()
        .await?;
    let listen: SocketAddr = "0.0.0.0:7301".parse()?;
    let registration = registry.register(Instance::new("echo", listen)).await?;
    assert_eq!(registration.instance().address, "127.0.0.9:7301".parse()?);
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let stored = raw.get("/registry-ext/echo/127.0.0.9:7301", None).await?;
    assert_eq!(stored.kvs().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_is_replaced_without_user_action() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let (registry, resolver) = connect(&etcd).await?;
    let _registration = registry.register(instance("echo", 7401)).await?;
    let mut watch = resolver.subscribe("echo").await?;

    // Someone (an operator, a compaction of leases) revokes our lease.
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let key = raw.get("/registry-ext/echo/127.0.0.1:7401", None).await?;
    let lease = key.kvs()[0].lease();
    raw.lease_revoke(lease).await?;
    wait_for_ports(&mut watch, &[], WATCH_DEADLINE).await?;
    wait_for_ports(&mut watch, &[7401], RECOVERY_DEADLINE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_without_losing_updates_made_while_it_was_down() -> anyhow::Result<()> {
    tests::init_test_logging();
    let etcd = EtcdServer::start().await?;
    // The resolver reaches etcd through the proxy; the writer goes straight
    // to etcd, so the test decides when the watch is down and the writes
    // still land.
    let proxy = FaultProxy::in_front_of(&etcd.endpoint()).await?;
    let resolver = EtcdResolver::builder([proxy.endpoint()])
        .max_backoff(Duration::from_millis(500))
        .build()
        .await?;
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let value = |instance: Instance| rpc_ext_registry::etcd::encode_instance(&instance);
    raw.put("/registry-ext/echo/a", value(instance("echo", 7601)), None)
        .await?;
    raw.put("/registry-ext/echo/d", value(instance("echo", 7604)), None)
        .await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[7601, 7604], WATCH_DEADLINE).await?;
    let before = watch.current();
    assert!(before.last_error.is_none());

    // Cut the resolver off and wait until its watch reports it.
    proxy.set_refusing(true);
    eventually(WATCH_DEADLINE, "the watch to report the cut", || {
        let failed = watch.current().last_error.is_some();
        async move { failed.then_some(()) }
    })
    .await?;

    // Meanwhile: two instances added, one removed, one updated.
    raw.put("/registry-ext/echo/b", value(instance("echo", 7602)), None)
        .await?;
    raw.delete("/registry-ext/echo/a", None).await?;
    raw.put(
        "/registry-ext/echo/c",
        value(instance("echo", 7603)),
        Some(PutOptions::new()),
    )
    .await?;
    raw.put(
        "/registry-ext/echo/d",
        value(instance("echo", 7604).with_weight(99)),
        None,
    )
    .await?;
    // The watch was down for all four: still the error, the set from before
    // the cut, and nothing published since (the generation grows with
    // every published set).
    let during = watch.current();
    assert!(during.last_error.is_some(), "the cut is still reported");
    assert_eq!(ports_and_weights(&during), ports_and_weights(&before));
    assert_eq!(
        during.generation, before.generation,
        "a write reached the watch while it was down"
    );

    proxy.set_refusing(false);
    let want = [(7602, DEFAULT_WEIGHT), (7603, DEFAULT_WEIGHT), (7604, 99)];
    let resumed = eventually(RECOVERY_DEADLINE, "the watch to resume", || {
        let snapshot = watch.current();
        async move {
            (snapshot.last_error.is_none() && ports_and_weights(&snapshot) == want)
                .then_some(snapshot)
        }
    })
    .await
    .map_err(|error| anyhow::anyhow!("{error}; the watch shows {:?}", watch.current()))?;
    assert!(resumed.generation > before.generation);
    Ok(())
}

/// The snapshot's instances as (port, weight), in address order.
fn ports_and_weights(snapshot: &ServiceSnapshot) -> Vec<(u16, u32)> {
    snapshot
        .instances
        .iter()
        .map(|i| (i.address.port(), i.weight))
        .collect()
}
