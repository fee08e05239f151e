//! The Kubernetes backend against a real cluster when `KUBECONFIG` is set
//! (the registry round trip), else — and for every fault — against the
//! stand-in API server in `tests/src/k8s.rs`. What is Kubernetes' own is
//! here; what every backend must do is in `conformance`.

use std::{sync::Arc, time::Duration};

use rpc_ext_registry::{
    k8s::{K8sRegistry, K8sResolver},
    Error, Instance, Registry, Resolver, ServiceSnapshot, ServiceWatch,
};
use serde_json::{json, Value};
use tests::k8s::{self, K8sStandIn, Pod};

use crate::support::{wait_for_ips_within, RECOVERY_DEADLINE, WATCH_DEADLINE};

fn endpoint(ip: &str, ready: bool, terminating: bool) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": ready, "terminating": terminating},
           "zone": "zone-a", "nodeName": "node-1"})
}

/// A ready endpoint, which most tests need and no more.
fn ready(ip: &str) -> Value {
    endpoint(ip, true, false)
}

fn slice(name: &str, service: &str, endpoints: Vec<Value>) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}, {"name": "metrics", "port": 9464}],
    })
}

/// Stores slice `name` of `service` in `default`, with a ready endpoint at
/// each of `ips`.
fn put_ready(api: &K8sStandIn, name: &str, service: &str, ips: &[&str]) {
    let endpoints = ips.iter().map(|ip| ready(ip)).collect();
    api.put("default", slice(name, service, endpoints));
}

/// Stores Service `name` in `default` with `ports` (name, port, target
/// port), and returns it for [`put_pods`].
fn put_service(api: &K8sStandIn, name: &str, ports: &[(&str, u16, u16)]) -> Value {
    let service = k8s::service(name, ports);
    api.put_service("default", service.clone());
    service
}

/// Stores slice `name` of `service` in `default` as the endpointslice
/// controller writes it for `pods` (address and state).
fn put_pods(api: &K8sStandIn, name: &str, service: &Value, pods: &[(&str, Pod)]) {
    let endpoints = pods
        .iter()
        .map(|(ip, pod)| k8s::pod_endpoint(ip, *pod))
        .collect();
    api.put("default", k8s::slice_of(name, service, endpoints));
}

fn ips(instances: &[Arc<Instance>]) -> Vec<String> {
    instances.iter().map(|i| i.address.to_string()).collect()
}

/// Waits until the watch shows exactly `want`, as fast as a change should
/// arrive.
async fn wait_for_ips(watch: &mut ServiceWatch, want: &[&str]) -> anyhow::Result<()> {
    wait_for_ips_within(watch, want, WATCH_DEADLINE).await
}

/// Waits until `check` finds what it looks for in the watch's snapshot.
async fn until<T>(
    watch: &ServiceWatch,
    what: &str,
    deadline: Duration,
    check: impl Fn(ServiceSnapshot) -> Option<T>,
) -> anyhow::Result<T> {
    tests::eventually(deadline, what, || {
        let found = check(watch.current());
        async move { found }
    })
    .await
}

/// Waits until the resolver has processed another update (its generation
/// grows even when the set stays the same), so that a test can check that a
/// change did *not* alter the set.
async fn next_generation(watch: &ServiceWatch, after: u64) -> anyhow::Result<ServiceSnapshot> {
    until(watch, "the update processed", WATCH_DEADLINE, |snapshot| {
        (snapshot.generation > after).then_some(snapshot)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_endpoints_resolve_and_changes_are_pushed() -> anyhow::Result<()> {
    tests::init_test_logging();
    let api = K8sStandIn::start().await?;
    api.put(
        "default",
        slice(
            "echo-1",
            "echo",
            vec![
                ready("10.0.0.1"),
                endpoint("10.0.0.2", false, false),
                endpoint("10.0.0.3", true, true),
            ],
        ),
    );
    put_ready(&api, "other-1", "other", &["10.9.9.9"]);
    let resolver = K8sResolver::new(api.client()?);

    let resolved = resolver.resolve("k8s://echo.default:grpc").await?;
    assert_eq!(
        resolved.len(),
        1,
        "not-ready and terminating endpoints are left out"
    );
    assert_eq!(
        resolved[0].address.to_string(),
        "10.0.0.1:50051",
        "named port"
    );
    assert_eq!(resolved[0].tags.get("zone"), Some("zone-a"));
    assert_eq!(resolved[0].tags.get("node"), Some("node-1"));
    let metrics_port = resolver.resolve("k8s://echo.default:metrics").await?;
    assert_eq!(metrics_port[0].address.port(), 9464);

    let mut watch = resolver.subscribe("k8s://echo.default:grpc").await?;
    // Readiness flips and a second slice.
    put_ready(&api, "echo-1", "echo", &["10.0.0.1", "10.0.0.2"]);
    wait_for_ips(&mut watch, &["10.0.0.1:50051", "10.0.0.2:50051"]).await?;
    put_ready(&api, "echo-2", "echo", &["10.0.1.1"]);
    let all = ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.1.1:50051"];
    wait_for_ips(&mut watch, &all).await?;
    api.remove("default", "echo-1");
    wait_for_ips(&mut watch, &["10.0.1.1:50051"]).await?;
    assert!(resolver
        .resolve("k8s://nobody.default:grpc")
        .await?
        .is_empty());
    assert!(resolver.resolve("not a target").await.is_err());
    Ok(())
}

/// What a subscriber saw of one snapshot: addresses, generation, error.
type Seen = (Vec<String>, u64, bool);
type Recorded = Arc<std::sync::Mutex<Vec<Seen>>>;

/// Records every snapshot `watch` wakes its subscriber for, until aborted.
/// A `tokio::sync::watch` subscriber may skip values; the unit test
/// `k8s::resolver::relist_tests` checks every value the resolver holds.
fn record_snapshots(mut watch: ServiceWatch) -> (Recorded, tokio::task::JoinHandle<()>) {
    let seen = Recorded::default();
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok(snapshot) = watch.changed().await {
                let entry = (
                    ips(&snapshot.instances),
                    snapshot.generation,
                    snapshot.last_error.is_some(),
                );
                seen.lock().unwrap().push(entry);
            }
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_without_dropping_the_current_set() -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    put_ready(&api, "echo-1", "echo", &["10.0.0.1"]);
    let resolver = K8sResolver::new(api.client()?);
    let mut watch = resolver.subscribe("k8s://echo.default:grpc").await?;
    let before = watch.current();
    assert_eq!(ips(&before.instances), ["10.0.0.1:50051"]);
    let (seen, recorder) = record_snapshots(watch.clone());

    // History compacted and connections cut: the watcher's resume gets
    // 410 Gone and it must list again; a change happens meanwhile.
    let lists_before = api.list_requests();
    api.compact();
    api.expire_next_watch();
    api.drop_watches();
    put_ready(&api, "echo-1", "echo", &["10.0.0.1", "10.0.0.2"]);
    let both = ["10.0.0.1:50051", "10.0.0.2:50051"];
    wait_for_ips_within(&mut watch, &both, RECOVERY_DEADLINE).await?;
    // And updates keep flowing after the re-list.
    put_ready(&api, "echo-1", "echo", &["10.0.0.2"]);
    wait_for_ips(&mut watch, &["10.0.0.2:50051"]).await?;
    let after = until(&watch, "the error cleared", WATCH_DEADLINE, |s| {
        s.last_error.is_none().then_some(s)
    })
    .await?;
    recorder.abort();
    assert_eq!(
        api.list_requests(),
        lists_before + 1,
        "one new list after 410"
    );
    assert_eq!(ips(&after.instances), ["10.0.0.2:50051"]);
    assert!(after.generation > before.generation);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|(set, _, _)| !set.is_empty()),
        "the set went empty during the re-list: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|pair| pair[0].1 <= pair[1].1),
        "the generation went back: {seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_manages_its_own_slice() -> anyhow::Result<()> {
    // A real cluster when KUBECONFIG is set (namespace `default`), else the stand-in.
    let (stand_in, client) = match std::env::var("KUBECONFIG") {
        Ok(path) if !path.is_empty() => (None, kube::Client::try_default().await?),
        _ => {
            let api = K8sStandIn::start().await?;
            let client = api.client()?;
            (Some(api), client)
        }
    };
    let service = format!("rx-{}", std::process::id());
    let registry = K8sRegistry::new(client.clone())
        .namespace("default")
        .port_name("grpc")
        .recheck_interval(Duration::from_millis(200));
    let resolver = K8sResolver::new(client);
    let registration = registry
        .register(Instance::new(service.as_str(), "10.1.2.3:50051".parse()?).with_tag("zone", "z1"))
        .await?;
    let target = format!("k8s://{service}.default:grpc");
    let mut watch = resolver.subscribe(&target).await?;
    wait_for_ips(&mut watch, &["10.1.2.3:50051"]).await?;
    assert_eq!(watch.current().instances[0].tags.get("zone"), Some("z1"));

    if let Some(api) = &stand_in {
        let names = api.names("default");
        assert_eq!(names.len(), 1, "{names:?}");
        let name = names[0].clone();
        assert!(
            name.starts_with(&format!("{service}-10-1-2-3-50051-")),
            "{name}"
        );
        let stored = api.get("default", &name).expect("slice stored");
        assert_eq!(
            stored["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "registry-ext"
        );
        // Someone deletes it: the registration puts it back.
        api.remove("default", &name);
        wait_for_ips(&mut watch, &[]).await?;
        wait_for_ips_within(&mut watch, &["10.1.2.3:50051"], RECOVERY_DEADLINE).await?;
    }
    registration.deregister().await?;
    wait_for_ips(&mut watch, &[]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_process_leaving_does_not_delete_its_successors_slice() -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let registry = |client| {
        K8sRegistry::new(client)
            .namespace("default")
            .port_name("grpc")
    };
    // The old process (A) and its successor (B) register the same instance,
    // so the same slice name; B's apply takes the slice over.
    let old = registry(api.client()?);
    let successor = registry(api.client()?);
    let instance = Instance::new("handover", "10.1.2.4:50051".parse()?);
    let a = old.register(instance.clone()).await?;
    let b = successor.register(instance).await?;
    let names = api.names("default");
    assert_eq!(names.len(), 1, "{names:?}");
    let label = |api: &K8sStandIn| {
        api.get("default", &names[0])
            .map(|s| s["metadata"]["labels"]["registry-ext/registration"].clone())
    };
    let owner = label(&api).expect("slice stored");
    assert!(owner.as_str().is_some_and(|id| id.len() == 32), "{owner}");

    // A leaves after B started: B's slice stays, still B's.
    a.deregister().await?;
    assert_eq!(label(&api), Some(owner));
    let resolver = K8sResolver::new(api.client()?);
    let resolved = resolver.resolve("k8s://handover.default:grpc").await?;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].address, "10.1.2.4:50051".parse()?);

    // B leaving deletes it.
    b.deregister().await?;
    assert!(api.names("default").is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------
// Endpoint conditions (issue 20, item 5): what the endpointslice controller
// writes during a rollout, and endpoints that appear in two slices.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_replica_rollout_keeps_the_draining_endpoint_until_its_successor_is_ready(
) -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let svc = put_service(&api, "roll", &[("grpc", 50051, 50051)]);
    let old = "10.2.0.1";
    let new = "10.2.0.2";
    put_pods(&api, "roll-a", &svc, &[(old, Pod::Ready)]);
    let resolver = K8sResolver::new(api.client()?);
    let mut watch = resolver.subscribe("k8s://roll.default:grpc").await?;
    wait_for_ips(&mut watch, &["10.2.0.1:50051"]).await?;

    // The rollout deletes the only pod while its replacement starts: the old
    // one drains (serving, terminating, so not ready), the new one is not
    // ready yet. kube-proxy keeps sending to the draining pod; so must we.
    let before = watch.current().generation;
    let draining = (old, Pod::TerminatingServing);
    put_pods(&api, "roll-a", &svc, &[draining, (new, Pod::NotReady)]);
    assert_eq!(
        ips(&next_generation(&watch, before).await?.instances),
        ["10.2.0.1:50051"],
        "with no ready endpoint, the serving terminating one is used"
    );
    // The replacement becomes ready: it alone is used from now on.
    put_pods(&api, "roll-a", &svc, &[draining, (new, Pod::Ready)]);
    wait_for_ips(&mut watch, &["10.2.0.2:50051"]).await?;

    // Readiness is judged across all slices of the service: a ready endpoint
    // in another slice rules out the draining ones.
    put_pods(&api, "roll-a", &svc, &[draining]);
    put_pods(&api, "roll-b", &svc, &[(new, Pod::Ready)]);
    wait_for_ips(&mut watch, &["10.2.0.2:50051"]).await?;
    // Terminating and no longer serving: never used, even as a fallback.
    put_pods(&api, "roll-b", &svc, &[(new, Pod::TerminatingNotServing)]);
    wait_for_ips(&mut watch, &["10.2.0.1:50051"]).await?;
    put_pods(&api, "roll-a", &svc, &[(old, Pod::TerminatingNotServing)]);
    wait_for_ips(&mut watch, &[]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_listed_in_two_slices_resolves_once() -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let svc = k8s::service("dup", &[("grpc", 50051, 50051)]);
    // The controller moving an endpoint between slices may show it in both
    // for a while.
    let (moving, staying) = (("10.3.0.1", Pod::Ready), ("10.3.0.2", Pod::Ready));
    put_pods(&api, "dup-a", &svc, &[moving, staying]);
    put_pods(&api, "dup-b", &svc, &[moving]);
    let resolver = K8sResolver::new(api.client()?);
    let resolved = resolver.resolve("k8s://dup.default:grpc").await?;
    assert_eq!(ips(&resolved), ["10.3.0.1:50051", "10.3.0.2:50051"]);

    // Removing it from one slice keeps it; from both removes it.
    let mut watch = resolver.subscribe("k8s://dup.default:grpc").await?;
    let before = watch.current().generation;
    put_pods(&api, "dup-a", &svc, &[staying]);
    assert_eq!(
        ips(&next_generation(&watch, before).await?.instances),
        ["10.3.0.1:50051", "10.3.0.2:50051"]
    );
    api.remove("default", "dup-b");
    wait_for_ips(&mut watch, &["10.3.0.2:50051"]).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Ports (item 6): slices carry the Service port's name and the target port's
// number, never the Service port's number.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numeric_target_names_the_service_port_and_resolves_to_the_target_port(
) -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let web = put_service(&api, "web", &[("http", 80, 8080), ("metrics", 9090, 9464)]);
    put_pods(&api, "web-a", &web, &[("10.4.0.1", Pod::Ready)]);
    // A single-port Service may leave its port unnamed: the slice port's
    // name is then "".
    let single = put_service(&api, "single", &[("", 80, 8081)]);
    put_pods(&api, "single-a", &single, &[("10.4.0.2", Pod::Ready)]);
    let resolver = K8sResolver::new(api.client()?);

    for (target, want, why) in [
        (
            "k8s://web.default:80",
            "10.4.0.1:8080",
            "Service port 80 is target port 8080",
        ),
        (
            "k8s://web.default:9090",
            "10.4.0.1:9464",
            "Service port 9090",
        ),
        (
            "k8s://web.default:http",
            "10.4.0.1:8080",
            "a port name needs no Service lookup",
        ),
        (
            "k8s://single.default:80",
            "10.4.0.2:8081",
            "an unnamed port",
        ),
    ] {
        assert_eq!(
            ips(&resolver.resolve(target).await?),
            [want],
            "{target}: {why}"
        );
    }

    // 8080 is a target port, not a port of the Service: an error that says
    // so, rather than connecting to whatever listens there.
    let error = resolver
        .resolve("k8s://web.default:8080")
        .await
        .expect_err("8080 is not a Service port");
    assert!(error.to_string().contains("no port 8080"), "{error}");
    let error = resolver
        .resolve("k8s://absent.default:80")
        .await
        .expect_err("no such Service");
    assert!(error.to_string().contains("not found"), "{error}");
    Ok(())
}

// ---------------------------------------------------------------------------
// RBAC and validation (item 8).

/// The `(verb, resource)` rules of each Role in the manifest users apply,
/// by Role name, so that the tests grant exactly what the manifest grants.
pub(crate) fn manifest_roles(
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<(String, String)>>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/rbac.yaml"
    );
    let text = std::fs::read_to_string(path)?;
    let list = |line: &str| -> Vec<String> {
        line.split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(items, _)| {
                items
                    .split(',')
                    .map(|item| item.trim().trim_matches('"').to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut roles = std::collections::BTreeMap::new();
    for document in text.split("\n---") {
        if !document.lines().any(|line| line == "kind: Role") {
            continue;
        }
        let name = document
            .lines()
            .find_map(|line| line.trim().strip_prefix("name: "))
            .ok_or_else(|| anyhow::anyhow!("a Role without a name"))?
            .to_owned();
        // Rules are written `- apiGroups: [...]`, `resources: [...]`,
        // `verbs: [...]`, one list per line.
        let (mut groups, mut resources) = (Vec::new(), Vec::new());
        let mut rules = Vec::new();
        for line in document.lines().map(str::trim) {
            if line.starts_with("- apiGroups:") {
                groups = list(line);
            } else if line.starts_with("resources:") {
                resources = list(line);
            } else if line.starts_with("verbs:") {
                for group in &groups {
                    for resource in &resources {
                        let qualified = if group.is_empty() {
                            resource.clone()
                        } else {
                            format!("{resource}.{group}")
                        };
                        for verb in list(line) {
                            rules.push((verb, qualified.clone()));
                        }
                    }
                }
            }
        }
        roles.insert(name, rules);
    }
    Ok(roles)
}

/// Lets the stand-in allow exactly `rules` (verb, resource).
pub(crate) fn grant<'a>(api: &K8sStandIn, rules: impl IntoIterator<Item = &'a (String, String)>) {
    let rules: Vec<(&str, &str)> = rules
        .into_iter()
        .map(|(verb, resource)| (verb.as_str(), resource.as_str()))
        .collect();
    api.allow_only(&rules);
}

/// The operation of a `PermissionDenied` from the k8s backend, also inside
/// the `Resolve` error of a first list.
fn denied(error: &Error) -> Option<&str> {
    match error {
        Error::Resolve { source, .. } => denied(source),
        Error::PermissionDenied {
            backend: "k8s",
            operation,
            ..
        } => Some(operation),
        _ => None,
    }
}

/// [`denied`] for an error that must be a permission error.
fn denied_operation(error: &Error) -> &str {
    denied(error).unwrap_or_else(|| panic!("not a permission error: {error}"))
}

/// Registers `instance`, which the granted rules must refuse for lack of
/// permission to `verb` EndpointSlices.
async fn assert_registration_refused(registry: &K8sRegistry, instance: &Instance, verb: &str) {
    let Err(error) = registry.register(instance.clone()).await else {
        panic!("{verb} was not refused");
    };
    let operation = denied_operation(&error);
    assert!(
        operation.starts_with(&format!("{verb} endpointslices.discovery.k8s.io")),
        "{operation}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_rbac_permission_is_a_typed_error_naming_it() -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    let svc = put_service(&api, "guarded", &[("grpc", 80, 50051)]);
    put_pods(&api, "guarded-a", &svc, &[("10.5.0.1", Pod::Ready)]);
    let roles = manifest_roles()?;
    let resolver_role = roles
        .get("registry-ext-resolver")
        .ok_or_else(|| anyhow::anyhow!("deploy/kubernetes/rbac.yaml: no resolver Role"))?;
    let registry_role = roles
        .get("registry-ext-registry")
        .ok_or_else(|| anyhow::anyhow!("deploy/kubernetes/rbac.yaml: no registry Role"))?;
    let instance = Instance::new("guarded", "10.5.0.9:50051".parse()?);

    // Nothing granted: the first list is refused, and the error says which
    // permission is missing.
    api.allow_only(&[]);
    let resolver = K8sResolver::new(api.client()?);
    let error = resolver
        .resolve("k8s://guarded.default:grpc")
        .await
        .expect_err("forbidden");
    assert_eq!(
        denied_operation(&error),
        "list endpointslices.discovery.k8s.io in namespace \"default\""
    );
    assert!(
        error.to_string().contains("deploy/kubernetes/rbac.yaml"),
        "{error}"
    );

    // list but not watch: the list works, the watch is refused and reported.
    api.allow_only(&[("list", "endpointslices.discovery.k8s.io")]);
    let resolver = K8sResolver::new(api.client()?);
    let watch = resolver.subscribe("k8s://guarded.default:grpc").await?;
    let error = until(&watch, "the watch refused", RECOVERY_DEADLINE, |s| {
        s.last_error
    })
    .await?;
    assert_eq!(
        denied(&error),
        Some("watch endpointslices.discovery.k8s.io in namespace \"default\""),
        "{error}"
    );

    // The manifest's resolver Role: named and numeric targets resolve; the
    // registry, which it does not cover, is refused.
    grant(&api, resolver_role);
    let resolver = K8sResolver::new(api.client()?);
    assert_eq!(
        resolver.resolve("k8s://guarded.default:grpc").await?.len(),
        1
    );
    assert_eq!(
        resolver.resolve("k8s://guarded.default:80").await?[0]
            .address
            .port(),
        50051
    );
    let registry = K8sRegistry::new(api.client()?).namespace("default");
    assert_registration_refused(&registry, &instance, "patch").await;

    // Without `get services`, a numeric target cannot be mapped.
    grant(
        &api,
        resolver_role
            .iter()
            .filter(|(_, resource)| resource != "services"),
    );
    let error = K8sResolver::new(api.client()?)
        .resolve("k8s://guarded.default:80")
        .await
        .expect_err("get services refused");
    assert_eq!(
        denied(&error),
        Some("get services in namespace \"default\""),
        "{error}"
    );

    // Applying a slice that does not exist yet is a create as well as a patch.
    grant(
        &api,
        registry_role.iter().filter(|(verb, _)| verb != "create"),
    );
    assert_registration_refused(&registry, &instance, "create").await;

    // The manifest's registry Role: register, recheck and deregister work.
    grant(&api, registry_role);
    let registration = K8sRegistry::new(api.client()?)
        .namespace("default")
        .recheck_interval(Duration::from_millis(100))
        .register(instance)
        .await?;
    assert_eq!(api.names("default").len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    registration.deregister().await?;
    assert_eq!(api.names("default"), ["guarded-a"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_relabelled_away_from_the_service_leaves_its_watch() -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    put_ready(&api, "echo-1", "echo", &["10.6.0.1"]);
    put_ready(&api, "echo-2", "echo", &["10.6.0.2"]);
    let resolver = K8sResolver::new(api.client()?);
    let mut watch = resolver.subscribe("k8s://echo.default:grpc").await?;
    wait_for_ips(&mut watch, &["10.6.0.1:50051", "10.6.0.2:50051"]).await?;
    // echo-2 now belongs to another service: the API server's watch sends
    // DELETED to watchers whose selector it no longer matches...
    put_ready(&api, "echo-2", "other", &["10.6.0.2"]);
    wait_for_ips(&mut watch, &["10.6.0.1:50051"]).await?;
    // ...and ADDED when it matches again.
    put_ready(&api, "echo-2", "echo", &["10.6.0.3"]);
    wait_for_ips(&mut watch, &["10.6.0.1:50051", "10.6.0.3:50051"]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_bad_names_and_apply_without_a_field_manager() -> anyhow::Result<()>
{
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Patch, PatchParams};

    let api = K8sStandIn::start().await?;
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(api.client()?, "default");
    let status_code = |result: Result<EndpointSlice, kube::Error>| match result {
        Err(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    };
    let named = |name: &str| -> anyhow::Result<EndpointSlice> {
        Ok(serde_json::from_value(slice(
            name,
            "echo",
            vec![ready("10.7.0.1")],
        ))?)
    };
    let params = PatchParams::apply("test");
    for bad in ["Echo-1", "echo_1", "-echo", &"a".repeat(254)] {
        let result = slices.patch(bad, &params, &Patch::Apply(named(bad)?)).await;
        assert_eq!(status_code(result), Some(422), "{bad:?} accepted");
    }
    let longest = "a".repeat(253);
    slices
        .patch(&longest, &params, &Patch::Apply(named(&longest)?))
        .await?;
    let result = slices
        .patch(
            "echo-1",
            &PatchParams::default(),
            &Patch::Apply(named("echo-1")?),
        )
        .await;
    assert_eq!(status_code(result), Some(422), "apply without fieldManager");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_name_kubernetes_cannot_hold_is_refused_before_any_request() -> anyhow::Result<()>
{
    let api = K8sStandIn::start().await?;
    let registry = K8sRegistry::new(api.client()?).namespace("default");
    // Too long for a label value (the API server answers 422), and names a
    // `k8s://` target cannot reach (Service names are lowercase DNS labels).
    for service in [&"s".repeat(64), "Echo", "echo.v1", "1echo"] {
        let result = registry
            .register(Instance::new(service, "10.8.0.1:50051".parse()?))
            .await;
        match result {
            Err(Error::InvalidInstance(why)) => assert!(why.contains("Service name"), "{why}"),
            Err(other) => panic!("{service:?}: not refused up front: {other}"),
            Ok(_) => panic!("{service:?}: registered"),
        }
    }
    assert!(api.names("default").is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------
// Packaging (item 7).

/// k8s-openapi's build script panics when two of its version features are
/// on, so a library enabling one breaks every binary that picks its own: no
/// published crate of the workspace may select a version in its normal
/// dependencies (dev-dependencies are fine: tests are final builds).
#[test]
fn no_published_crate_selects_a_kubernetes_api_version() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout)?;
    let mut checked = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        // `publish = false` gives `[]`: binaries and test crates, which may pick.
        if package["publish"].as_array().is_some_and(Vec::is_empty) {
            continue;
        }
        for dependency in package["dependencies"].as_array().into_iter().flatten() {
            if dependency["name"] != "k8s-openapi" || !dependency["kind"].is_null() {
                continue;
            }
            let versions: Vec<&str> = dependency["features"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|f| matches!(*f, "latest" | "earliest") || f.starts_with("v1_"))
                .collect();
            assert!(
                versions.is_empty(),
                "{} selects k8s-openapi's {versions:?}: leave the version to the binary",
                package["name"]
            );
            checked.push(package["name"].clone());
        }
    }
    assert!(
        checked.iter().any(|name| name == "rpc-ext-registry"),
        "rpc-ext-registry's k8s-openapi dependency was not found: {checked:?}"
    );
    Ok(())
}
