//! The backend going down and coming back.

use std::time::Duration;

use tokio::time::Instant;

use rpc_ext_registry::{Error, Registry, Resolver};
use tests::backends::{BackendFixture, Capabilities};

use super::harness::{settles_on, shown, until, Backend, RECOVERED, SEEN};

/// How long the test watches the set while the backend is down.
const HELD_FOR: Duration = Duration::from_secs(2);

/// While the backend is down, a watch reports the failure in `last_error`
/// and keeps showing the last set; new subscribers to that service get the
/// set, and a service never looked up gets a typed error.
pub(super) async fn backend_down_keeps_the_last_set<F: BackendFixture>() -> anyhow::Result<()> {
    let mut backend = Backend::<F>::start(Capabilities::OUTAGE).await?;
    let (service, target) = backend.service("outage");
    let a = backend
        .registry
        .register(
            backend
                .instance(&service, 7601)
                .with_weight(5)
                .with_tag("zone", "a"),
        )
        .await?;
    let b = backend
        .registry
        .register(backend.instance(&service, 7602))
        .await?;
    let want = backend.expected([&a, &b]);
    let watch = backend.resolver.subscribe(&target).await?;
    settles_on(&watch, &want, SEEN).await?;

    backend.fixture.take_down().await?;
    let went_down = Instant::now();
    let down = until(&watch, RECOVERED, "the outage reported", |s| {
        s.last_error.is_some()
    })
    .await?;
    eprintln!(
        "{}: outage reported after {:?}",
        F::NAME,
        went_down.elapsed()
    );
    assert_eq!(shown(&down.instances), want, "the last set is kept");
    // And it stays: never emptied, the error never dropped, while down.
    let held_until = tokio::time::Instant::now() + HELD_FOR;
    while tokio::time::Instant::now() < held_until {
        let now = watch.current();
        assert!(
            now.last_error.is_some(),
            "the error went while down: {now:?}"
        );
        assert_eq!(shown(&now.instances), want);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new subscriber to the followed service is served the kept set.
    assert_eq!(shown(&backend.resolver.resolve(&target).await?), want);
    // A service never looked up cannot be listed: an error, not a set.
    let (_, never_seen) = backend.service("never-seen");
    match backend.resolver.resolve(&never_seen).await {
        Err(Error::Resolve { .. }) => {}
        other => anyhow::bail!("expected Error::Resolve for {never_seen}, got {other:?}"),
    }
    Ok(())
}

/// Once the backend is back, the watch clears its error and shows exactly
/// the registered set, the backend holds it, and changes flow again.
pub(super) async fn backend_back_clears_the_error<F: BackendFixture>() -> anyhow::Result<()> {
    let mut backend = Backend::<F>::start(Capabilities::OUTAGE).await?;
    let (service, target) = backend.service("back");
    let a = backend
        .registry
        .register(
            backend
                .instance(&service, 7701)
                .with_weight(5)
                .with_tag("zone", "a"),
        )
        .await?;
    let b = backend
        .registry
        .register(backend.instance(&service, 7702))
        .await?;
    let want = backend.expected([&a, &b]);
    let watch = backend.resolver.subscribe(&target).await?;
    settles_on(&watch, &want, SEEN).await?;

    backend.fixture.take_down().await?;
    let down = until(&watch, RECOVERED, "the outage reported", |s| {
        s.last_error.is_some()
    })
    .await?;
    assert_eq!(shown(&down.instances), want, "the last set is kept");

    let came_back = Instant::now();
    backend.fixture.bring_back().await?;
    settles_on(&watch, &want, RECOVERED).await?;
    eprintln!(
        "{}: error cleared {:?} after bringing the backend back",
        F::NAME,
        came_back.elapsed()
    );
    backend.stores(&service, &want, RECOVERED).await?;
    let c = backend
        .registry
        .register(backend.instance(&service, 7703))
        .await?;
    settles_on(&watch, &backend.expected([&a, &b, &c]), SEEN).await?;
    c.deregister().await?;
    settles_on(&watch, &want, SEEN).await?;
    Ok(())
}
