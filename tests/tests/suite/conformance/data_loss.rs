//! The backend restarting without its data.

use rpc_ext_registry::{Registry, Resolver};
use tests::backends::{BackendFixture, Capabilities};
use tokio::time::Instant;

use super::harness::{fresh_resolver_resolves, settles_on, Backend, RECOVERED, SEEN};

/// After the backend lost every registration, the registries write theirs
/// again with no user action: the backend holds them, a new resolver
/// resolves them exactly, the watch from before shows them with no error
/// and follows changes made after the loss.
pub(super) async fn restart_losing_data_brings_registrations_back<F: BackendFixture>(
) -> anyhow::Result<()> {
    let mut backend = Backend::<F>::start(Capabilities::DATA_LOSS).await?;
    let (service, target) = backend.service("lost");
    let a = backend
        .registry
        .register(
            backend
                .instance(&service, 7801)
                .with_weight(5)
                .with_tag("zone", "a"),
        )
        .await?;
    let b = backend
        .registry
        .register(backend.instance(&service, 7802))
        .await?;
    let want = backend.expected([&a, &b]);
    let watch = backend.resolver.subscribe(&target).await?;
    settles_on(&watch, &want, SEEN).await?;

    let lost = Instant::now();
    backend.fixture.restart_losing_data().await?;
    backend.stores(&service, &want, RECOVERED).await?;
    eprintln!(
        "{}: registered again {:?} after the restart began",
        F::NAME,
        lost.elapsed()
    );
    fresh_resolver_resolves(&backend.fixture, &target, &want, RECOVERED).await?;
    settles_on(&watch, &want, RECOVERED).await?;
    // The first change after the loss: a resolver still waiting on the
    // lost store's position would never see it.
    let c = backend
        .registry
        .register(backend.instance(&service, 7803))
        .await?;
    settles_on(&watch, &backend.expected([&a, &b, &c]), RECOVERED).await?;
    Ok(())
}
