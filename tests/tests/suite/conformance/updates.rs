//! Registering an instance again with new metadata: the new weight or tags
//! replace the old, and the handle of the replaced registration no longer
//! removes it.

use std::time::Duration;

use rpc_ext_registry::{Registry, Resolver};
use tests::backends::{BackendFixture, Capabilities};

use super::harness::{fresh_resolver_resolves, settles_on, shown, Backend, SEEN};

/// How long a dropped handle is given to finish deregistering in the
/// background (it takes milliseconds) before the test checks that it left
/// the instance, which it no longer owns, alone.
const DROP_SETTLES: Duration = Duration::from_secs(1);

/// The same registry registers an instance again with a new weight; the
/// older handle, dropped, leaves the new registration in place.
pub(super) async fn weight_updates_are_seen<F: BackendFixture>() -> anyhow::Result<()> {
    let backend = Backend::<F>::start(Capabilities::NONE).await?;
    let (service, target) = backend.service("weighted");
    let old = backend
        .registry
        .register(backend.instance(&service, 7401))
        .await?;
    let other = backend
        .registry
        .register(backend.instance(&service, 7402).with_weight(3))
        .await?;
    let watch = backend.resolver.subscribe(&target).await?;
    settles_on(&watch, &backend.expected([&old, &other]), SEEN).await?;

    let heavier = backend
        .registry
        .register(backend.instance(&service, 7401).with_weight(99))
        .await?;
    let want = backend.expected([&heavier, &other]);
    assert_eq!(
        want.iter().map(|i| i.weight).collect::<Vec<_>>(),
        [99, 3],
        "this backend must carry weights for this scenario"
    );
    settles_on(&watch, &want, SEEN).await?;

    drop(old);
    tokio::time::sleep(DROP_SETTLES).await;
    let now = watch.current();
    assert!(now.last_error.is_none(), "{:?}", now.last_error);
    assert_eq!(shown(&now.instances), want, "the dropped handle removed it");
    backend.assert_stored(&service, &want).await?;
    fresh_resolver_resolves(&backend.fixture, &target, &want, SEEN).await?;

    heavier.deregister().await?;
    let only_other = backend.expected([&other]);
    settles_on(&watch, &only_other, SEEN).await?;
    backend.assert_stored(&service, &only_other).await
}

/// A second registry (a successor process) registers the same instance
/// with new tags; the first one deregistering afterwards leaves the
/// successor's registration in place.
pub(super) async fn tag_updates_are_seen<F: BackendFixture>() -> anyhow::Result<()> {
    let backend = Backend::<F>::start(Capabilities::NONE).await?;
    let successor = backend.fixture.registry().await?;
    let (service, target) = backend.service("tagged");
    let old = backend
        .registry
        .register(backend.instance(&service, 7501).with_tag("zone", "a"))
        .await?;
    let watch = backend.resolver.subscribe(&target).await?;
    settles_on(&watch, &backend.expected([&old]), SEEN).await?;

    let new = successor
        .register(backend.instance(&service, 7501).with_tag("zone", "b"))
        .await?;
    let want = backend.expected([&new]);
    // Exactly the tags given: nothing the backend keeps for itself.
    settles_on(&watch, &want, SEEN).await?;

    old.deregister().await?;
    // Changes reach the watch in the backend's order: the set showing the
    // next registration and still the successor's instance shows the old
    // process's deregistration (done before it) left that instance alone.
    let next = successor.register(backend.instance(&service, 7502)).await?;
    let want = backend.expected([&new, &next]);
    settles_on(&watch, &want, SEEN).await?;
    backend.assert_stored(&service, &want).await?;

    new.deregister().await?;
    let only_next = backend.expected([&next]);
    settles_on(&watch, &only_next, SEEN).await?;
    backend.assert_stored(&service, &only_next).await
}
