//! The Kubernetes backend against a real cluster when `KUBECONFIG` is set
//! (the registry round trip), else — and for every fault — against the
//! stand-in API server in `tests/src/k8s.rs`.

use std::time::Duration;

use harness::k8s::K8sStandIn;
use rpc_ext_registry::{
    k8s::{K8sRegistry, K8sResolver},
    Instance, Registry, Resolver, ServiceSnapshot,
};
use serde_json::{json, Value};

use crate::support::{RECOVERY_DEADLINE, WATCH_DEADLINE};

fn endpoint(ip: &str, ready: bool, terminating: bool) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": ready, "terminating": terminating},
           "zone": "zone-a", "nodeName": "node-1"})
}

fn slice(name: &str, service: &str, endpoints: Vec<Value>) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}, {"name": "metrics", "port": 9464}],
    })
}

fn ips(snapshot: &ServiceSnapshot) -> Vec<String> {
    snapshot
        .instances
        .iter()
        .map(|i| i.address.to_string())
        .collect()
}

async fn wait_for_ips(
    watch: &mut rpc_ext_registry::ServiceWatch,
    want: &[&str],
    deadline: Duration,
) -> anyhow::Result<()> {
    let want: Vec<std::net::SocketAddr> =
        want.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    crate::support::wait_for_addresses(watch, &want, deadline).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_endpoints_resolve_and_changes_are_pushed() -> anyhow::Result<()> {
    harness::init_test_logging();
    let api = K8sStandIn::start().await?;
    api.put(
        "default",
        slice(
            "echo-1",
            "echo",
            vec![
                endpoint("10.0.0.1", true, false),
                endpoint("10.0.0.2", false, false),
                endpoint("10.0.0.3", true, true),
            ],
        ),
    );
    api.put(
        "default",
        slice("other-1", "other", vec![endpoint("10.9.9.9", true, false)]),
    );
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
    assert_eq!(resolved[0].tags["zone"], "zone-a");
    assert_eq!(resolved[0].tags["node"], "node-1");
    let metrics_port = resolver.resolve("k8s://echo.default:metrics").await?;
    assert_eq!(metrics_port[0].address.port(), 9464);

    let mut watch = resolver.subscribe("k8s://echo.default:grpc").await?;
    // Readiness flips and a second slice.
    api.put(
        "default",
        slice(
            "echo-1",
            "echo",
            vec![
                endpoint("10.0.0.1", true, false),
                endpoint("10.0.0.2", true, false),
            ],
        ),
    );
    wait_for_ips(
        &mut watch,
        &["10.0.0.1:50051", "10.0.0.2:50051"],
        WATCH_DEADLINE,
    )
    .await?;
    api.put(
        "default",
        slice("echo-2", "echo", vec![endpoint("10.0.1.1", true, false)]),
    );
    wait_for_ips(
        &mut watch,
        &["10.0.0.1:50051", "10.0.0.2:50051", "10.0.1.1:50051"],
        WATCH_DEADLINE,
    )
    .await?;
    api.remove("default", "echo-1");
    wait_for_ips(&mut watch, &["10.0.1.1:50051"], WATCH_DEADLINE).await?;
    assert!(resolver
        .resolve("k8s://nobody.default:grpc")
        .await?
        .is_empty());
    assert!(resolver.resolve("not a target").await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_without_dropping_the_current_set() -> anyhow::Result<()> {
    let api = K8sStandIn::start().await?;
    api.put(
        "default",
        slice("echo-1", "echo", vec![endpoint("10.0.0.1", true, false)]),
    );
    let resolver = K8sResolver::new(api.client()?);
    let mut watch = resolver.subscribe("k8s://echo.default:grpc").await?;

    // Record every snapshot the resolver publishes from here on.
    let mut observer = watch.clone();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(snapshot) = observer.changed().await {
                seen.lock().unwrap().push(ips(&snapshot));
            }
        })
    };

    // History compacted and connections cut: the watcher's resume gets
    // 410 Gone and it must list again; a change happens meanwhile.
    let lists_before = api.list_requests();
    api.compact();
    api.expire_next_watch();
    api.drop_watches();
    api.put(
        "default",
        slice(
            "echo-1",
            "echo",
            vec![
                endpoint("10.0.0.1", true, false),
                endpoint("10.0.0.2", true, false),
            ],
        ),
    );
    wait_for_ips(
        &mut watch,
        &["10.0.0.1:50051", "10.0.0.2:50051"],
        RECOVERY_DEADLINE,
    )
    .await?;
    // And updates keep flowing after the re-list.
    api.put(
        "default",
        slice("echo-1", "echo", vec![endpoint("10.0.0.2", true, false)]),
    );
    wait_for_ips(&mut watch, &["10.0.0.2:50051"], WATCH_DEADLINE).await?;
    recorder.abort();
    assert!(
        api.list_requests() > lists_before,
        "the watcher did not list again after 410"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|set| !set.is_empty()),
        "the set went empty during the re-list: {seen:?}"
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
        .register(Instance::new(&service, "10.1.2.3:50051".parse()?).with_tag("zone", "z1"))
        .await?;
    let target = format!("k8s://{service}.default:grpc");
    let mut watch = resolver.subscribe(&target).await?;
    wait_for_ips(&mut watch, &["10.1.2.3:50051"], WATCH_DEADLINE).await?;
    assert_eq!(watch.current().instances[0].tags["zone"], "z1");

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
        wait_for_ips(&mut watch, &[], WATCH_DEADLINE).await?;
        wait_for_ips(&mut watch, &["10.1.2.3:50051"], RECOVERY_DEADLINE).await?;
    }
    registration.deregister().await?;
    wait_for_ips(&mut watch, &[], WATCH_DEADLINE).await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_is_cleared_once_the_watch_recovers() -> anyhow::Result<()> {
    harness::init_test_logging();
    let api = K8sStandIn::start().await?;
    api.put(
        "default",
        slice("echo-1", "echo", vec![endpoint("10.0.0.1", true, false)]),
    );
    let resolver = K8sResolver::new(api.client()?);
    let mut watch = resolver.subscribe("k8s://echo.default:grpc").await?;
    wait_for_ips(&mut watch, &["10.0.0.1:50051"], WATCH_DEADLINE).await?;

    // The API server goes away for a while: the watch connection drops and
    // reconnecting fails, so an error is published and the set is kept.
    api.set_unavailable(true);
    api.drop_watches();
    harness::eventually(RECOVERY_DEADLINE, "an error published", || {
        let snapshot = watch.current();
        async move { snapshot.last_error.is_some().then_some(()) }
    })
    .await?;
    assert_eq!(ips(&watch.current()), ["10.0.0.1:50051"]);

    // It comes back and nothing changed: the error must not stay.
    api.set_unavailable(false);
    harness::eventually(RECOVERY_DEADLINE, "the error cleared", || {
        let snapshot = watch.current();
        async move { snapshot.last_error.is_none().then_some(()) }
    })
    .await?;
    assert_eq!(ips(&watch.current()), ["10.0.0.1:50051"]);
    // And changes flow again.
    api.put(
        "default",
        slice("echo-1", "echo", vec![endpoint("10.0.0.2", true, false)]),
    );
    wait_for_ips(&mut watch, &["10.0.0.2:50051"], WATCH_DEADLINE).await?;
    Ok(())
}
