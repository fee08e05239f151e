//! Many services at once.

use futures::future::try_join_all;
use rpc_ext_registry::{Registry, Resolver};
use tests::backends::{BackendFixture, Capabilities};

use super::harness::{settles_on, Backend, SEEN};

const SERVICES: u16 = 20;
const INSTANCES: u16 = 3;

/// 20 services of 3 instances each, registered concurrently, each with its
/// own weights and zone: every watch shows exactly its own service's
/// instances, and after one instance of every service leaves, exactly its
/// remaining two.
pub(super) async fn many_services_each_see_their_own<F: BackendFixture>() -> anyhow::Result<()> {
    let backend = Backend::<F>::start(Capabilities::NONE).await?;
    let services: Vec<_> = (0..SERVICES)
        .map(|i| backend.service(&format!("many{i}")))
        .collect();
    let watches = try_join_all(
        services
            .iter()
            .map(|(_, target)| backend.resolver.subscribe(target)),
    )
    .await?;

    let backend = &backend;
    let instances = (0..SERVICES).zip(&services).flat_map(|(i, (service, _))| {
        (0..INSTANCES).map(move |j| {
            backend
                .instance(service, 8000 + 10 * i + j)
                .with_weight(u32::from(j) + 1)
                .with_tag("zone", format!("z{i}"))
        })
    });
    let registrations =
        try_join_all(instances.map(|instance| backend.registry.register(instance))).await?;
    let mut by_service: Vec<Vec<_>> = Vec::new();
    let mut registrations = registrations.into_iter();
    for _ in 0..SERVICES {
        by_service.push(registrations.by_ref().take(INSTANCES.into()).collect());
    }

    for (((service, _), watch), registered) in services.iter().zip(&watches).zip(&by_service) {
        let want = backend.expected(registered);
        settles_on(watch, &want, SEEN).await?;
        backend.assert_stored(service, &want).await?;
    }

    let leaving: Vec<_> = by_service.iter_mut().map(|r| r.remove(1)).collect();
    try_join_all(leaving.into_iter().map(|r| r.deregister())).await?;
    for (((service, _), watch), registered) in services.iter().zip(&watches).zip(&by_service) {
        let want = backend.expected(registered);
        settles_on(watch, &want, SEEN).await?;
        backend.assert_stored(service, &want).await?;
    }
    Ok(())
}
