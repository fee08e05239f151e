//! The Consul backend against a real Consul agent when `CONSUL_HTTP_ADDR` is
//! set, else against the stand-in in `tests/src/consul/`; fault modes
//! (500s, garbage, agent restarts, slow answers) always use the stand-in.
//! What is Consul's own is here; what every backend must do is in
//! `conformance`.

use std::time::Duration;

use rpc_ext_registry::{
    consul::{Check, ConsulRegistry, ConsulResolver},
    Instance, Registry, Resolver,
};
use tests::consul::{AclPolicy, ConsulStandIn};

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
    tests::init_test_logging();
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

/// Waits until the stand-in holds registration `id` again, and only it (the
/// registry re-registers by itself after an agent restart).
async fn reregistered(stand_in: &ConsulStandIn, id: &str) -> anyhow::Result<()> {
    tests::eventually(RECOVERY_DEADLINE, "re-registration", || {
        let ids = stand_in.service_ids();
        async move { (ids == [id]).then_some(()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filter_selects_instances() -> anyhow::Result<()> {
    let agent = Agent::any().await?;
    let (registry, _) = pair(&agent.address())?;
    let service = unique("tagged");
    let _a = registry
        .register(Instance::new(service.as_str(), addr(7711)).with_tag("zone", "a"))
        .await?;
    let _b = registry
        .register(Instance::new(service.as_str(), addr(7712)).with_tag("zone", "b"))
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
        let snapshot = tests::eventually(WATCH_DEADLINE, "an error report", || {
            let snapshot = watch.current();
            async move { snapshot.last_error.is_some().then_some(snapshot) }
        })
        .await?;
        assert_eq!(snapshot.instances.len(), 1, "the last known set is kept");
        // It recovers by itself once the agent answers properly again.
        tests::eventually(RECOVERY_DEADLINE, "recovery", || {
            let snapshot = watch.current();
            async move { snapshot.last_error.is_none().then_some(()) }
        })
        .await?;
    }
    assert_eq!(watch.current().instances.len(), 1);
    Ok(())
}

/// After a failure the resolver asks without blocking: with a blocking
/// query on the old index, the error would stay until the service changed
/// or the whole wait (here a minute) ended, with the agent back meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_clears_as_soon_as_the_agent_answers_again() -> anyhow::Result<()> {
    let stand_in = ConsulStandIn::start().await?;
    let (registry, _) = pair(&stand_in.address())?;
    let proxy = tests::FaultProxy::in_front_of(&stand_in.address()).await?;
    let resolver = ConsulResolver::builder()
        .address(proxy.endpoint())
        .wait(Duration::from_secs(60))
        .max_backoff(Duration::from_millis(300))
        .build()?;
    let _registration = registry.register(Instance::new("echo", addr(7736))).await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[7736], WATCH_DEADLINE).await?;
    // The follower is blocked on the current index: cutting its
    // connection fails that query, and refusing fails the retries.
    proxy.set_refusing(true);
    tests::eventually(WATCH_DEADLINE, "an error report", || {
        let snapshot = watch.current();
        async move { snapshot.last_error.is_some().then_some(()) }
    })
    .await?;
    proxy.set_refusing(false);
    let failed_at = std::time::Instant::now();
    let snapshot = tests::eventually(Duration::from_secs(20), "the error cleared", || {
        let snapshot = watch.current();
        async move { snapshot.last_error.is_none().then_some(snapshot) }
    })
    .await?;
    let cleared_after = failed_at.elapsed();
    assert!(
        cleared_after < Duration::from_secs(5),
        "cleared {cleared_after:?} after the error, not within a few backoffs"
    );
    let ports: Vec<_> = snapshot
        .instances
        .iter()
        .map(|i| i.address.port())
        .collect();
    assert_eq!(ports, [7736]);
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
        .register(Instance::new(service.as_str(), server_addr))
        .await?;
    let channel = rpc_ext_registry::tonic::balanced_channel(&resolver, &service).await?;
    let reply = tests::eventually(WATCH_DEADLINE, "a call through Consul discovery", || {
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
    reregistered(&stand_in, "echo-127.0.0.1-8001").await?;
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
    // percent-encoded; `/` would split the name across path segments. The
    // agent decodes the whole path, so a `/` inside a name reaches it whole;
    // the ID replaces it (agents redirect deregistrations of IDs with a `/`).
    let base = unique("a");
    let query_like = format!("{base}?c#d");
    let slashed = format!("{base}/b?c#d");
    let a = registry
        .register(Instance::new(query_like.as_str(), addr(7751)))
        .await?;
    let b = registry
        .register(Instance::new(slashed.as_str(), addr(7751)))
        .await?;
    for (service, other) in [(&query_like, &slashed), (&slashed, &query_like)] {
        let resolved = resolver.resolve(service).await?;
        assert_eq!(resolved.len(), 1, "{service}");
        assert_eq!(&*resolved[0].service, service.as_str());
        assert_eq!(resolved[0].address, addr(7751));
        assert_ne!(service, other);
    }
    // Neighbouring names see nothing: the name is matched whole, not by a
    // prefix that a `?`, `#` or `/` cut short.
    for neighbour in [base.clone(), format!("{base}/b"), format!("{query_like}/x")] {
        assert!(
            resolver.resolve(&neighbour).await?.is_empty(),
            "{neighbour}"
        );
    }

    // Longer than the TTL: the passes reach both checks, so they stay passing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut query_watch = resolver.subscribe(&query_like).await?;
    let mut slashed_watch = resolver.subscribe(&slashed).await?;
    wait_for_ports(&mut query_watch, &[7751], WATCH_DEADLINE).await?;
    wait_for_ports(&mut slashed_watch, &[7751], WATCH_DEADLINE).await?;
    if let Agent::StandIn(stand_in) = &agent {
        let ids = stand_in.service_ids();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.iter().all(|id| !id.contains('/')), "{ids:?}");
    }

    b.deregister().await?;
    wait_for_ports(&mut slashed_watch, &[], WATCH_DEADLINE).await?;
    assert_eq!(resolver.resolve(&query_like).await?.len(), 1);
    a.deregister().await?;
    wait_for_ports(&mut query_watch, &[], WATCH_DEADLINE).await?;
    if let Agent::StandIn(stand_in) = &agent {
        assert!(stand_in.service_ids().is_empty());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_agent_would_redirect_are_refused_before_any_request() -> anyhow::Result<()> {
    let stand_in = ConsulStandIn::start().await?;
    let (registry, _) = pair(&stand_in.address())?;
    for name in ["/echo", "echo/", "a//b", "a/./b", "a/../b", ".."] {
        match registry.register(Instance::new(name, addr(7752))).await {
            Err(rpc_ext_registry::Error::InvalidInstance(reason)) => {
                assert!(reason.contains(name), "{reason}");
            }
            other => anyhow::bail!("{name}: expected InvalidInstance, got {other:?}"),
        }
    }
    assert_eq!(stand_in.register_requests(), 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// What real agents do that the client must cope with (issue 20, items 1-4).
// ---------------------------------------------------------------------------

/// Tags whose keys real agents refuse as `Meta` keys (`^[a-zA-Z0-9_-]+$`, not
/// `consul-…`), or that collide with the keys the crate keeps in `Meta`.
fn awkward_tags() -> Vec<(&'static str, &'static str)> {
    vec![
        ("app.kubernetes.io/name", "echo"),
        ("zone:a", "1"),
        ("weight", "heavy"),
        ("registry-ext-registration", "mine"),
        ("consul-owner", "team-a"),
        ("__private", "p"),
        ("plain_key", "v"),
        ("Upper-Case", "X"),
        ("ünïcode key", "ü"),
        ("", "empty key"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_style_tags_round_trip_through_consul_meta() -> anyhow::Result<()> {
    let agent = Agent::any().await?;
    let (registry, resolver) = pair(&agent.address())?;
    let service = unique("k8s-tags");
    let mut instance = Instance::new(service.as_str(), addr(7771)).with_weight(7);
    for (key, value) in awkward_tags() {
        instance = instance.with_tag(key, value);
    }
    // A real agent (and the stand-in) answers 400 "Invalid Service Meta" to
    // keys such as `app.kubernetes.io/name` if they are sent as they are.
    let registration = registry.register(instance.clone()).await?;
    let resolved = resolver.resolve(&service).await?;
    assert_eq!(resolved.len(), 1);
    assert_eq!(
        resolved[0].tags, instance.tags,
        "every tag comes back as given"
    );
    assert_eq!(resolved[0].weight, 7);

    if let Agent::StandIn(stand_in) = &agent {
        let meta = stand_in
            .service_meta(&format!("{service}-127.0.0.1-7771"))
            .expect("registered");
        // Keys Consul accepts are stored as they are, for people reading Meta.
        assert_eq!(meta.get("plain_key").map(String::as_str), Some("v"));
        assert_eq!(meta.get("Upper-Case").map(String::as_str), Some("X"));
        assert!(!meta.contains_key("app.kubernetes.io/name"), "{meta:?}");
    }

    // The Consul tags (`key=value`) still select by the original key.
    let by_tag = ConsulResolver::builder()
        .address(agent.address())
        .tags(["app.kubernetes.io/name=echo"])
        .build()?;
    assert_eq!(by_tag.resolve(&service).await?.len(), 1);
    registration.deregister().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_consul_cannot_hold_are_refused_before_any_request() -> anyhow::Result<()> {
    let stand_in = ConsulStandIn::start().await?;
    let (registry, _) = pair(&stand_in.address())?;
    let long_value = "v".repeat(513);
    let long_key = "a/".repeat(50); // 100 bytes, 250 once encoded
    let mut too_many = Instance::new("echo", addr(7781));
    for i in 0..63 {
        too_many = too_many.with_tag(format!("k{i}"), "v");
    }
    let cases = [
        (
            Instance::new("echo", addr(7781)).with_tag("zone", long_value.as_str()),
            "zone",
        ),
        (
            Instance::new("echo", addr(7781)).with_tag(long_key.as_str(), "v"),
            "a/a/",
        ),
        (too_many, "63"),
    ];
    for (instance, mentioned) in cases {
        match registry.register(instance).await {
            Err(rpc_ext_registry::Error::InvalidInstance(reason)) => {
                assert!(reason.contains(mentioned), "{reason}");
            }
            other => anyhow::bail!("expected InvalidInstance, got {other:?}"),
        }
    }
    assert_eq!(
        stand_in.register_requests(),
        0,
        "refused when the registration is built, before any request"
    );
    // 62 tags fit with the two keys the crate adds (64 pairs).
    let mut fits = Instance::new("echo", addr(7782));
    for i in 0..62 {
        fits = fits.with_tag(format!("k{i}"), "v");
    }
    let _registration = registry.register(fits).await?;
    Ok(())
}

/// The stand-in with ACLs on (default deny) and these tokens, created in
/// this order.
async fn with_acls(tokens: &[(&str, AclPolicy)]) -> anyhow::Result<ConsulStandIn> {
    let stand_in = ConsulStandIn::start().await?;
    stand_in.enable_acls();
    for (secret, policy) in tokens {
        stand_in.set_token(secret, *policy);
    }
    Ok(stand_in)
}

/// `result` must be an ACL refusal whose reason contains `needle`.
#[track_caller]
fn assert_denied<T: std::fmt::Debug>(result: Result<T, rpc_ext_registry::Error>, needle: &str) {
    match result {
        Err(error) => assert!(is_permission_denied(&error, needle), "{error:?}"),
        Ok(value) => panic!("expected a refusal ({needle}), got {value:?}"),
    }
}

fn is_permission_denied(error: &rpc_ext_registry::Error, needle: &str) -> bool {
    use rpc_ext_registry::Error;
    match error {
        Error::PermissionDenied { reason, .. } => reason.contains(needle),
        Error::Resolve { source, .. } => is_permission_denied(source, needle),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_refusals_are_typed_errors_and_filtered_answers_are_reported() -> anyhow::Result<()> {
    tests::init_test_logging();
    let no_node_read = AclPolicy {
        service_read: true,
        ..AclPolicy::default()
    };
    let stand_in = with_acls(&[
        ("writer", AclPolicy::WRITE),
        ("reader", AclPolicy::READ),
        ("no-node-read", no_node_read),
    ])
    .await?;
    let registry = |token: &str| {
        ConsulRegistry::builder()
            .address(stand_in.address())
            .token(token)
            .check(Check::Ttl {
                ttl: Duration::from_secs(2),
            })
            .build()
    };
    let resolver = |token: Option<&str>| {
        let builder = ConsulResolver::builder()
            .address(stand_in.address())
            .wait(Duration::from_secs(2))
            .max_backoff(Duration::from_millis(300));
        match token {
            Some(token) => builder.token(token),
            None => builder,
        }
        .build()
    };

    // Registering: 403 "ACL not found" and "Permission denied" are ACL
    // errors, returned at once.
    let echo = || Instance::new("echo", addr(7791));
    for (token, refusal) in [
        ("deleted-token", "ACL not found"),
        ("reader", "Permission denied"),
    ] {
        assert_denied(registry(token)?.register(echo()).await, refusal);
    }
    let _registration = registry("writer")?.register(echo()).await?;
    assert_eq!(resolver(Some("reader"))?.resolve("echo").await?.len(), 1);

    // Resolving with a token that may not read the node: the agent answers
    // 200 with the entries removed and X-Consul-Results-Filtered-By-ACLs.
    // That is an error, not "no instances".
    for (token, refusal) in [
        ("no-node-read", "filtered by ACLs"),
        ("deleted-token", "ACL not found"),
    ] {
        assert_denied(resolver(Some(token))?.resolve("echo").await, refusal);
    }
    // Anonymous requests do not get the header (the server masks it so as
    // not to reveal what exists): the client cannot tell, as against Consul.
    assert!(resolver(None)?.resolve("echo").await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_pass_refused_by_acls_is_retried_at_the_keepalive_period() -> anyhow::Result<()> {
    tests::init_test_logging();
    let stand_in = with_acls(&[("svc", AclPolicy::WRITE)]).await?;
    // TTL 3 s: passes every second. Backoff after failures up to 100 ms.
    let registry = ConsulRegistry::builder()
        .address(stand_in.address())
        .token("svc")
        .check(Check::Ttl {
            ttl: Duration::from_secs(3),
        })
        .max_backoff(Duration::from_millis(100))
        .build()?;
    let resolver = ConsulResolver::builder()
        .address(stand_in.address())
        .token("svc")
        .wait(Duration::from_secs(2))
        .build()?;
    let registration = registry.register(Instance::new("echo", addr(7795))).await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[7795], WATCH_DEADLINE).await?;

    // The token loses service:write: every TTL pass is now 403. Only an
    // operator can fix that, so the keeper does not hammer the agent with
    // its fast failure backoff; it tries once per period.
    stand_in.set_token("svc", AclPolicy::READ);
    tests::eventually(Duration::from_secs(3), "a refused pass", || {
        let denied = stand_in.denied_requests();
        async move { (denied > 0).then_some(()) }
    })
    .await?;
    let before = stand_in.pass_requests();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attempts = stand_in.pass_requests() - before;
    assert!(
        (2..=6).contains(&attempts),
        "{attempts} refused passes in 4 s: expected about one per second"
    );
    // The check has expired meanwhile; the instance is gone from the set.
    wait_for_ports(&mut watch, &[], RECOVERY_DEADLINE).await?;

    // Once the token is allowed again, the next pass restores it.
    stand_in.set_token("svc", AclPolicy::WRITE);
    wait_for_ports(&mut watch, &[7795], Duration::from_secs(5)).await?;

    // Deregistering with a refused token says so.
    stand_in.set_token("svc", AclPolicy::READ);
    assert_denied(registration.deregister().await, "Permission denied");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_in_blocks_like_a_consul_server() -> anyhow::Result<()> {
    use std::time::Instant;

    let stand_in = ConsulStandIn::start().await?;
    let (registry, _) = pair(&stand_in.address())?;
    let _registration = registry.register(Instance::new("echo", addr(7801))).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/health/service/echo", stand_in.address());
    let query = |index: u64, wait: &str| {
        http.get(&url)
            .query(&[("index", index.to_string()), ("wait", wait.to_owned())])
            .send()
    };
    let first = http.get(&url).send().await?;
    let index: u64 = first.headers()["X-Consul-Index"].to_str()?.parse()?;

    // Same index: answers when `wait` (plus up to wait/16) has elapsed.
    let started = Instant::now();
    query(index, "1s").await?.error_for_status()?;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );

    // An index above the agent's (one from before an agent restart) also
    // waits it out, even when the agent's index moves meanwhile.
    let started = Instant::now();
    let blocked = tokio::spawn(query(index + 1000, "1s"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _other = registry.register(Instance::new("echo", addr(7802))).await?;
    blocked.await??.error_for_status()?;
    assert!(started.elapsed() >= Duration::from_secs(1));

    // `wait=0ms` is the server's default of 5 minutes, not "answer now".
    let zero = tokio::time::timeout(Duration::from_secs(2), query(index + 1000, "0ms")).await;
    assert!(zero.is_err(), "wait=0ms answered within 2 s");
    let bad = query(index, "soon").await?;
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_or_sub_millisecond_wait_does_not_time_out_every_query() -> anyhow::Result<()> {
    let stand_in = ConsulStandIn::start().await?;
    let (registry, _) = pair(&stand_in.address())?;
    let _first = registry.register(Instance::new("echo", addr(7811))).await?;
    for (wait, port) in [(Duration::ZERO, 7812), (Duration::from_micros(500), 7813)] {
        let resolver = ConsulResolver::builder()
            .address(stand_in.address())
            .wait(wait)
            .request_timeout(Duration::from_secs(1))
            .max_backoff(Duration::from_millis(300))
            .build()?;
        let mut watch = resolver.subscribe("echo").await?;
        // Several blocking rounds with nothing changing: none may fail.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(3500);
        while tokio::time::Instant::now() < deadline {
            let snapshot = watch.current();
            assert!(
                snapshot.last_error.is_none(),
                "wait {wait:?}: {:?}",
                snapshot.last_error
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // And changes still arrive.
        let _more = registry.register(Instance::new("echo", addr(port))).await?;
        wait_for_ports(&mut watch, &[7811, port], WATCH_DEADLINE).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_means_every_check_of_the_instance_and_its_node() -> anyhow::Result<()> {
    use tests::consul::Status;

    let stand_in = ConsulStandIn::start().await?;
    // An agent-run check: nothing in the process changes its status, so
    // the states set below stay.
    let registry = ConsulRegistry::builder()
        .address(stand_in.address())
        .check(Check::Tcp {
            target: "127.0.0.1:1".into(),
            interval: Duration::from_secs(10),
        })
        .build()?;
    let resolver = ConsulResolver::builder()
        .address(stand_in.address())
        .wait(Duration::from_secs(5))
        .build()?;
    let mut registrations = Vec::new();
    for port in [7821, 7822, 7823] {
        registrations.push(
            registry
                .register(Instance::new("echo", addr(port)).with_tag("Zone", "A"))
                .await?,
        );
    }
    let id = |port: u16| format!("echo-127.0.0.1-{port}");
    let mut watch = resolver.subscribe("echo").await?;
    let all = [7821, 7822, 7823];
    wait_for_ports(&mut watch, &all, WATCH_DEADLINE).await?;

    stand_in.set_check_status(&id(7822), Status::Warning);
    wait_for_ports(&mut watch, &[7821, 7823], WATCH_DEADLINE).await?;
    stand_in.set_check_status(&id(7822), Status::Passing);
    wait_for_ports(&mut watch, &all, WATCH_DEADLINE).await?;

    stand_in.set_service_maintenance(&id(7823), Some("deploying"));
    wait_for_ports(&mut watch, &[7821, 7822], WATCH_DEADLINE).await?;
    stand_in.set_service_maintenance(&id(7823), None);
    wait_for_ports(&mut watch, &all, WATCH_DEADLINE).await?;

    stand_in.set_node_maintenance(Some("kernel upgrade"));
    wait_for_ports(&mut watch, &[], WATCH_DEADLINE).await?;
    stand_in.set_node_maintenance(None);
    wait_for_ports(&mut watch, &all, WATCH_DEADLINE).await?;

    stand_in.set_node_health(Status::Critical);
    wait_for_ports(&mut watch, &[], WATCH_DEADLINE).await?;
    stand_in.set_node_health(Status::Passing);
    wait_for_ports(&mut watch, &all, WATCH_DEADLINE).await?;

    // Consul matches `tag` without regard to case.
    let lower = ConsulResolver::builder()
        .address(stand_in.address())
        .tags(["zone=a"])
        .build()?;
    assert_eq!(lower.resolve("echo").await?.len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_registering_over_a_critical_check_is_passing_at_once() -> anyhow::Result<()> {
    use tests::consul::Status;

    let stand_in = ConsulStandIn::start().await?;
    // A long TTL: the keepers' periodic passes (every 10 s) play no part.
    let long_ttl = || {
        ConsulRegistry::builder()
            .address(stand_in.address())
            .check(Check::Ttl {
                ttl: Duration::from_secs(30),
            })
            .build()
    };
    let resolver = ConsulResolver::builder()
        .address(stand_in.address())
        .wait(Duration::from_secs(5))
        .build()?;
    let _old = long_ttl()?
        .register(Instance::new("echo", addr(7831)))
        .await?;
    let mut watch = resolver.subscribe("echo").await?;
    wait_for_ports(&mut watch, &[7831], WATCH_DEADLINE).await?;
    // The old process hangs; its check turns critical.
    stand_in.set_check_status("echo-127.0.0.1-7831", Status::Critical);
    wait_for_ports(&mut watch, &[], WATCH_DEADLINE).await?;

    // Its successor registers the same instance. The agent keeps the
    // check's critical status over the "passing" of the new definition;
    // the successor must not stay invisible until its first periodic pass.
    let _successor = long_ttl()?
        .register(Instance::new("echo", addr(7831)))
        .await?;
    wait_for_ports(&mut watch, &[7831], WATCH_DEADLINE).await?;
    assert_eq!(
        stand_in.check_status("echo-127.0.0.1-7831"),
        Some(Status::Passing)
    );
    Ok(())
}
