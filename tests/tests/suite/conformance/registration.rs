//! Registering, deregistering, dropping the handle, and a service with no
//! instance.

use rpc_ext_registry::{Registry, Resolver};
use tests::backends::{BackendFixture, Capabilities};

use super::harness::{fresh_resolver_resolves, settles_on, shown, Backend, SEEN};

/// A registered instance resolves as soon as `register` returns, with its
/// exact address, weight and tags; a watch shows it and the next one.
pub(super) async fn registered_instances_are_seen<F: BackendFixture>() -> anyhow::Result<()> {
    let backend = Backend::<F>::start(Capabilities::NONE).await?;
    let (service, target) = backend.service("seen");
    let first = backend
        .registry
        .register(
            backend
                .instance(&service, 7001)
                .with_weight(5)
                .with_tag("zone", "a"),
        )
        .await?;
    let want = backend.expected([&first]);
    // `register` returns once the backend holds the instance.
    backend.assert_stored(&service, &want).await?;
    assert_eq!(shown(&backend.resolver.resolve(&target).await?), want);

    let watch = backend.resolver.subscribe(&target).await?;
    assert_eq!(shown(&watch.current().instances), want);
    let second = backend
        .registry
        .register(backend.instance(&service, 7002))
        .await?;
    let want = backend.expected([&first, &second]);
    settles_on(&watch, &want, SEEN).await?;
    backend.assert_stored(&service, &want).await?;
    Ok(())
}

/// A deregistered instance is gone from the backend when `deregister`
/// returns, then from the watch; the last one leaving leaves an empty set,
/// not an error.
pub(super) async fn deregistered_instances_are_gone<F: BackendFixture>() -> anyhow::Result<()> {
    let backend = Backend::<F>::start(Capabilities::NONE).await?;
    let (service, target) = backend.service("gone");
    let a = backend
        .registry
        .register(backend.instance(&service, 7101))
        .await?;
    let b = backend
        .registry
        .register(backend.instance(&service, 7102).with_tag("zone", "b"))
        .await?;
    let watch = backend.resolver.subscribe(&target).await?;
    settles_on(&watch, &backend.expected([&a, &b]), SEEN).await?;

    let only_b = backend.expected([&b]);
    a.deregister().await?;
    backend.assert_stored(&service, &only_b).await?;
    settles_on(&watch, &only_b, SEEN).await?;
    b.deregister().await?;
    backend.assert_stored(&service, &[]).await?;
    settles_on(&watch, &[], SEEN).await?;
    fresh_resolver_resolves(&backend.fixture, &target, &[], SEEN).await
}

/// Dropping a `Registration` deregisters it in the background.
pub(super) async fn dropping_the_handle_deregisters<F: BackendFixture>() -> anyhow::Result<()> {
    let backend = Backend::<F>::start(Capabilities::NONE).await?;
    let (service, target) = backend.service("dropped");
    let a = backend
        .registry
        .register(backend.instance(&service, 7201))
        .await?;
    let b = backend
        .registry
        .register(backend.instance(&service, 7202))
        .await?;
    let watch = backend.resolver.subscribe(&target).await?;
    settles_on(&watch, &backend.expected([&a, &b]), SEEN).await?;

    let only_b = backend.expected([&b]);
    drop(a);
    settles_on(&watch, &only_b, SEEN).await?;
    backend.stores(&service, &only_b, SEEN).await?;
    drop(b);
    settles_on(&watch, &[], SEEN).await?;
    backend.stores(&service, &[], SEEN).await
}

/// A service nobody registered, and one scaled to zero, resolve to an
/// empty set: `Ok`, no error reported.
pub(super) async fn zero_instances_is_an_answer<F: BackendFixture>() -> anyhow::Result<()> {
    let backend = Backend::<F>::start(Capabilities::NONE).await?;
    let (_, nobody) = backend.service("nobody");
    let (service, scaled) = backend.service("scaled");
    assert_eq!(shown(&backend.resolver.resolve(&nobody).await?), []);

    let watch = backend.resolver.subscribe(&scaled).await?;
    let first = watch.current();
    assert_eq!(shown(&first.instances), []);
    assert!(first.last_error.is_none(), "{:?}", first.last_error);
    assert!(first.generation > 0, "the first list completed: {first:?}");

    let only = backend
        .registry
        .register(backend.instance(&service, 7301))
        .await?;
    settles_on(&watch, &backend.expected([&only]), SEEN).await?;
    only.deregister().await?;
    settles_on(&watch, &[], SEEN).await?;
    fresh_resolver_resolves(&backend.fixture, &scaled, &[], SEEN).await?;
    fresh_resolver_resolves(&backend.fixture, &nobody, &[], SEEN).await
}
