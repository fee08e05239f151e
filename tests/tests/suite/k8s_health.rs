//! `RegistryHealth` of the Kubernetes backend, against the stand-in API
//! server: a registration's Lease renewals and their refusal, an expired
//! Lease and a deleted EndpointSlice as losses and their re-registration,
//! and a resolver's watch restarts, errors and stale set through an
//! expired watch, dropped connections, an unavailable API server and a
//! refused Lease watch. Each step is checked against what the stand-in
//! stores and what the resolver's subscribers are shown.

use std::time::{Duration, Instant};

use rpc_ext_registry::{
    health::{RegistrationState, RegistryHealth, SubscriptionHealth},
    k8s::{K8sRegistry, K8sResolver, REGISTRATION_LABEL},
    Instance, Registry, Resolver, ServiceWatch,
};
use serde_json::{json, Value};
use tests::{eventually, k8s::K8sStandIn};

use crate::{
    k8s_backend::{grant, manifest_roles},
    support::{
        only_registration, only_subscription, registration_where, slice_name, subscription_where,
        wait_for_ips_within, RECOVERY_DEADLINE, WATCH_DEADLINE,
    },
};

/// The lease duration of the registrations (renewed every 1 s), long
/// enough that a renewal refused right after the last stored one is
/// recorded well before the Lease runs out, on a loaded machine.
const LEASE: Duration = Duration::from_secs(3);
const SLICES: &str = "endpointslices.discovery.k8s.io";
const LEASES: &str = "leases.coordination.k8s.io";

/// Every rule of the manifest's resolver and registry Roles.
fn manifest_rules() -> anyhow::Result<Vec<(String, String)>> {
    let roles = manifest_roles()?;
    Ok(roles
        .get("registry-ext-resolver")
        .into_iter()
        .chain(roles.get("registry-ext-registry"))
        .flatten()
        .cloned()
        .collect())
}

/// Grants `rules` but `verb` on `resource`.
fn grant_all_but(api: &K8sStandIn, rules: &[(String, String)], verb: &str, resource: &str) {
    grant(
        api,
        rules
            .iter()
            .filter(|(v, r)| (v.as_str(), r.as_str()) != (verb, resource)),
    );
}

fn registry(api: &K8sStandIn, health: &RegistryHealth) -> anyhow::Result<K8sRegistry> {
    Ok(K8sRegistry::new(api.client()?)
        .namespace("default")
        .port_name("grpc")
        .lease_duration(LEASE)
        .recheck_interval(Duration::from_millis(200))
        .with_health(health.clone()))
}

fn resolver(api: &K8sStandIn, health: &RegistryHealth) -> anyhow::Result<K8sResolver> {
    Ok(K8sResolver::new(api.client()?)
        .missing_lease_grace(LEASE)
        .with_health(health.clone()))
}

fn addresses(watch: &ServiceWatch) -> Vec<String> {
    watch
        .current()
        .instances
        .iter()
        .map(|i| i.address.to_string())
        .collect()
}

/// A slice of `service` as the endpoints controller writes it (no Lease),
/// with a ready endpoint at each of `ips`.
fn controller_slice(name: &str, service: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}],
    })
}

/// Deregisters, and checks that the entry and the stored objects are gone
/// when `deregister` returns.
async fn deregister(
    api: &K8sStandIn,
    health: &RegistryHealth,
    registration: rpc_ext_registry::Registration,
) -> anyhow::Result<()> {
    registration.deregister().await?;
    assert!(health.snapshot().registrations.is_empty());
    assert!(
        api.names("default").is_empty(),
        "{:?}",
        api.names("default")
    );
    assert!(api.lease_names("default").is_empty());
    Ok(())
}

/// Drops the resolver and its watch, and waits until its follower ended
/// and took its entry with it.
async fn unsubscribe(
    health: &RegistryHealth,
    resolver: K8sResolver,
    watch: ServiceWatch,
) -> anyhow::Result<()> {
    drop((watch, resolver));
    eventually(WATCH_DEADLINE, "the subscription unlisted", || {
        let empty = health.snapshot().subscriptions.is_empty();
        async move { empty.then_some(()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_slice_is_reregistering_until_applied_again() -> anyhow::Result<()> {
    tests::init_test_logging();
    let api = K8sStandIn::start().await?;
    let rules = manifest_rules()?;
    grant(&api, &rules);
    // One handle for the registry and the resolver: their entries are
    // listed apart.
    let health = RegistryHealth::new();
    let registration = registry(&api, &health)?
        .register(Instance::new("deleted", "10.30.0.1:50051".parse()?))
        .await?;
    let name = slice_name(&api, "deleted")?;
    let id = api.get("default", &name).expect("the slice")["metadata"]["labels"]
        [REGISTRATION_LABEL]
        .clone();
    let resolver = resolver(&api, &health)?;
    let mut watch = resolver.subscribe("k8s://deleted.default:grpc").await?;
    wait_for_ips_within(&mut watch, &["10.30.0.1:50051"], WATCH_DEADLINE).await?;

    let fresh = only_registration(&health).expect("listed");
    assert_eq!(
        (fresh.backend, &*fresh.service, fresh.address),
        ("k8s", "deleted", "10.30.0.1:50051".parse()?)
    );
    assert_eq!(fresh.state, RegistrationState::Registered);
    assert_eq!((fresh.renewals_failed, fresh.reregistrations), (0, 0));
    let followed = only_subscription(&health).expect("listed");
    assert_eq!(
        (followed.backend, &*followed.service),
        ("k8s", "k8s://deleted.default:grpc")
    );
    registration_where(&health, RECOVERY_DEADLINE, "two renewals", |r| {
        r.renewals_ok >= 2
    })
    .await?;

    // The slice deleted, and its re-apply refused (the Role loses `patch`
    // on slices): the check finds it gone and the registration is lost
    // until it can apply it again; resolvers no longer see it.
    grant_all_but(&api, &rules, "patch", SLICES);
    api.remove("default", &name);
    let lost = registration_where(&health, RECOVERY_DEADLINE, "the slice found deleted", |r| {
        r.state == RegistrationState::Reregistering
    })
    .await?;
    assert_eq!(lost.reregistrations, 0);
    wait_for_ips_within(&mut watch, &[], WATCH_DEADLINE).await?;
    assert!(api.get("default", &name).is_none());

    // The Lease is renewed meanwhile: counted, but it does not make the
    // registration registered while its slice is missing.
    let renewing = registration_where(&health, RECOVERY_DEADLINE, "two renewals while lost", |r| {
        r.renewals_ok >= lost.renewals_ok + 2
    })
    .await?;
    assert_eq!(renewing.state, RegistrationState::Reregistering);
    assert_eq!(renewing.reregistrations, 0);
    assert!(renewing.in_state_for >= lost.in_state_for);

    // Allowed again: applied at the next check, registered again once.
    grant(&api, &rules);
    let allowed = Instant::now();
    let back = registration_where(&health, RECOVERY_DEADLINE, "registered again", |r| {
        r.state == RegistrationState::Registered
    })
    .await?;
    assert_eq!(back.reregistrations, 1);
    assert!(back.in_state_for <= allowed.elapsed());
    // Each round while refused failed twice (the slice found gone, the
    // apply refused); the last found it gone once and applied it. No Lease
    // renewal failed.
    assert!(
        back.renewals_failed >= 3 && back.renewals_failed % 2 == 1,
        "{back:?}"
    );
    println!("slice deleted, re-apply refused then allowed: {back:?}");
    let stored = api.get("default", &name).expect("the slice applied again");
    assert_eq!(stored["metadata"]["labels"][REGISTRATION_LABEL], id);
    wait_for_ips_within(&mut watch, &["10.30.0.1:50051"], WATCH_DEADLINE).await?;

    // Every renewal counted is one the stand-in stored (after the first
    // write, which created the Lease), with at most one stored and not yet
    // counted (the keeper renews one at a time, and may be reading the
    // answer); read around the list of writes.
    let before = only_registration(&health).expect("listed");
    let renewals_stored = api.lease_writes("default", &name).len() as u64 - 1;
    let after = only_registration(&health).expect("listed");
    assert!(
        before.renewals_ok <= renewals_stored && renewals_stored <= after.renewals_ok + 1,
        "{renewals_stored} Lease renewals stored, counted {} then {}",
        before.renewals_ok,
        after.renewals_ok
    );

    deregister(&api, &health, registration).await?;
    assert!(
        only_subscription(&health).is_some(),
        "the resolver still follows"
    );
    unsubscribe(&health, resolver, watch).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_renewals_are_failures_and_an_expired_lease_is_a_loss() -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let rules = manifest_rules()?;
    grant(&api, &rules);
    let health = RegistryHealth::new();
    let registry = registry(&api, &health)?;
    let registration = registry
        .register(Instance::new("refused", "10.30.1.1:50051".parse()?))
        .await?;
    let name = slice_name(&api, "refused")?;
    let holder = |api: &K8sStandIn| {
        api.lease("default", &name)
            .map(|lease| lease["spec"]["holderIdentity"].clone())
    };
    let ours = holder(&api).expect("the Lease");
    let resolver = K8sResolver::new(api.client()?).missing_lease_grace(LEASE);
    let mut watch = resolver.subscribe("k8s://refused.default:grpc").await?;
    wait_for_ips_within(&mut watch, &["10.30.1.1:50051"], WATCH_DEADLINE).await?;
    registration_where(&registry.health(), RECOVERY_DEADLINE, "two renewals", |r| {
        r.renewals_ok >= 2
    })
    .await?;

    // Renewals refused (the Role loses `update` on Leases): failures, and
    // while the Lease is within its duration still registered.
    grant_all_but(&api, &rules, "update", LEASES);
    let failing = registration_where(&health, RECOVERY_DEADLINE, "a refused renewal", |r| {
        r.renewals_failed >= 1
    })
    .await?;
    assert_eq!(failing.state, RegistrationState::Registered);
    // The keeper renews one at a time: once a refusal is recorded, every
    // renewal before it was counted, and each is a write the stand-in
    // stored after the first (which created the Lease).
    let writes = api.lease_writes("default", &name);
    assert_eq!(failing.renewals_ok, writes.len() as u64 - 1, "{failing:?}");
    let last_stored = *writes.last().expect("written");

    // Unrenewed for the lease duration: lost, from the first refusal after
    // it ran out (retries are at most 1 s apart); resolvers no longer use
    // the endpoint.
    registration_where(&health, RECOVERY_DEADLINE, "the Lease run out", |r| {
        r.state == RegistrationState::Reregistering
    })
    .await?;
    let (read_from, lost, read_by) = (Instant::now(), only_registration(&health), Instant::now());
    let lost = lost.expect("listed");
    let entered_after = |read: Instant| {
        read.checked_sub(lost.in_state_for)
            .expect("the test runs for longer than that")
            .saturating_duration_since(last_stored)
    };
    // The earliest and latest it can have been entered, given when the
    // entry was read; a little leeway below for the read being delayed.
    let (earliest, latest) = (entered_after(read_from), entered_after(read_by));
    println!("lost {earliest:?} after the last stored renewal");
    assert!(
        earliest + Duration::from_millis(100) >= LEASE,
        "lost {earliest:?} after the last stored renewal, within the {LEASE:?} lease"
    );
    assert!(latest <= LEASE + Duration::from_millis(2500), "{latest:?}");
    assert_eq!(
        (lost.renewals_ok, lost.reregistrations),
        (failing.renewals_ok, 0)
    );
    assert!(lost.renewals_failed >= 2, "{lost:?}");
    wait_for_ips_within(&mut watch, &[], WATCH_DEADLINE).await?;
    assert_eq!(api.lease_writes("default", &name).len(), writes.len());

    // Allowed again: the next retry renews it, which registers it again.
    grant(&api, &rules);
    let back = registration_where(&health, RECOVERY_DEADLINE, "registered again", |r| {
        r.state == RegistrationState::Registered
    })
    .await?;
    assert_eq!(back.reregistrations, 1);
    assert_eq!(holder(&api), Some(ours));
    wait_for_ips_within(&mut watch, &["10.30.1.1:50051"], WATCH_DEADLINE).await?;

    // Refused once more, to count at rest: the renewal that registered it
    // again is a renewal too, and nothing else was stored.
    grant_all_but(&api, &rules, "update", LEASES);
    let resting = registration_where(&health, RECOVERY_DEADLINE, "refused again", |r| {
        r.renewals_failed > back.renewals_failed
    })
    .await?;
    assert_eq!(
        resting.renewals_ok,
        api.lease_writes("default", &name).len() as u64 - 1,
        "{resting:?}"
    );
    assert!(resting.renewals_ok > lost.renewals_ok);
    println!("renewals refused, then allowed, then refused: {resting:?}");

    grant(&api, &rules);
    deregister(&api, &health, registration).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_failures_show_as_restarts_and_a_stale_set_until_it_recovers() -> anyhow::Result<()>
{
    let api = K8sStandIn::start().await?;
    api.put(
        "default",
        controller_slice("quiet-1", "quiet", &["10.30.2.1"]),
    );
    let health = RegistryHealth::new();
    let resolver = resolver(&api, &health)?;
    let target = "k8s://quiet.default:grpc";
    let mut watch = resolver.subscribe(target).await?;
    wait_for_ips_within(&mut watch, &["10.30.2.1:50051"], WATCH_DEADLINE).await?;
    let fresh = only_subscription(&health).expect("listed");
    assert_eq!((fresh.backend, &*fresh.service), ("k8s", target));
    assert_eq!(fresh.instances, 1);
    assert_eq!((fresh.errors, fresh.watch_restarts), (0, 0));
    assert!(!fresh.serving_stale);
    assert!(fresh.last_update_age.is_some());

    // Connections dropped (as the API server ends watches): kube's watcher
    // resumes from its resource version; nothing was lost, no list made,
    // no restart, and the change made meanwhile arrives.
    let lists = api.list_requests();
    api.drop_watches();
    api.put(
        "default",
        controller_slice("quiet-1", "quiet", &["10.30.2.1", "10.30.2.2"]),
    );
    wait_for_ips_within(
        &mut watch,
        &["10.30.2.1:50051", "10.30.2.2:50051"],
        RECOVERY_DEADLINE,
    )
    .await?;
    let resumed = only_subscription(&health).expect("listed");
    assert_eq!((resumed.errors, resumed.watch_restarts), (0, 0));
    assert_eq!(resumed.instances, 2);
    assert_eq!(api.list_requests(), lists);

    // The watch expired (410 Gone when it resumes after its history was
    // compacted): one error, one new watcher, one new list.
    api.compact();
    api.expire_next_watch();
    api.drop_watches();
    api.put(
        "default",
        controller_slice("quiet-1", "quiet", &["10.30.2.2"]),
    );
    wait_for_ips_within(&mut watch, &["10.30.2.2:50051"], RECOVERY_DEADLINE).await?;
    let relisted = subscription_where(&health, RECOVERY_DEADLINE, "the new list complete", |s| {
        !s.serving_stale
    })
    .await?;
    assert_eq!((relisted.errors, relisted.watch_restarts), (1, 1));
    assert_eq!(relisted.instances, 1);
    assert_eq!(api.list_requests(), lists + 1);
    assert!(watch.current().last_error.is_none());

    // The API server unavailable, its connections dropped: the watch
    // cannot resume and every new watcher fails; the set is kept, stale.
    api.set_unavailable(true);
    api.drop_watches();
    let stale = subscription_where(&health, RECOVERY_DEADLINE, "serving stale", |s| {
        s.serving_stale
    })
    .await?;
    assert_eq!(stale.instances, 1);
    assert_eq!(addresses(&watch), ["10.30.2.2:50051"]);
    assert!(watch.current().last_error.is_some());
    assert!(stale.errors >= 2, "{stale:?}");
    // Still down a second later: stale, no update, each failure followed
    // by one new watcher.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still = only_subscription(&health).expect("listed");
    assert!(still.serving_stale);
    let age = |s: &SubscriptionHealth| s.last_update_age.expect("a set was received");
    assert!(age(&still) >= age(&stale) + Duration::from_secs(1));
    assert!(
        still.watch_restarts == still.errors || still.watch_restarts + 1 == still.errors,
        "a restart is counted right after its failure: {still:?}"
    );

    // Back: the next watcher's list clears the error; nothing fails any
    // more.
    api.set_unavailable(false);
    let back_at = Instant::now();
    let recovered = subscription_where(&health, RECOVERY_DEADLINE, "recovered", |s| {
        !s.serving_stale
    })
    .await?;
    assert_eq!(recovered.errors, recovered.watch_restarts, "{recovered:?}");
    assert!(recovered.errors >= still.errors);
    assert!(age(&recovered) <= back_at.elapsed());
    assert_eq!(recovered.instances, 1);
    assert!(watch.current().last_error.is_none());
    assert_eq!(addresses(&watch), ["10.30.2.2:50051"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = only_subscription(&health).expect("listed");
    assert_eq!(
        (settled.errors, settled.watch_restarts),
        (recovered.errors, recovered.watch_restarts)
    );
    assert!(!settled.serving_stale);
    println!("after the outage: {settled:?}");

    unsubscribe(&health, resolver, watch).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_lease_watch_is_counted_once_per_failure() -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let rules = manifest_rules()?;
    grant(&api, &rules);
    let registration = registry(&api, &RegistryHealth::new())?
        .register(Instance::new("leased", "10.30.3.1:50051".parse()?))
        .await?;
    // The resolver may not list Leases: its Lease watch fails and is
    // retried with backoff; the endpoint is kept (nothing expires while
    // Leases cannot be watched), stale.
    grant_all_but(&api, &rules, "list", LEASES);
    let health = RegistryHealth::new();
    let resolver = resolver(&api, &health)?;
    let mut watch = resolver.subscribe("k8s://leased.default:grpc").await?;
    wait_for_ips_within(&mut watch, &["10.30.3.1:50051"], WATCH_DEADLINE).await?;
    let refused = subscription_where(&health, RECOVERY_DEADLINE, "the Lease watch refused", |s| {
        s.serving_stale && s.errors >= 2
    })
    .await?;
    assert_eq!(refused.instances, 1);
    assert_eq!(addresses(&watch), ["10.30.3.1:50051"]);
    // The endpoints controller's slice of the Service changes meanwhile:
    // each set is published with the Lease watch's failure, which is
    // counted once (with one restart) however often it is published.
    let controller = |ips: &[&str]| controller_slice("leased-ctl", "leased", ips);
    api.put("default", controller(&["10.30.3.2"]));
    wait_for_ips_within(
        &mut watch,
        &["10.30.3.1:50051", "10.30.3.2:50051"],
        WATCH_DEADLINE,
    )
    .await?;
    api.put("default", controller(&["10.30.3.3"]));
    wait_for_ips_within(
        &mut watch,
        &["10.30.3.1:50051", "10.30.3.3:50051"],
        WATCH_DEADLINE,
    )
    .await?;
    api.remove("default", "leased-ctl");
    wait_for_ips_within(&mut watch, &["10.30.3.1:50051"], WATCH_DEADLINE).await?;
    let changed = only_subscription(&health).expect("listed");
    assert!(changed.serving_stale);
    assert!(
        changed.watch_restarts == changed.errors || changed.watch_restarts + 1 == changed.errors,
        "{changed:?}"
    );

    // Allowed: the next Lease list clears it.
    grant(&api, &rules);
    let recovered = subscription_where(&health, RECOVERY_DEADLINE, "the Lease watch back", |s| {
        !s.serving_stale
    })
    .await?;
    assert_eq!(recovered.errors, recovered.watch_restarts, "{recovered:?}");
    assert_eq!(recovered.instances, 1);
    assert!(watch.current().last_error.is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = only_subscription(&health).expect("listed");
    assert_eq!(
        (
            settled.errors,
            settled.watch_restarts,
            settled.serving_stale
        ),
        (recovered.errors, recovered.watch_restarts, false)
    );
    println!("Lease watch refused, then allowed: {settled:?}");

    registration.deregister().await?;
    wait_for_ips_within(&mut watch, &[], WATCH_DEADLINE).await?;
    unsubscribe(&health, resolver, watch).await
}
