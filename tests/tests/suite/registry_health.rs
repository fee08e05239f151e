//! `RegistryHealth` through real outages: a real etcd killed and restarted,
//! and the Consul stand-in failing, forgetting its registrations and
//! refusing them. Each step checks the health entries against what the
//! server holds and what subscribers are shown.

use std::time::{Duration, Instant};

use rpc_ext_registry::{
    consul::{Check, ConsulRegistry, ConsulResolver},
    etcd::{EtcdRegistry, EtcdResolver},
    health::{RegistrationState, RegistryHealth, SubscriptionHealth},
    Instance, Registry, Resolver, ServiceWatch,
};
use tests::{
    consul::{AclPolicy, ConsulStandIn, Status},
    eventually, EtcdServer,
};

use crate::support::{
    addr, instance, only_registration, only_subscription, registration_where, subscription_where,
    wait_for_ports, WATCH_DEADLINE,
};

/// How long a step of an outage or a recovery may take on a loaded
/// machine (etcd's 5 s request timeout, backoff, a restart).
const STEP_DEADLINE: Duration = Duration::from_secs(30);

fn ports(watch: &ServiceWatch) -> Vec<u16> {
    watch
        .current()
        .instances
        .iter()
        .map(|i| i.address.port())
        .collect()
}

/// The lease the key hangs on in etcd, if the key exists.
async fn lease_of(endpoint: &str, key: &str) -> anyhow::Result<Option<i64>> {
    let mut raw = etcd_client::Client::connect([endpoint], None).await?;
    let found = raw.get(key, None).await?;
    Ok(found.kvs().first().map(|kv| kv.lease()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_and_its_recovery_show_in_registry_health() -> anyhow::Result<()> {
    tests::init_test_logging();
    let mut etcd = EtcdServer::start().await?;
    let endpoint = etcd.endpoint();
    let registry = EtcdRegistry::builder([&endpoint])
        .ttl(Duration::from_secs(2))
        .max_backoff(Duration::from_millis(500))
        .build()
        .await?;
    let resolver = EtcdResolver::builder([&endpoint])
        .max_backoff(Duration::from_millis(500))
        .build()
        .await?;
    let (registrations, subscriptions) = (registry.health(), resolver.health());

    let registered = registry.register(instance("echo", 8101)).await?;
    let key = registry.key_of(registered.instance());
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[8101], WATCH_DEADLINE).await?;

    // Healthy: the stream's first answer and at least one keep-alive.
    let healthy = registration_where(&registrations, STEP_DEADLINE, "two lease renewals", |r| {
        r.renewals_ok >= 2
    })
    .await?;
    assert_eq!(
        (healthy.backend, &*healthy.service, healthy.address),
        ("etcd", "echo", addr(8101))
    );
    assert_eq!(healthy.state, RegistrationState::Registered);
    assert_eq!((healthy.renewals_failed, healthy.reregistrations), (0, 0));
    let following = only_subscription(&subscriptions).expect("the subscription is listed");
    assert_eq!((following.backend, &*following.service), ("etcd", "echo"));
    assert_eq!(following.instances, 1);
    assert_eq!((following.errors, following.watch_restarts), (0, 0));
    assert!(!following.serving_stale);
    assert!(following.last_update_age.is_some());
    let first_lease = lease_of(&endpoint, &key)
        .await?
        .expect("the key is in etcd");

    // etcd killed: renewals fail, then the lease is given up for lost
    // once its TTL passed unrenewed; the watch keeps the last set, stale.
    etcd.kill();
    let lost = registration_where(&registrations, STEP_DEADLINE, "the lease given up", |r| {
        r.state == RegistrationState::Reregistering
    })
    .await?;
    assert!(lost.renewals_failed >= 1, "{lost:?}");
    assert_eq!(lost.reregistrations, 0);
    let stale = subscription_where(
        &subscriptions,
        STEP_DEADLINE,
        "the watch serving stale",
        |s| s.serving_stale,
    )
    .await?;
    assert_eq!(stale.instances, 1, "the last known set is kept");
    assert!(stale.errors >= 1, "{stale:?}");
    let shown = watch.current();
    assert!(shown.last_error.is_some(), "subscribers are told too");
    assert_eq!(ports(&watch), [8101]);

    // Still down a second later: nothing renewed, the state and the age
    // of the last update keep growing from where they started.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still_lost = only_registration(&registrations).expect("listed while the handle lives");
    assert_eq!(still_lost.state, RegistrationState::Reregistering);
    assert_eq!(still_lost.renewals_ok, lost.renewals_ok, "etcd is down");
    assert!(still_lost.in_state_for >= lost.in_state_for + Duration::from_secs(1));
    let still_stale = only_subscription(&subscriptions).expect("listed while followed");
    assert!(still_stale.serving_stale);
    let age = |s: &SubscriptionHealth| s.last_update_age.expect("a set was received");
    assert!(age(&still_stale) >= age(&stale) + Duration::from_secs(1));

    // etcd back with its data: written again with a new lease, once; the
    // watch resumes.
    let restarting = Instant::now();
    etcd.restart().await?;
    let back = registration_where(&registrations, STEP_DEADLINE, "registered again", |r| {
        r.state == RegistrationState::Registered
    })
    .await?;
    assert_eq!(back.reregistrations, 1);
    assert!(back.in_state_for <= restarting.elapsed());
    let second_lease = lease_of(&endpoint, &key)
        .await?
        .expect("the key is back in etcd");
    assert_ne!(second_lease, first_lease, "written again on a new lease");
    let resumed = subscription_where(&subscriptions, STEP_DEADLINE, "the watch resumed", |s| {
        !s.serving_stale
    })
    .await?;
    assert_eq!(resumed.instances, 1);
    assert_eq!(
        resumed.errors, resumed.watch_restarts,
        "every interruption reported once and followed by one restart"
    );
    assert!(resumed.errors >= stale.errors);
    assert!(age(&resumed) <= restarting.elapsed(), "{resumed:?}");
    assert!(watch.current().last_error.is_none());
    assert_eq!(ports(&watch), [8101]);

    // Renewals go on, and nothing fails any more.
    let settled = only_registration(&registrations).expect("listed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = only_registration(&registrations).expect("listed");
    assert!(
        later.renewals_ok >= settled.renewals_ok + 2,
        "{settled:?} then {later:?}"
    );
    assert_eq!(later.renewals_failed, settled.renewals_failed);
    assert_eq!(
        (later.state, later.reregistrations),
        (RegistrationState::Registered, 1)
    );
    assert_eq!(lease_of(&endpoint, &key).await?, Some(second_lease));

    // Deregistered: the entry is gone when `deregister` returns, and so is
    // the key. The subscription goes with its follower, once the resolver
    // and the last watch are dropped.
    registered.deregister().await?;
    assert!(registrations.snapshot().registrations.is_empty());
    assert_eq!(lease_of(&endpoint, &key).await?, None);
    drop((watch, resolver));
    eventually(WATCH_DEADLINE, "the subscription unlisted", || {
        let left = subscriptions.snapshot().subscriptions;
        async move { left.is_empty().then_some(()) }
    })
    .await?;
    Ok(())
}

/// The ID the registry gives an instance in Consul.
fn consul_id(port: u16) -> String {
    format!("echo-127.0.0.1-{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_failures_restarts_and_refusals_show_in_registration_health() -> anyhow::Result<()> {
    tests::init_test_logging();
    let stand_in = ConsulStandIn::start().await?;
    stand_in.enable_acls();
    stand_in.set_token("svc", AclPolicy::WRITE);
    let health = RegistryHealth::new();
    // TTL 3 s: a pass every second, failures retried after 100-200 ms.
    let registry = ConsulRegistry::builder()
        .address(stand_in.address())
        .token("svc")
        .check(Check::Ttl {
            ttl: Duration::from_secs(3),
        })
        .max_backoff(Duration::from_millis(200))
        .health(health.clone())
        .build()?;
    let id = consul_id(7901);
    let registered = registry.register(Instance::new("echo", addr(7901))).await?;
    let since_registered = Instant::now();
    let healthy =
        registration_where(&health, STEP_DEADLINE, "a TTL pass", |r| r.renewals_ok >= 1).await?;
    assert_eq!(
        (healthy.backend, &*healthy.service, healthy.address),
        ("consul", "echo", addr(7901))
    );
    assert_eq!(healthy.state, RegistrationState::Registered);
    assert_eq!((healthy.renewals_failed, healthy.reregistrations), (0, 0));

    // Two passes answered 500 (only the keeper talks to this agent): two
    // failures, retried within the TTL, so the state never changes.
    let passes_before = only_registration(&health).expect("listed").renewals_ok;
    stand_in.fail_next(2);
    let after_failures = registration_where(
        &health,
        STEP_DEADLINE,
        "two failed passes, then a pass",
        |r| r.renewals_failed == 2 && r.renewals_ok > passes_before,
    )
    .await?;
    assert_eq!(after_failures.state, RegistrationState::Registered);
    assert!(
        after_failures.in_state_for
            >= since_registered
                .elapsed()
                .saturating_sub(Duration::from_millis(500)),
        "registered since the start: {after_failures:?}"
    );
    assert_eq!(after_failures.reregistrations, 0);
    assert_eq!(stand_in.check_status(&id), Some(Status::Passing));

    // The agent restarts and forgets the service: the next pass is 404, a
    // failure and a loss, and the keeper writes it again at once.
    let restarting = Instant::now();
    stand_in.restart();
    let rewritten = registration_where(&health, STEP_DEADLINE, "written again", |r| {
        r.reregistrations == 1
    })
    .await?;
    assert_eq!(rewritten.state, RegistrationState::Registered);
    assert_eq!(
        rewritten.renewals_failed, 3,
        "the one pass answered 404: {rewritten:?}"
    );
    assert!(rewritten.in_state_for <= restarting.elapsed());
    assert_eq!(stand_in.service_ids(), [id.as_str()]);

    // The agent forgets it again, and the token may no longer write: the
    // registration stays lost while every attempt is refused.
    stand_in.set_token("svc", AclPolicy::READ);
    stand_in.restart();
    let refused = registration_where(&health, STEP_DEADLINE, "re-registration refused", |r| {
        r.state == RegistrationState::Reregistering
    })
    .await?;
    assert!(
        stand_in.service_ids().is_empty(),
        "the agent does not hold it"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let still_refused = only_registration(&health).expect("listed while the handle lives");
    assert_eq!(still_refused.state, RegistrationState::Reregistering);
    assert_eq!(still_refused.reregistrations, 1);
    assert!(
        still_refused.renewals_failed >= refused.renewals_failed + 2,
        "a refused round per period: {refused:?} then {still_refused:?}"
    );
    assert!(still_refused.in_state_for >= refused.in_state_for + Duration::from_millis(2500));
    assert!(stand_in.service_ids().is_empty());

    // Allowed again: written again by the next round.
    let allowed = Instant::now();
    stand_in.set_token("svc", AclPolicy::WRITE);
    let back = registration_where(&health, STEP_DEADLINE, "registered again", |r| {
        r.state == RegistrationState::Registered
    })
    .await?;
    assert_eq!(back.reregistrations, 2);
    assert!(back.in_state_for <= allowed.elapsed());
    assert_eq!(stand_in.service_ids(), [id.as_str()]);
    let passes_resume = registration_where(&health, STEP_DEADLINE, "passes resuming", |r| {
        r.renewals_ok > back.renewals_ok
    })
    .await?;
    assert_eq!(passes_resume.renewals_failed, back.renewals_failed);

    // Deregistered: the entry is gone when `deregister` returns.
    registered.deregister().await?;
    assert!(health.snapshot().registrations.is_empty());
    assert!(stand_in.service_ids().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_failures_and_an_agent_restart_show_in_subscription_health() -> anyhow::Result<()> {
    tests::init_test_logging();
    let stand_in = ConsulStandIn::start().await?;
    let health = RegistryHealth::new();
    // A TTL of 10 min: the keeper's first pass comes after 200 s, so the
    // resolver is the only one talking to the agent during the test, and
    // every injected failure is one of its queries.
    let registry = ConsulRegistry::builder()
        .address(stand_in.address())
        .check(Check::Ttl {
            ttl: Duration::from_secs(600),
        })
        .health(health.clone())
        .build()?;
    let resolver = ConsulResolver::builder()
        .address(stand_in.address())
        .wait(Duration::from_secs(1))
        .max_backoff(Duration::from_millis(300))
        .health(health.clone())
        .build()?;
    let _registered = registry.register(Instance::new("echo", addr(7911))).await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[7911], WATCH_DEADLINE).await?;

    let following = only_subscription(&health).expect("the subscription is listed");
    assert_eq!((following.backend, &*following.service), ("consul", "echo"));
    assert_eq!(following.instances, 1);
    assert_eq!((following.errors, following.watch_restarts), (0, 0));
    assert!(!following.serving_stale);
    // A blocking query answers at least every `wait` (1 s): each answer
    // confirms the set, so the age stays below it (plus scheduling).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet = only_subscription(&health).expect("listed");
    let age = |s: &SubscriptionHealth| s.last_update_age.expect("a set was received");
    assert!(age(&quiet) < Duration::from_millis(2500), "{quiet:?}");
    assert_eq!(quiet.errors, 0);

    // Three queries answered 500: stale meanwhile, then exactly three
    // errors and three restarts.
    let failing = Instant::now();
    stand_in.fail_next(3);
    let stale = subscription_where(&health, STEP_DEADLINE, "stale", |s| s.serving_stale).await?;
    assert_eq!(stale.instances, 1, "the last known set is kept");
    assert!((1..=3).contains(&stale.errors), "{stale:?}");
    let recovered =
        subscription_where(&health, STEP_DEADLINE, "recovered", |s| !s.serving_stale).await?;
    assert_eq!((recovered.errors, recovered.watch_restarts), (3, 3));
    assert_eq!(recovered.instances, 1);
    assert!(age(&recovered) < failing.elapsed());
    assert!(watch.current().last_error.is_none());
    assert_eq!(ports(&watch), [7911]);

    // The agent restarts: it forgets the service (the keeper, 200 s away
    // from its next pass, does not bring it back during the test) and its
    // index goes backwards, so the resolver starts over from index 0 and
    // shows the empty set, which is an answer, not an error.
    stand_in.restart();
    let restarted = subscription_where(&health, STEP_DEADLINE, "the empty set", |s| {
        s.instances == 0
    })
    .await?;
    assert_eq!((restarted.errors, restarted.watch_restarts), (3, 4));
    assert!(!restarted.serving_stale);
    wait_for_ports(&mut watch, &[], WATCH_DEADLINE).await?;
    assert!(stand_in.service_ids().is_empty());

    // The follower ends with the resolver and its last watch.
    drop((watch, resolver));
    eventually(WATCH_DEADLINE, "the subscription unlisted", || {
        let left = health.snapshot().subscriptions;
        async move { left.is_empty().then_some(()) }
    })
    .await?;
    assert_eq!(
        health.snapshot().registrations.len(),
        1,
        "the registration reports into the same handle"
    );
    Ok(())
}
