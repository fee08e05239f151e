//! A registration kept alive past its TTL.

use std::sync::{Arc, Mutex};

use rpc_ext_registry::{Instance, Registry, Resolver, ServiceWatch};
use tests::backends::{BackendFixture, Capabilities};

use super::harness::{fresh_resolver_resolves, settles_on, shown, Backend, SEEN};

/// Over twice its TTL (lease TTL, TTL check, Lease duration), a live
/// registration is renewed: every set the watch shows in that time is
/// exactly the registered one with no error, and afterwards the backend
/// holds it and a new resolver resolves it.
pub(super) async fn registrations_outlive_their_ttl<F: BackendFixture>() -> anyhow::Result<()> {
    let backend = Backend::<F>::start(Capabilities::NONE).await?;
    let ttl = backend
        .fixture
        .ttl()
        .ok_or_else(|| anyhow::anyhow!("{}: registrations do not expire", F::NAME))?;
    let (service, target) = backend.service("renewed");
    let registration = backend
        .registry
        .register(
            backend
                .instance(&service, 7901)
                .with_weight(5)
                .with_tag("zone", "a"),
        )
        .await?;
    let want = backend.expected([&registration]);
    let watch = backend.resolver.subscribe(&target).await?;
    settles_on(&watch, &want, SEEN).await?;

    let (seen, recorder) = record(watch.clone());
    tokio::time::sleep(ttl * 2 + ttl / 2).await;
    recorder.abort();
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (instances, error) in &seen {
        assert!(
            instances == &want && error.is_none(),
            "a set other than {want:?} was shown: {seen:?}"
        );
    }
    settles_on(&watch, &want, SEEN).await?;
    backend.assert_stored(&service, &want).await?;
    fresh_resolver_resolves(&backend.fixture, &target, &want, SEEN).await
}

/// A shown set and its error, if any.
type Shown = (Vec<Instance>, Option<String>);

/// Every snapshot `watch` wakes its subscriber for, until aborted (a
/// subscriber can skip values: this samples what clients see).
fn record(mut watch: ServiceWatch) -> (Arc<Mutex<Vec<Shown>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok(snapshot) = watch.changed().await {
                let error = snapshot.last_error.as_ref().map(|e| e.to_string());
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((shown(&snapshot.instances), error));
            }
        }
    });
    (seen, task)
}
