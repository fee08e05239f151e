//! What is particular to the ZooKeeper backend, against real ZooKeeper
//! servers: session expiry, watches across reconnections, chroot, digest
//! ACLs, an ensemble losing a member, node ownership, and Volo routing.
//! The scenarios every backend shares are in `conformance`.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use echo::{servers, volo_gen};
use rpc_ext_registry::{
    health::RegistrationState,
    volo::VoloDiscover,
    zookeeper::{ZooKeeperBuilder, ZooKeeperRegistry, ZooKeeperResolver},
    Error, Instance, Registry, Resolver, ServiceWatch,
};
use tests::{eventually, FaultProxy, ZooKeeperEnsemble, ZooKeeperServer};
use tokio::{net::TcpListener, sync::watch, time::Instant};
use zookeeper_client as zk;

use crate::support::{addr, instance, registration_where, wait_for_ports};

/// How long a change may take to reach a watch or the server: well under
/// a second, with a margin for a loaded two-core machine.
const SEEN: Duration = Duration::from_secs(10);
/// How long recovery after a fault may take: a session timeout, a backoff
/// and a reconnection, with the same margin.
const RECOVERED: Duration = Duration::from_secs(30);
/// Backoff cap of the registries and resolvers under test.
const MAX_BACKOFF: Duration = Duration::from_millis(300);

fn registry_builder(connect_string: &str) -> ZooKeeperBuilder<ZooKeeperRegistry> {
    tests::init_test_logging();
    ZooKeeperRegistry::builder(connect_string).max_backoff(MAX_BACKOFF)
}

fn resolver_builder(connect_string: &str) -> ZooKeeperBuilder<ZooKeeperResolver> {
    ZooKeeperResolver::builder(connect_string).max_backoff(MAX_BACKOFF)
}

/// `host:port` of a fault proxy, as a connect string.
fn through(proxy: &FaultProxy) -> String {
    proxy.endpoint().trim_start_matches("http://").to_owned()
}

/// A plain client of the server, to read what it holds.
async fn raw(connect_string: &str) -> anyhow::Result<zk::Client> {
    Ok(zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(connect_string)
        .await?)
}

/// `/registry-ext/<service>/127.0.0.1:<port>`.
fn node_path(service: &str, port: u16) -> String {
    format!("/registry-ext/{service}/{}", addr(port))
}

/// The node at `path`: its owner session and its value, decoded.
async fn stored(
    client: &zk::Client,
    path: &str,
) -> anyhow::Result<Option<(i64, serde_json::Value)>> {
    match client.get_data(path).await {
        Ok((value, stat)) => Ok(Some((
            stat.ephemeral_owner,
            serde_json::from_slice(&value)?,
        ))),
        Err(zk::Error::NoNode) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Waits until the watch shows exactly `ports` with no error.
async fn settles_on(
    watch: &mut ServiceWatch,
    ports: &[u16],
    deadline: Duration,
) -> anyhow::Result<()> {
    let want: Vec<SocketAddr> = ports.iter().map(|p| addr(*p)).collect();
    tokio::time::timeout(
        deadline,
        watch.wait_for(|instances| instances.iter().map(|i| i.address).eq(want.iter().copied())),
    )
    .await
    .map_err(|_| anyhow::anyhow!("watch never showed {want:?}: {:?}", watch.current()))??;
    eventually(deadline, "the error to clear", || {
        let clear = watch.current().last_error.is_none();
        async move { clear.then_some(()) }
    })
    .await
    .map_err(|error| anyhow::anyhow!("{error}: {:?}", watch.current()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_has_its_node_created_again_under_a_new_one() -> anyhow::Result<()> {
    let zookeeper = ZooKeeperServer::start().await?;
    // The registry reaches ZooKeeper through a proxy that can cut it off
    // while the server runs on and expires its session.
    let proxy = FaultProxy::start(zookeeper.client_address()).await?;
    let registry = registry_builder(&through(&proxy))
        .session_timeout(Duration::from_secs(1))
        .build()
        .await?;
    let direct = raw(&zookeeper.connect_string()).await?;
    let path = node_path("expiring", 7101);
    let registration = registry
        .register(instance("expiring", 7101).with_weight(4))
        .await?;
    let (first_owner, value) = stored(&direct, &path).await?.expect("registered");
    assert_ne!(first_owner, 0, "an ephemeral node");
    assert_eq!(value["weight"], 4);

    proxy.set_refusing(true);
    let cut = Instant::now();
    // ZooKeeper itself expired the session: the node is gone.
    eventually(SEEN, "the server to expire the session", || async {
        matches!(stored(&direct, &path).await, Ok(None)).then_some(())
    })
    .await?;
    eprintln!(
        "node deleted by the server {:?} after the cut",
        cut.elapsed()
    );

    proxy.set_refusing(false);
    let healed = Instant::now();
    let (second_owner, value) = eventually(RECOVERED, "the node under a new session", || async {
        stored(&direct, &path).await.ok().flatten()
    })
    .await?;
    eprintln!(
        "node created again {:?} after the cut ended",
        healed.elapsed()
    );
    assert_ne!(
        second_owner, first_owner,
        "the expired session cannot own it"
    );
    assert_ne!(second_owner, 0);
    assert_eq!(value["weight"], 4, "the registration's own value");
    // Its health entry records it (just after the write the server shows).
    registration_where(&registry.health(), SEEN, "one re-registration", |r| {
        r.state == RegistrationState::Registered && r.reregistrations == 1
    })
    .await?;

    registration.deregister().await?;
    assert_eq!(stored(&direct, &path).await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_what_changed_while_it_was_cut_off_and_outlives_a_restart(
) -> anyhow::Result<()> {
    let mut zookeeper = ZooKeeperServer::start().await?;
    let proxy = FaultProxy::start(zookeeper.client_address()).await?;
    // Sessions outlive both faults: the watch stays the same watch of the
    // same session, so only listing again after the reconnection can show
    // what changed meanwhile (ZooKeeper does not replay a persistent
    // watch's missed events).
    let registry = registry_builder(&zookeeper.connect_string())
        .session_timeout(Duration::from_secs(30))
        .build()
        .await?;
    let resolver = resolver_builder(&through(&proxy))
        .session_timeout(Duration::from_secs(30))
        .build()
        .await?;
    let a = registry.register(instance("cut", 7201)).await?;
    let _b = registry.register(instance("cut", 7202)).await?;
    let mut watch = resolver.subscribe("cut").await?;
    settles_on(&mut watch, &[7201, 7202], SEEN).await?;

    proxy.set_refusing(true);
    wait_for_error(&watch).await?;
    let _c = registry.register(instance("cut", 7203)).await?;
    a.deregister().await?;
    let _heavier = registry
        .register(instance("cut", 7202).with_weight(7))
        .await?;
    let direct = raw(&zookeeper.connect_string()).await?;
    let held = direct.list_children("/registry-ext/cut").await?;
    assert_eq!(
        held.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from(["127.0.0.1:7202".to_owned(), "127.0.0.1:7203".to_owned()])
    );
    let stale = watch.current();
    let shown: Vec<u16> = stale.instances.iter().map(|i| i.address.port()).collect();
    assert_eq!(shown, [7201, 7202], "the watch was cut off: {stale:?}");
    assert!(stale.last_error.is_some());

    proxy.set_refusing(false);
    let healed = Instant::now();
    settles_on(&mut watch, &[7202, 7203], RECOVERED).await?;
    eprintln!(
        "the watch caught up {:?} after the cut ended",
        healed.elapsed()
    );
    assert_eq!(watch.current().instances[0].weight, 7);

    // A restart within the session timeout: once the resolver is back on
    // the server, the same watch follows a registration made then (the
    // restarted server knows no watch until the client sets it again).
    zookeeper.kill();
    wait_for_error(&watch).await?;
    let restarting = Instant::now();
    zookeeper.restart().await?;
    settles_on(&mut watch, &[7202, 7203], RECOVERED).await?;
    eprintln!(
        "the watch was back {:?} after the restart began",
        restarting.elapsed()
    );
    // The registry's own session may still be reconnecting (its backoff
    // runs apart from the resolver's): what is asserted is that the watch
    // follows a registration made after the restart, so `register` may
    // be retried until the registry is back too.
    let _d = eventually(RECOVERED, "a registration after the restart", || async {
        registry.register(instance("cut", 7204)).await.ok()
    })
    .await?;
    settles_on(&mut watch, &[7202, 7203, 7204], SEEN).await?;
    Ok(())
}

/// Waits until the watch reports a failure.
async fn wait_for_error(watch: &ServiceWatch) -> anyhow::Result<()> {
    eventually(SEEN, "the watch to report the lost connection", || {
        let failed = watch.current().last_error.is_some();
        async move { failed.then_some(()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chroot_holds_the_services_and_is_created() -> anyhow::Result<()> {
    let zookeeper = ZooKeeperServer::start().await?;
    let team_a = format!("{}/team-a", zookeeper.connect_string());
    let registry = registry_builder(&team_a).build().await?;
    let _registration = registry.register(instance("rooted", 7301)).await?;

    let root = raw(&zookeeper.connect_string()).await?;
    let (_, value) = stored(&root, &format!("/team-a{}", node_path("rooted", 7301)))
        .await?
        .expect("the node under the chroot");
    assert_eq!(value["address"], "127.0.0.1:7301");
    assert_eq!(
        root.check_stat("/registry-ext").await?,
        None,
        "nothing outside it"
    );

    let mut inside = resolver_builder(&team_a)
        .build()
        .await?
        .subscribe("rooted")
        .await?;
    settles_on(&mut inside, &[7301], SEEN).await?;
    let outside = resolver_builder(&zookeeper.connect_string())
        .build()
        .await?;
    assert!(outside.resolve("rooted").await?.is_empty());
    let other_team = resolver_builder(&format!("{}/team-b", zookeeper.connect_string()))
        .build()
        .await?;
    assert!(other_team.resolve("rooted").await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_credentials_guard_the_nodes() -> anyhow::Result<()> {
    let zookeeper = ZooKeeperServer::start().await?;
    let cs = zookeeper.connect_string();
    let registry = registry_builder(&cs)
        .auth("alice", "s3cret")
        .build()
        .await?;
    let _registration = registry.register(instance("guarded", 7401)).await?;
    let path = node_path("guarded", 7401);

    let alice = zk::Client::connector()
        .with_auth("digest", b"alice:s3cret")
        .connect(&cs)
        .await?;
    assert!(stored(&alice, &path).await?.is_some());
    let (acls, _) = alice.get_acl(&path).await?;
    assert_eq!(acls.len(), 1, "{acls:?}");
    assert_eq!(acls[0].scheme(), "digest");
    assert!(acls[0].id().starts_with("alice:"), "{acls:?}");

    let anonymous = raw(&cs).await?;
    let mallory = zk::Client::connector()
        .with_auth("digest", b"alice:guess")
        .connect(&cs)
        .await?;
    for outsider in [&anonymous, &mallory] {
        assert_eq!(
            outsider.get_data(&path).await.err(),
            Some(zk::Error::NoAuth)
        );
        assert_eq!(
            outsider.list_children("/registry-ext/guarded").await.err(),
            Some(zk::Error::NoAuth)
        );
    }

    let mut watch = resolver_builder(&cs)
        .auth("alice", "s3cret")
        .build()
        .await?
        .subscribe("guarded")
        .await?;
    settles_on(&mut watch, &[7401], SEEN).await?;
    let refused = resolver_builder(&cs)
        .build()
        .await?
        .subscribe("guarded")
        .await;
    match refused {
        Err(Error::Resolve { source, .. }) => {
            assert!(
                matches!(*source, Error::PermissionDenied { .. }),
                "{source:?}"
            );
        }
        other => panic!("an anonymous resolver was not refused: {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_losing_its_leader_keeps_registrations_and_watches() -> anyhow::Result<()> {
    let mut ensemble = ZooKeeperEnsemble::start(3).await?;
    let cs = ensemble.connect_string();
    let registry = registry_builder(&cs).build().await?;
    let resolver = resolver_builder(&cs).build().await?;
    let _kept = registry.register(instance("quorum", 7501)).await?;
    let mut watch = resolver.subscribe("quorum").await?;
    settles_on(&mut watch, &[7501], SEEN).await?;
    let path = node_path("quorum", 7501);
    let (owner, _) = stored(&raw(&cs).await?, &path).await?.expect("registered");

    let mut leader = None;
    for (i, member) in ensemble.members.iter().enumerate() {
        if member.mode().await.as_deref() == Some("leader") {
            leader = Some(i);
        }
    }
    let leader = leader.expect("a leader");
    ensemble.members[leader].kill();
    let killed = Instant::now();
    let survivors: Vec<String> = ensemble
        .members
        .iter()
        .filter(|m| m.pid().is_some())
        .map(ZooKeeperServer::connect_string)
        .collect();
    let survivors = survivors.join(",");

    // Registering needs the new leader: retried until it is elected.
    let added = eventually(RECOVERED, "a registration after the loss", || async {
        registry.register(instance("quorum", 7502)).await.ok()
    })
    .await?;
    eprintln!(
        "registered {:?} after the leader was killed",
        killed.elapsed()
    );
    settles_on(&mut watch, &[7501, 7502], RECOVERED).await?;
    eprintln!("the watch showed it {:?} after the kill", killed.elapsed());
    let (owner_now, _) = stored(&raw(&survivors).await?, &path)
        .await?
        .expect("the registration outlived the loss");
    assert_eq!(owner_now, owner, "its session outlived the loss");

    added.deregister().await?;
    settles_on(&mut watch, &[7501], SEEN).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_another_session_owns_is_never_deleted() -> anyhow::Result<()> {
    let zookeeper = ZooKeeperServer::start().await?;
    let cs = zookeeper.connect_string();
    let path = node_path("owned", 7601);
    // Another process's node, whose session has not expired.
    let other = raw(&cs).await?;
    other
        .mkdir(
            "/registry-ext/owned",
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await?;
    let theirs = br#"{"version":1,"service":"owned","address":"127.0.0.1:7601","weight":1}"#;
    other
        .create(
            &path,
            theirs,
            &zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all()),
        )
        .await?;
    let their_session = other.session_id().0;

    let registry = registry_builder(&cs).build().await?;
    let direct = raw(&cs).await?;
    let registration = registry
        .register(instance("owned", 7601).with_weight(5))
        .await?;
    let (owner, value) = stored(&direct, &path).await?.expect("still there");
    assert_eq!(owner, their_session, "not deleted, not replaced");
    assert_eq!(value["weight"], 5, "the newest registration's value shows");
    registration.deregister().await?;
    let (owner, _) = stored(&direct, &path).await?.expect("not deleted");
    assert_eq!(owner, their_session);

    // Once that session is gone, a live registration creates its own node.
    let registration = registry
        .register(instance("owned", 7601).with_weight(6))
        .await?;
    drop(other);
    let (owner, value) = eventually(RECOVERED, "the registry's own node", || async {
        stored(&direct, &path)
            .await
            .ok()
            .flatten()
            .filter(|(owner, _)| *owner != their_session)
    })
    .await?;
    assert_ne!(owner, 0);
    assert_eq!(value["weight"], 6);

    // A successor registry takes the address over: the first hands its
    // node over, and its deregistration leaves the successor's alone.
    let successor = registry_builder(&cs).build().await?;
    let taken = successor
        .register(instance("owned", 7601).with_weight(7))
        .await?;
    let (successor_owner, value) = eventually(SEEN, "the successor's own node", || async {
        stored(&direct, &path)
            .await
            .ok()
            .flatten()
            .filter(|(o, _)| *o != owner && *o != their_session && *o != 0)
    })
    .await?;
    assert_eq!(value["weight"], 7);
    // The first registration records that ZooKeeper no longer holds it.
    registration_where(&registry.health(), SEEN, "the handover recorded", |r| {
        r.state == RegistrationState::Reregistering
    })
    .await?;
    let successor_health = successor.health().snapshot().registrations;
    assert_eq!(successor_health.len(), 1);
    assert_eq!(successor_health[0].state, RegistrationState::Registered);
    registration.deregister().await?;
    assert_eq!(
        stored(&direct, &path).await?.map(|(o, _)| o),
        Some(successor_owner),
        "the first registry deleted the successor's node"
    );
    taken.deregister().await?;
    assert_eq!(stored(&direct, &path).await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_no_other_registry_wrote_is_written_back() -> anyhow::Result<()> {
    let zookeeper = ZooKeeperServer::start().await?;
    let cs = zookeeper.connect_string();
    let registry = registry_builder(&cs).build().await?;
    let direct = raw(&cs).await?;
    let path = node_path("rewritten", 7801);
    let registration = registry
        .register(instance("rewritten", 7801).with_weight(3))
        .await?;
    let (session, value) = stored(&direct, &path).await?.expect("registered");
    let owner_id = value["owner"].as_str().expect("an owner id").to_owned();
    assert_eq!(owner_id.len(), 32, "{value}");

    // A value of this registry that the live registration did not write:
    // what a re-registration whose write timed out after the server
    // applied it leaves behind. Then an edit by hand, with no owner.
    let mut earlier = value.clone();
    earlier["weight"] = 9.into();
    let by_hand = br#"{"version":1,"service":"rewritten","address":"127.0.0.1:7801","weight":8}"#;
    for rewrite in [serde_json::to_vec(&earlier)?, by_hand.to_vec()] {
        direct.set_data(&path, &rewrite, None).await?;
        let (owner, value) = eventually(SEEN, "the registration's value back", || async {
            stored(&direct, &path)
                .await
                .ok()
                .flatten()
                .filter(|(_, value)| value["weight"] == 3)
        })
        .await?;
        assert_eq!(
            owner, session,
            "the same node: neither deleted nor handed over"
        );
        assert_eq!(value["owner"], owner_id.as_str());
    }
    let health = registry.health().snapshot().registrations;
    assert_eq!(health.len(), 1);
    assert_eq!(
        (health[0].state, health[0].reregistrations),
        (RegistrationState::Registered, 0)
    );
    registration.deregister().await?;
    assert_eq!(stored(&direct, &path).await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deregistration_is_retried_until_the_node_is_gone() -> anyhow::Result<()> {
    let zookeeper = ZooKeeperServer::start().await?;
    let proxy = FaultProxy::start(zookeeper.client_address()).await?;
    // The session outlives the cut by far; requests give up within it.
    let registry = registry_builder(&through(&proxy))
        .session_timeout(Duration::from_secs(30))
        .request_timeout(Duration::from_millis(500))
        .build()
        .await?;
    let direct = raw(&zookeeper.connect_string()).await?;
    let (kept_path, leaving_path) = (node_path("retried", 7901), node_path("retried", 7902));
    let _kept = registry.register(instance("retried", 7901)).await?;
    let leaving = registry.register(instance("retried", 7902)).await?;
    let (session, _) = stored(&direct, &kept_path).await?.expect("registered");

    proxy.set_refusing(true);
    let refused = leaving.deregister().await;
    assert!(refused.is_err(), "deregistered while cut off: {refused:?}");
    assert!(stored(&direct, &leaving_path).await?.is_some());

    proxy.set_refusing(false);
    let healed = Instant::now();
    eventually(SEEN, "the node deleted by the retry", || async {
        matches!(stored(&direct, &leaving_path).await, Ok(None)).then_some(())
    })
    .await?;
    eprintln!(
        "the node was deleted {:?} after the cut ended",
        healed.elapsed()
    );
    assert_eq!(
        stored(&direct, &kept_path).await?.map(|(owner, _)| owner),
        Some(session),
        "the session lived on: the other registration's node is still its"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_churning_service_is_read_in_batches() -> anyhow::Result<()> {
    const NODES: u16 = 400;
    let zookeeper = ZooKeeperServer::start().await?;
    let proxy = FaultProxy::start(zookeeper.client_address()).await?;
    let resolver = resolver_builder(&through(&proxy)).build().await?;
    let direct = raw(&zookeeper.connect_string()).await?;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    direct
        .mkdir("/registry-ext/churn/deeper/node", &persistent)
        .await?;
    let mut watch = resolver.subscribe("churn").await?;
    settles_on(&mut watch, &[], SEEN).await?;

    // Every round trip of the resolver now takes 100 ms at least: reading
    // each node event's node on its own would take 3 × 400 × 100 ms =
    // 120 s for the writes below.
    proxy.set_delay(Duration::from_millis(50));
    let ports: Vec<u16> = (20_001..=20_000 + NODES).collect();
    let value = |port: u16, weight: u32| {
        serde_json::to_vec(&serde_json::json!({
            "version": 1, "service": "churn", "address": addr(port), "weight": weight,
        }))
    };
    let started = Instant::now();
    for (round, weight) in [(0, 1), (1, 2), (2, 3)] {
        for chunk in ports.chunks(100) {
            let mut writes = direct.new_multi_writer();
            for port in chunk {
                let path = node_path("churn", *port);
                if round == 0 {
                    writes.add_create(&path, &value(*port, weight)?, &persistent)?;
                } else {
                    writes.add_set_data(&path, &value(*port, weight)?, None)?;
                }
                // Writes below the service's children: never read.
                writes.add_set_data("/registry-ext/churn/deeper/node", b"x", None)?;
            }
            writes.commit().await?;
        }
    }
    settles_on(&mut watch, &ports, RECOVERED).await?;
    eventually(RECOVERED, "every instance at its last weight", || {
        let last = watch.current().instances.iter().all(|i| i.weight == 3);
        async move { last.then_some(()) }
    })
    .await?;
    eprintln!(
        "{} node events of {NODES} nodes shown {:?} after the first write",
        3 * NODES,
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volo_calls_follow_zookeeper_registrations() -> anyhow::Result<()> {
    let zookeeper = ZooKeeperServer::start().await?;
    let registry = registry_builder(&zookeeper.connect_string())
        .build()
        .await?;
    let resolver = resolver_builder(&zookeeper.connect_string())
        .build()
        .await?;
    let (stop, stopped) = watch::channel(false);
    let mut served = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        served.push(listener.local_addr()?);
        let stopped = crate::support::until_stopped(stopped.clone());
        let tracing = rpc_ext_tracing::RpcTracing::builder().build();
        tokio::spawn(async move { servers::serve_volo(listener, &tracing, stopped).await });
    }
    let mut registrations = Vec::new();
    for address in &served {
        registrations.push(
            registry
                .register(Instance::new("echo-zk", *address))
                .await?,
        );
    }
    let mut watch = resolver.subscribe("echo-zk").await?;
    let ports: Vec<u16> = served.iter().map(SocketAddr::port).collect();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    wait_for_ports(&mut watch, &sorted, SEEN).await?;

    let client = volo_gen::echo::EchoClientBuilder::new("echo-zk")
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
    let all: BTreeSet<String> = served.iter().map(ToString::to_string).collect();
    assert_eq!(seen, all, "calls are spread over both instances");

    registrations.remove(0).deregister().await?;
    let remaining = served[1].to_string();
    eventually(
        SEEN,
        "calls to reach only the remaining instance",
        || async {
            let mut reached = BTreeSet::new();
            for _ in 0..10 {
                reached.insert(call().await.ok()?);
            }
            (reached == BTreeSet::from([remaining.clone()])).then_some(())
        },
    )
    .await?;
    let _ = stop.send(true);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_calls_follow_zookeeper_registrations() -> anyhow::Result<()> {
    use echo::tonic_gen::{echo_client::EchoClient, SayRequest};

    let zookeeper = ZooKeeperServer::start().await?;
    let registry = registry_builder(&zookeeper.connect_string())
        .build()
        .await?;
    let resolver = resolver_builder(&zookeeper.connect_string())
        .build()
        .await?;
    let (stop, stopped) = watch::channel(false);
    let mut served = Vec::new();
    let mut registrations = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        served.push(address.to_string());
        let stopped = crate::support::until_stopped(stopped.clone());
        let tracing = rpc_ext_tracing::RpcTracing::builder().build();
        tokio::spawn(async move { servers::serve_tonic(listener, &tracing, stopped).await });
        registrations.push(
            registry
                .register(Instance::new("echo-zk-tonic", address))
                .await?,
        );
    }
    let channel = rpc_ext_registry::tonic::balanced_channel(&resolver, "echo-zk-tonic").await?;
    let calls = |count: usize| {
        let channel = channel.clone();
        async move {
            let mut reached = BTreeSet::new();
            for _ in 0..count {
                let reply = EchoClient::new(channel.clone())
                    .say(SayRequest {
                        message: "hi".into(),
                    })
                    .await
                    .ok()?;
                reached.insert(reply.into_inner().served_by);
            }
            Some(reached)
        }
    };
    let all: BTreeSet<String> = served.iter().cloned().collect();
    eventually(SEEN, "calls spread over both instances", || async {
        calls(40).await.filter(|reached| *reached == all)
    })
    .await?;

    registrations.remove(0).deregister().await?;
    let remaining = BTreeSet::from([served[1].clone()]);
    eventually(
        SEEN,
        "calls to reach only the remaining instance",
        || async { calls(10).await.filter(|reached| *reached == remaining) },
    )
    .await?;
    let _ = stop.send(true);
    Ok(())
}
