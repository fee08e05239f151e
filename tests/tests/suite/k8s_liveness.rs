//! Liveness of Kubernetes registrations (a Lease per registration), against
//! the stand-in API server: a registration whose process is killed with
//! SIGKILL leaves resolvers once its Lease goes unrenewed for its duration,
//! a live one stays, renewals bring it back, and Leases are owned as the
//! slices are.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rpc_ext_registry::{
    k8s::{
        K8sRegistry, K8sResolver, LEASE_LABEL, LEASE_MANAGED_BY_LABEL, LEASE_SERVICE_LABEL,
        MANAGED_BY, REGISTRATION_LABEL,
    },
    Instance, Registry, Resolver, ServiceWatch,
};
use serde_json::{json, Value};
use tests::{eventually, k8s::K8sStandIn, ChildGuard};

use crate::{
    k8s_backend::{grant, manifest_roles},
    support::{
        only_subscription, slice_name, wait_for_ips_within, RECOVERY_DEADLINE, WATCH_DEADLINE,
    },
};

/// The lease duration of the registrations (and the resolvers' grace for a
/// missing Lease) in these tests.
const LEASE: Duration = Duration::from_secs(2);
/// How late after its deadline a Lease's endpoint may leave the set: the
/// Lease event's way to the resolver, its timer and the publication, on a
/// loaded machine.
const LATE: Duration = Duration::from_millis(1500);
/// The environment variable that makes [`registrant`] run, naming the
/// stand-in's URL.
const CHILD_API: &str = "RPC_EXT_K8S_LIVENESS_API";

fn registry(client: kube::Client) -> K8sRegistry {
    K8sRegistry::new(client)
        .namespace("default")
        .port_name("grpc")
        .lease_duration(LEASE)
}

fn resolver(api: &K8sStandIn) -> anyhow::Result<K8sResolver> {
    Ok(K8sResolver::new(api.client()?).missing_lease_grace(LEASE))
}

fn addresses(instances: &[Arc<Instance>]) -> Vec<String> {
    instances.iter().map(|i| i.address.to_string()).collect()
}

/// A set of addresses, and when the test saw it.
type Sighting = (Instant, Vec<String>);

/// Every set a watch shows from its start on, with when the test saw it.
struct Timeline {
    watch: ServiceWatch,
    seen: Arc<Mutex<Vec<Sighting>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Timeline {
    fn start(watch: &ServiceWatch) -> Self {
        let mut observer = watch.clone();
        let seen = Arc::new(Mutex::new(vec![(
            Instant::now(),
            addresses(&observer.current().instances),
        )]));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok(snapshot) = observer.changed().await {
                    let set = addresses(&snapshot.instances);
                    seen.lock().unwrap().push((Instant::now(), set));
                }
            })
        };
        Self {
            watch: watch.clone(),
            seen,
            task,
        }
    }

    /// The sets seen so far, once the recorder has caught up with the
    /// watch's current set (it runs as a task of its own).
    async fn sets(&self) -> Vec<Sighting> {
        let caught_up = eventually(WATCH_DEADLINE, "the timeline caught up", || {
            let sets = self.seen.lock().unwrap().clone();
            let current = addresses(&self.watch.current().instances);
            let done = sets.last().is_some_and(|(_, last)| *last == current);
            async move { done.then_some(sets) }
        })
        .await;
        caught_up.unwrap_or_else(|error| panic!("{error}"))
    }

    /// When the set first stopped containing `address` after `after`.
    async fn left_after(&self, address: &str, after: Instant) -> Instant {
        let sets = self.sets().await;
        sets.iter()
            .find(|(at, set)| *at > after && !set.iter().any(|a| a == address))
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("{address} never left after {after:?}: {sets:?}"))
    }

    /// When the set first stopped containing `address`.
    async fn left(&self, address: &str) -> Instant {
        let sets = self.sets().await;
        let start = sets.first().map(|(at, _)| *at);
        match start {
            Some(start) if !sets[0].1.iter().any(|a| a == address) => start,
            Some(start) => self.left_after(address, start).await,
            None => panic!("no set seen"),
        }
    }

    /// Fails unless every set seen contains `address`.
    async fn assert_always(&self, address: &str) {
        let sets = self.sets().await;
        assert!(
            sets.iter().all(|(_, set)| set.iter().any(|a| a == address)),
            "{address} left the set: {sets:?}"
        );
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the stand-in stored the Lease `name` at least `count` times.
async fn lease_written(api: &K8sStandIn, name: &str, count: usize) -> anyhow::Result<()> {
    eventually(RECOVERY_DEADLINE, "Lease renewals", || {
        let written = api.lease_writes("default", name).len();
        async move { (written >= count).then_some(()) }
    })
    .await
}

fn holder(lease: &Value) -> String {
    lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Asserts that the endpoint left at `left`, between the Lease's deadline
/// (`renewed` + [`LEASE`], the earliest a resolver may drop it: it saw the
/// renewal after the stand-in stored it) and [`LATE`] after it.
fn assert_left_at_deadline(left: Instant, renewed: Instant, what: &str) {
    let after = left.saturating_duration_since(renewed);
    assert!(
        left >= renewed + LEASE,
        "{what}: left {after:?} after the last renewal, before the {LEASE:?} lease ran out"
    );
    assert!(
        after <= LEASE + LATE,
        "{what}: left {after:?} after the last renewal (lease {LEASE:?})"
    );
    println!("{what}: left {after:?} after the last renewal");
}

/// Not a test on its own: the registering process that
/// [`a_sigkilled_registration_leaves_resolvers_when_its_lease_runs_out`]
/// starts and kills with SIGKILL. It registers `killed` at 10.20.0.1:50051
/// on the stand-in named by `RPC_EXT_K8S_LIVENESS_API` and waits to be
/// killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_sigkilled_registration_leaves_resolvers_when_its_lease_runs_out, which runs it"]
async fn registrant() -> anyhow::Result<()> {
    let url = std::env::var(CHILD_API).map_err(|_| {
        anyhow::anyhow!(
            "run by a_sigkilled_registration_leaves_resolvers_when_its_lease_runs_out, \
             which sets {CHILD_API}"
        )
    })?;
    let _registration = registry(tests::k8s::client_for(&url)?)
        .register(Instance::new("killed", "10.20.0.1:50051".parse()?))
        .await?;
    println!("registered");
    tokio::time::sleep(Duration::from_secs(60)).await;
    anyhow::bail!("not killed within 60 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_registration_leaves_resolvers_when_its_lease_runs_out() -> anyhow::Result<()> {
    tests::init_test_logging();
    let api = K8sStandIn::start().await?;
    let logs = tempfile::tempdir()?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .args([
            "k8s_liveness::registrant",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_API, api.url());
    let mut child = ChildGuard::spawn("registrant", command, &logs.path().join("child.log"))?;
    let name = eventually(RECOVERY_DEADLINE, "the child's slice", || {
        let found = slice_name(&api, "killed").ok();
        async move { found }
    })
    .await?;
    // Renewing: created, then written again.
    lease_written(&api, &name, 3).await?;
    child.check_running()?;
    let resolver = resolver(&api)?;
    let mut watch = resolver.subscribe("k8s://killed.default:grpc").await?;
    wait_for_ips_within(&mut watch, &["10.20.0.1:50051"], WATCH_DEADLINE).await?;
    let timeline = Timeline::start(&watch);

    child.kill();
    let killed = Instant::now();
    let renewed = *api.lease_writes("default", &name).last().expect("written");
    assert!(renewed <= killed);
    wait_for_ips_within(&mut watch, &[], LEASE + LATE + WATCH_DEADLINE).await?;
    let left = timeline.left("10.20.0.1:50051").await;
    assert_left_at_deadline(left, renewed, "a SIGKILLed registration");
    println!(
        "killed → left the set: {:?}",
        left.saturating_duration_since(killed)
    );
    // Nothing was deleted: the slice is still there, naming its Lease,
    // which still names the dead registration. Liveness alone removed it.
    let slice = api.get("default", &name).expect("the slice is kept");
    let lease = api.lease("default", &name).expect("the Lease is kept");
    assert_eq!(slice["metadata"]["labels"][LEASE_LABEL], name.as_str());
    assert_eq!(
        holder(&lease),
        slice["metadata"]["labels"][REGISTRATION_LABEL]
            .as_str()
            .unwrap_or_default()
    );
    assert!(
        api.lease_writes("default", &name)
            .iter()
            .all(|at| *at <= killed),
        "the Lease was written after the kill"
    );

    // A resolver that starts now cannot tell how old the renewTime is on
    // its own clock: it uses the endpoint for one lease duration from its
    // first sight of the Lease, then drops it.
    let started = Instant::now();
    let late = K8sResolver::new(api.client()?).missing_lease_grace(LEASE);
    let mut late_watch = late.subscribe("k8s://killed.default:grpc").await?;
    let late_timeline = Timeline::start(&late_watch);
    assert_eq!(
        late_timeline.sets().await[0].1,
        ["10.20.0.1:50051"],
        "first sight"
    );
    wait_for_ips_within(&mut late_watch, &[], LEASE + LATE + WATCH_DEADLINE).await?;
    let left = late_timeline.left("10.20.0.1:50051").await;
    assert_left_at_deadline(left, started, "a resolver started after the kill");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_registration_stays_across_several_lease_durations() -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let registration = registry(api.client()?)
        .register(Instance::new("steady", "10.20.1.1:50051".parse()?))
        .await?;
    let name = slice_name(&api, "steady")?;
    let lease = api
        .lease("default", &name)
        .expect("a Lease per registration");
    let slice = api.get("default", &name).expect("the slice");
    // The Lease: the slice's name, held by the slice's registration, with
    // the registry's duration, selectable by the resolver.
    assert_eq!(slice["metadata"]["labels"][LEASE_LABEL], name.as_str());
    assert_eq!(
        lease["spec"]["holderIdentity"],
        slice["metadata"]["labels"][REGISTRATION_LABEL]
    );
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);
    assert_eq!(
        lease["metadata"]["labels"][LEASE_MANAGED_BY_LABEL],
        MANAGED_BY
    );
    assert_eq!(lease["metadata"]["labels"][LEASE_SERVICE_LABEL], "steady");

    let resolver = resolver(&api)?;
    let mut watch = resolver.subscribe("k8s://steady.default:grpc").await?;
    wait_for_ips_within(&mut watch, &["10.20.1.1:50051"], WATCH_DEADLINE).await?;
    // Published once for the slice list, once for the Lease list that
    // follows it: from then on nothing changes.
    let generation = eventually(WATCH_DEADLINE, "the Lease list published", || {
        let generation = watch.current().generation;
        async move { (generation >= 2).then_some(generation) }
    })
    .await?;
    let timeline = Timeline::start(&watch);
    let start = Instant::now();
    tokio::time::sleep(LEASE * 4).await;
    timeline.assert_always("10.20.1.1:50051").await;
    assert!(watch.current().last_error.is_none());
    // Renewals of a live Lease change nothing: the set is not published
    // again, and the subscription's last update grows old.
    assert_eq!(watch.current().generation, generation);
    let quiet = only_subscription(&resolver.health())
        .and_then(|s| s.last_update_age)
        .expect("a set was received");
    assert!(quiet >= LEASE * 4, "last update {quiet:?} ago");
    // Renewed every third of the duration: never a gap as long as the
    // lease, and renewTime moved on.
    let writes: Vec<Instant> = api
        .lease_writes("default", &name)
        .into_iter()
        .filter(|at| *at >= start)
        .collect();
    let longest_gap = writes
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .chain([writes.first().map_or(LEASE, |first| *first - start)])
        .max()
        .unwrap_or(LEASE);
    println!(
        "{} renewals in {:?}, longest gap {longest_gap:?}",
        writes.len(),
        LEASE * 4
    );
    assert!(writes.len() >= 6, "{} renewals in 8 s", writes.len());
    assert!(
        longest_gap < LEASE,
        "a gap of {longest_gap:?} between renewals"
    );
    let renewed = api.lease("default", &name).expect("the Lease");
    assert_ne!(renewed["spec"]["renewTime"], lease["spec"]["renewTime"]);
    assert_eq!(
        renewed["spec"]["holderIdentity"],
        lease["spec"]["holderIdentity"]
    );
    registration.deregister().await?;
    Ok(())
}

/// A slice as a registry writes it, naming Lease `lease`, or as the
/// endpoints controller writes it (`None`).
fn slice(name: &str, service: &str, ip: &str, lease: Option<&str>) -> Value {
    let mut labels = json!({"kubernetes.io/service-name": service});
    if let Some(lease) = lease {
        labels[LEASE_LABEL] = json!(lease);
    }
    json!({
        "metadata": {"name": name, "labels": labels},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}],
    })
}

/// A registration Lease of `service`, renewed at `renewed` (RFC 3339).
fn lease(name: &str, service: &str, renewed: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {
            LEASE_MANAGED_BY_LABEL: MANAGED_BY, LEASE_SERVICE_LABEL: service,
        }},
        "spec": {"holderIdentity": "someone", "leaseDurationSeconds": 2, "renewTime": renewed},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_without_a_lease_label_are_unaffected_and_renewals_bring_an_endpoint_back(
) -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let (plain, leased) = ("10.20.2.1:50051", "10.20.2.2:50051");
    // The endpoints controller's slice, and a registry slice whose Lease
    // does not exist.
    api.put("default", slice("mixed-a", "mixed", "10.20.2.1", None));
    api.put(
        "default",
        slice("mixed-b", "mixed", "10.20.2.2", Some("mixed-b")),
    );
    let resolver = resolver(&api)?;
    let first_sight = Instant::now();
    let mut watch = resolver.subscribe("k8s://mixed.default:grpc").await?;
    let timeline = Timeline::start(&watch);
    assert_eq!(timeline.sets().await[0].1, [plain, leased]);
    // The missing Lease's grace (one lease duration) runs out.
    wait_for_ips_within(&mut watch, &[plain], LEASE + LATE + WATCH_DEADLINE).await?;
    assert_left_at_deadline(
        timeline.left(leased).await,
        first_sight,
        "a slice naming a missing Lease",
    );

    // Its holder renews it (creates it): back at once.
    let renewed = Instant::now();
    api.put_lease(
        "default",
        lease("mixed-b", "mixed", "2030-01-01T00:00:01.000000Z"),
    );
    wait_for_ips_within(&mut watch, &[plain, leased], WATCH_DEADLINE).await?;
    // Renewed again within the lease: it stays.
    tokio::time::sleep(LEASE / 2).await;
    // Taken before the write: the resolver cannot see it earlier.
    let renewed_again = Instant::now();
    api.put_lease(
        "default",
        lease("mixed-b", "mixed", "2030-01-01T00:00:02.000000Z"),
    );
    assert!(renewed_again < renewed + LEASE);
    // Then nothing: it leaves a lease duration after the last renewal.
    wait_for_ips_within(&mut watch, &[plain], LEASE + LATE + WATCH_DEADLINE).await?;
    let left = timeline.left_after(leased, renewed).await;
    assert_left_at_deadline(left, renewed_again, "a Lease no longer renewed");
    // A renewal after the pause brings it back.
    api.put_lease(
        "default",
        lease("mixed-b", "mixed", "2030-01-01T00:00:09.000000Z"),
    );
    wait_for_ips_within(&mut watch, &[plain, leased], WATCH_DEADLINE).await?;
    // Deleted with its slice (deregistration): gone with the slice.
    api.remove("default", "mixed-b");
    api.remove_lease("default", "mixed-b");
    wait_for_ips_within(&mut watch, &[plain], WATCH_DEADLINE).await?;

    // The controller's endpoint was there throughout, across several lease
    // durations.
    timeline.assert_always(plain).await;
    assert!(first_sight.elapsed() > LEASE * 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_renewals_make_a_registration_leave_and_it_comes_back_once_allowed(
) -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let roles = manifest_roles()?;
    let both: Vec<(String, String)> = roles
        .get("registry-ext-resolver")
        .into_iter()
        .chain(roles.get("registry-ext-registry"))
        .flatten()
        .cloned()
        .collect();
    // Exactly the manifest's Roles: registration, renewals and the
    // resolver's Lease watch all work with them.
    grant(&api, &both);
    let registration = registry(api.client()?)
        .register(Instance::new("paused", "10.20.3.1:50051".parse()?))
        .await?;
    let name = slice_name(&api, "paused")?;
    let resolver = resolver(&api)?;
    let mut watch = resolver.subscribe("k8s://paused.default:grpc").await?;
    wait_for_ips_within(&mut watch, &["10.20.3.1:50051"], WATCH_DEADLINE).await?;
    lease_written(&api, &name, 2).await?;
    assert!(watch.current().last_error.is_none());
    let timeline = Timeline::start(&watch);

    // Renewals refused (the Role loses `update` on Leases): the
    // registration keeps retrying, the endpoint leaves once the lease runs
    // out.
    grant(
        &api,
        both.iter().filter(|(verb, resource)| {
            (verb.as_str(), resource.as_str()) != ("update", "leases.coordination.k8s.io")
        }),
    );
    wait_for_ips_within(&mut watch, &[], LEASE + LATE + WATCH_DEADLINE).await?;
    let renewed = *api.lease_writes("default", &name).last().expect("written");
    let left = timeline.left("10.20.3.1:50051").await;
    assert_left_at_deadline(left, renewed, "a registration whose renewals are refused");
    // Retried meanwhile, none stored.
    let stored = api.lease_writes("default", &name).len();
    tokio::time::sleep(LEASE / 2).await;
    assert_eq!(api.lease_writes("default", &name).len(), stored);

    // Allowed again: the next retry renews it and it is back, same holder.
    let holder_before = api.lease("default", &name).map(|l| holder(&l));
    grant(&api, &both);
    let allowed = Instant::now();
    wait_for_ips_within(&mut watch, &["10.20.3.1:50051"], LEASE + WATCH_DEADLINE).await?;
    println!(
        "back {:?} after renewals were allowed again",
        allowed.elapsed()
    );
    assert_eq!(
        api.lease("default", &name).map(|l| holder(&l)),
        holder_before
    );
    registration.deregister().await?;
    assert!(api.lease_names("default").is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_permissions_are_needed_and_named() -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let roles = manifest_roles()?;
    let resolver_role = &roles["registry-ext-resolver"];
    let registry_role = &roles["registry-ext-registry"];
    let is_lease = |(_, resource): &&(String, String)| resource == "leases.coordination.k8s.io";

    // A registry Role without the Lease rules: refused, naming the
    // permission, and the slice it applied first is removed again.
    grant(&api, registry_role.iter().filter(|rule| !is_lease(rule)));
    let error = registry(api.client()?)
        .register(Instance::new("perm", "10.20.4.1:50051".parse()?))
        .await
        .expect_err("no Lease permissions");
    match &error {
        rpc_ext_registry::Error::PermissionDenied { operation, .. } => assert_eq!(
            operation,
            "get leases.coordination.k8s.io in namespace \"default\""
        ),
        other => panic!("not a permission error: {other}"),
    }
    assert!(
        api.names("default").is_empty(),
        "{:?}",
        api.names("default")
    );
    assert!(api.lease_names("default").is_empty());

    // With it, registered; a resolver Role without the Lease rules still
    // serves the endpoint (nothing expires while Leases cannot be watched)
    // and reports which permission is missing.
    grant(&api, registry_role);
    let registration = registry(api.client()?)
        .register(Instance::new("perm", "10.20.4.1:50051".parse()?))
        .await?;
    grant(&api, resolver_role.iter().filter(|rule| !is_lease(rule)));
    let resolver = resolver(&api)?;
    let watch = resolver.subscribe("k8s://perm.default:grpc").await?;
    let error = eventually(RECOVERY_DEADLINE, "the Lease watch refused", || {
        let error = watch.current().last_error;
        async move { error }
    })
    .await?;
    match error.as_ref() {
        rpc_ext_registry::Error::PermissionDenied { operation, .. } => assert_eq!(
            operation,
            "list leases.coordination.k8s.io in namespace \"default\""
        ),
        other => panic!("not a permission error: {other}"),
    }
    let timeline = Timeline::start(&watch);
    tokio::time::sleep(LEASE * 2).await;
    timeline.assert_always("10.20.4.1:50051").await;
    grant(&api, registry_role.iter().chain(resolver_role));
    registration.deregister().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistration_removes_the_lease_and_a_deleted_lease_is_created_again(
) -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let registration = registry(api.client()?)
        .register(Instance::new("leaving", "10.20.5.1:50051".parse()?))
        .await?;
    let name = slice_name(&api, "leaving")?;
    let resolver = resolver(&api)?;
    let mut watch = resolver.subscribe("k8s://leaving.default:grpc").await?;
    wait_for_ips_within(&mut watch, &["10.20.5.1:50051"], WATCH_DEADLINE).await?;
    let timeline = Timeline::start(&watch);

    // Someone deletes the Lease: the registration creates it again at its
    // next renewal, and the endpoint never leaves meanwhile.
    let holder_before = api.lease("default", &name).map(|l| holder(&l));
    let uid_before = api
        .lease("default", &name)
        .map(|l| l["metadata"]["uid"].clone());
    api.remove_lease("default", &name);
    let lease = eventually(WATCH_DEADLINE, "the Lease created again", || {
        let lease = api.lease("default", &name);
        async move { lease }
    })
    .await?;
    assert_eq!(Some(holder(&lease)), holder_before);
    assert_ne!(Some(lease["metadata"]["uid"].clone()), uid_before);
    tokio::time::sleep(LEASE).await;
    timeline.assert_always("10.20.5.1:50051").await;

    // Deregistering deletes the slice and the Lease.
    registration.deregister().await?;
    assert!(api.names("default").is_empty());
    assert!(api.lease_names("default").is_empty());
    wait_for_ips_within(&mut watch, &[], WATCH_DEADLINE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_process_neither_renews_nor_deletes_its_successors_lease() -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let instance = Instance::new("handover", "10.20.6.1:50051".parse()?);
    // The old process (A) and its successor (B) register the same
    // instance: the same slice and Lease names. B takes both over.
    let a = registry(api.client()?).register(instance.clone()).await?;
    let name = slice_name(&api, "handover")?;
    let a_id = api
        .lease("default", &name)
        .map(|l| holder(&l))
        .expect("A's Lease");
    let b = registry(api.client()?).register(instance).await?;
    let lease = api.lease("default", &name).expect("B's Lease");
    let b_id = holder(&lease);
    assert_ne!(a_id, b_id);
    assert_eq!(
        api.get("default", &name).expect("the slice")["metadata"]["labels"][REGISTRATION_LABEL],
        b_id.as_str()
    );
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    // A keeps running for several of its renewal periods: it leaves B's
    // Lease alone (every version stored from now on is B's), and B renews
    // it.
    let stored_before = api.lease_versions("default", &name).len();
    tokio::time::sleep(LEASE * 2).await;
    let stored: Vec<Value> = api.lease_versions("default", &name)[stored_before..].to_vec();
    let holders: Vec<String> = stored.iter().map(holder).collect();
    assert!(
        holders.iter().all(|h| *h == b_id),
        "A wrote the Lease after B took it over: {holders:?} (B is {b_id})"
    );
    assert!(holders.len() >= 3, "{} renewals by B in 4 s", holders.len());

    // A leaves: B's slice and Lease stay, still B's.
    a.deregister().await?;
    assert_eq!(
        api.lease("default", &name).map(|l| holder(&l)),
        Some(b_id.clone())
    );
    assert!(api.get("default", &name).is_some());
    let resolver = resolver(&api)?;
    let resolved = resolver.resolve("k8s://handover.default:grpc").await?;
    assert_eq!(resolved.len(), 1);

    // B leaving deletes both.
    b.deregister().await?;
    assert!(api.names("default").is_empty());
    assert!(api.lease_names("default").is_empty());
    Ok(())
}
