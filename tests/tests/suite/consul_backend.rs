//! The Consul backend against a real Consul agent when `CONSUL_HTTP_ADDR` is
//! set, else against the stand-in in `tests/src/consul.rs`; fault modes
//! (500s, garbage, agent restarts, slow answers) always use the stand-in.

use std::time::Duration;

use harness::consul::ConsulStandIn;
use rpc_ext_registry::{
    consul::{Check, ConsulRegistry, ConsulResolver},
    Instance, Registry, Resolver,
};

use crate::support::{addr, wait_for_ports, RECOVERY_DEADLINE, WATCH_DEADLINE};

/// A real agent (`CONSUL_HTTP_ADDR`) or the stand-in.
enum Agent {
    Real(String),
    StandIn(ConsulStandIn),
}

impl Agent {
    async fn any() -> anyhow::Result<Self> {
        Ok(match std::env::var("CONSUL_HTTP_ADDR") {
            Ok(address) if !address.is_empty() => Agent::Real(address),
            _ => Agent::StandIn(ConsulStandIn::start().await?),
        })
    }

    fn address(&self) -> String {
        match self {
            Agent::Real(address) => address.clone(),
            Agent::StandIn(stand_in) => stand_in.address(),
        }
    }
}

/// A service name of its own, so tests can share a real agent.
fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(std::time::SystemTime::now()) % 1_000_000) as u32
}

fn pair(address: &str) -> anyhow::Result<(ConsulRegistry, ConsulResolver)> {
    harness::init_test_logging();
    let registry = ConsulRegistry::builder()
        .address(address)
        .check(Check::Ttl {
            ttl: Duration::from_secs(2),
        })
        .max_backoff(Duration::from_millis(500))
        .build()?;
    let resolver = ConsulResolver::builder()
        .address(address)
        .wait(Duration::from_secs(5))
        .max_backoff(Duration::from_millis(500))
        .build()?;
    Ok((registry, resolver))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_instances_resolve_stay_passing_and_leave_on_drop() -> anyhow::Result<()> {
    let agent = Agent::any().await?;
    let (registry, resolver) = pair(&agent.address())?;
    let service = unique("echo");

    let first = registry
        .register(
            Instance::new(&service, addr(7701))
                .with_weight(5)
                .with_tag("zone", "a"),
        )
        .await?;
    let resolved = resolver.resolve(&service).await?;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].address, addr(7701));
    assert_eq!(resolved[0].weight, 5);
    assert_eq!(resolved[0].tags["zone"], "a");

    // Longer than the TTL: the background task keeps the check passing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut watch = resolver.subscribe(&service).await?;
    wait_for_ports(&mut watch, &[7701], WATCH_DEADLINE).await?;

    // A blocking query returns as soon as the set changes.
    let second = registry
        .register(Instance::new(&service, addr(7702)))
        .await?;
    wait_for_ports(&mut watch, &[7701, 7702], WATCH_DEADLINE).await?;
    drop(first);
    wait_for_ports(&mut watch, &[7702], WATCH_DEADLINE).await?;
    second.deregister().await?;
    wait_for_ports(&mut watch, &[], WATCH_DEADLINE).await?;
    assert!(resolver.resolve("nobody-registered-this").await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filter_selects_instances() -> anyhow::Result<()> {
    let agent = Agent::any().await?;
    let (registry, _) = pair(&agent.address())?;
    let service = unique("tagged");
    let _a = registry
        .register(Instance::new(&service, addr(7711)).with_tag("zone", "a"))
        .await?;
    let _b = registry
        .register(Instance::new(&service, addr(7712)).with_tag("zone", "b"))
        .await?;
    let zone_b = ConsulResolver::builder()
        .address(agent.address())
        .tags(["zone=b"])
        .build()?;
    let resolved = zone_b.resolve(&service).await?;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].address, addr(7712));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_is_survived_without_user_action() -> anyhow::Result<()> {
    let stand_in = ConsulStandIn::start().await?;
    let (registry, resolver) = pair(&stand_in.address())?;
    let _registration = registry.register(Instance::new("echo", addr(7721))).await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[7721], WATCH_DEADLINE).await?;

    // The agent forgets everything and its index goes backwards. Whether
    // the resolver sees the empty moment depends on who is faster, the
    // registry re-registering or the resolver's next query; what must hold
    // is that the registration comes back by itself and that the resolver,
    // its index reset, follows changes made after the restart. (A query
    // blocked on the old index may first run out its 5 s wait, as against a
    // real agent, so the deadline is the recovery one.)
    stand_in.restart();
    harness::eventually(RECOVERY_DEADLINE, "re-registration", || {
        let ids = stand_in.service_ids();
        async move { (ids == ["echo-127.0.0.1-7721"]).then_some(()) }
    })
    .await?;
    let _second = registry.register(Instance::new("echo", addr(7722))).await?;
    wait_for_ports(&mut watch, &[7721, 7722], RECOVERY_DEADLINE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_garbage_keep_the_last_known_instances() -> anyhow::Result<()> {
    let stand_in = ConsulStandIn::start().await?;
    let (registry, _) = pair(&stand_in.address())?;
    let resolver = ConsulResolver::builder()
        .address(stand_in.address())
        .wait(Duration::from_millis(200))
        .max_backoff(Duration::from_millis(300))
        .build()?;
    let _registration = registry.register(Instance::new("echo", addr(7731))).await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[7731], WATCH_DEADLINE).await?;

    for inject in [
        (|s: &ConsulStandIn| s.fail_next(4)) as fn(&ConsulStandIn),
        |s: &ConsulStandIn| s.garbage_next(3),
    ] {
        inject(&stand_in);
        let snapshot = harness::eventually(WATCH_DEADLINE, "an error report", || {
            let snapshot = watch.current();
            async move { snapshot.last_error.is_some().then_some(snapshot) }
        })
        .await?;
        assert_eq!(snapshot.instances.len(), 1, "the last known set is kept");
        // It recovers by itself once the agent answers properly again.
        harness::eventually(RECOVERY_DEADLINE, "recovery", || {
            let snapshot = watch.current();
            async move { snapshot.last_error.is_none().then_some(()) }
        })
        .await?;
    }
    assert_eq!(watch.current().instances.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agent_still_serves() -> anyhow::Result<()> {
    let stand_in = ConsulStandIn::start().await?;
    stand_in.set_delay(Duration::from_millis(300));
    let (registry, resolver) = pair(&stand_in.address())?;
    let _registration = registry.register(Instance::new("echo", addr(7741))).await?;
    assert_eq!(resolver.resolve("echo").await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_follows_consul() -> anyhow::Result<()> {
    use echo::{servers::serve_tonic, tonic_gen};

    let agent = Agent::any().await?;
    let (registry, resolver) = pair(&agent.address())?;
    let service = unique("echo-tonic");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;
    let tracing = rpc_ext_tracing::RpcTracing::builder().build();
    let server =
        tokio::spawn(async move { serve_tonic(listener, &tracing, std::future::pending()).await });
    let _registration = registry
        .register(Instance::new(&service, server_addr))
        .await?;
    let channel = rpc_ext_registry::tower::balanced_channel(&resolver, &service).await?;
    let reply = harness::eventually(WATCH_DEADLINE, "a call through Consul discovery", || {
        let mut client = tonic_gen::echo_client::EchoClient::new(channel.clone());
        async move {
            client
                .say(tonic_gen::SayRequest {
                    message: "hi".into(),
                })
                .await
                .ok()
        }
    })
    .await?;
    assert_eq!(reply.into_inner().served_by, server_addr.to_string());
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_agent_that_lost_the_check_gets_the_registration_back() -> anyhow::Result<()> {
    // Older agents (ACLs off) answer a TTL pass for a check they lost with
    // HTTP 500 `CheckID "…" does not have associated TTL`, not 404.
    let stand_in = ConsulStandIn::start().await?;
    stand_in.answer_unknown_checks_the_old_way(true);
    let (registry, resolver) = pair(&stand_in.address())?;
    let _registration = registry.register(Instance::new("echo", addr(8001))).await?;
    assert_eq!(resolver.resolve("echo").await?.len(), 1);

    stand_in.restart();
    assert!(stand_in.service_ids().is_empty());
    harness::eventually(RECOVERY_DEADLINE, "re-registration", || {
        let ids = stand_in.service_ids();
        async move { (ids == ["echo-127.0.0.1-8001"]).then_some(()) }
    })
    .await?;
    // Longer than the TTL: the passes reach the restored check again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fresh = ConsulResolver::builder()
        .address(stand_in.address())
        .build()?;
    let resolved = fresh.resolve("echo").await?;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].address, addr(8001));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_url_delimiters_register_resolve_and_deregister() -> anyhow::Result<()> {
    let agent = Agent::any().await?;
    let (registry, resolver) = pair(&agent.address())?;
    // `?` and `#` would start a query or a fragment if they were not
    // percent-encoded; the ID (`<name>-<ip>-<port>`) keeps them too.
    // Instances cannot be named with a `/` (`Instance::validate`), but a
    // resolver may be asked for one: it must query that very name.
    let service = format!("{}?c#d", unique("a"));
    let registration = registry
        .register(Instance::new(&service, addr(7751)))
        .await?;
    let resolved = resolver.resolve(&service).await?;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].service, service);
    assert_eq!(resolved[0].address, addr(7751));
    let prefix = service.split('?').next().unwrap_or_default();
    assert!(resolver.resolve(prefix).await?.is_empty());
    assert!(resolver.resolve(&format!("{service}/x")).await?.is_empty());
    let with_slash = format!("{prefix}/b?c#d");
    assert!(resolver.resolve(&with_slash).await?.is_empty());

    // Longer than the TTL: the passes reach the check, so it stays passing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut watch = resolver.subscribe(&service).await?;
    wait_for_ports(&mut watch, &[7751], WATCH_DEADLINE).await?;
    if let Agent::StandIn(stand_in) = &agent {
        assert_eq!(stand_in.service_ids().len(), 1);
    }

    registration.deregister().await?;
    wait_for_ports(&mut watch, &[], WATCH_DEADLINE).await?;
    if let Agent::StandIn(stand_in) = &agent {
        assert!(stand_in.service_ids().is_empty());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_process_leaving_does_not_remove_its_successor() -> anyhow::Result<()> {
    let agent = Agent::any().await?;
    // Two processes: the old one (A) and its successor (B), registering the
    // same instance, so the same service ID.
    let (old, resolver) = pair(&agent.address())?;
    let (successor, _) = pair(&agent.address())?;
    let service = unique("handover");
    let a = old.register(Instance::new(&service, addr(7761))).await?;
    let b = successor
        .register(Instance::new(&service, addr(7761)).with_tag("zone", "b"))
        .await?;
    let resolved = resolver.resolve(&service).await?;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].tags.get("zone").map(String::as_str), Some("b"));
    assert_eq!(
        resolved[0].tags.len(),
        1,
        "the registration id stays out of the tags: {:?}",
        resolved[0].tags
    );

    // A leaves after B started: B's registration stays.
    a.deregister().await?;
    let mut watch = resolver.subscribe(&service).await?;
    wait_for_ports(&mut watch, &[7761], WATCH_DEADLINE).await?;
    if let Agent::StandIn(stand_in) = &agent {
        assert_eq!(stand_in.service_ids().len(), 1);
    }
    assert_eq!(resolver.resolve(&service).await?.len(), 1);

    // B leaving removes it.
    b.deregister().await?;
    wait_for_ports(&mut watch, &[], WATCH_DEADLINE).await?;
    Ok(())
}
