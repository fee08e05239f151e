//! What every scenario uses: a started fixture with a registry and a
//! resolver, the sets a resolver must show, and waits that accept only the
//! exact set.

use std::{net::SocketAddr, sync::Mutex, time::Duration};

use rpc_ext_registry::{Instance, Registration, Resolver, ServiceSnapshot, ServiceWatch};
use tests::backends::{BackendFixture, Capabilities};

/// How long a change may take to reach a watch. Changes arrive in well
/// under a second (BENCHMARKS.md); the margin is for a loaded 2-core
/// machine.
pub(super) const SEEN: Duration = Duration::from_secs(10);

/// How long a recovery may take after an outage or a data loss: the
/// clients' backoff (capped at 0.5 s), a TTL (2 s), a blocking query
/// waiting out its 2 s, with the same margin.
pub(super) const RECOVERED: Duration = Duration::from_secs(30);

/// A started fixture with the registry and the resolver the scenario uses.
pub(super) struct Backend<F: BackendFixture> {
    pub(super) fixture: F,
    pub(super) registry: F::Registry,
    pub(super) resolver: F::Resolver,
}

impl<F: BackendFixture> Backend<F> {
    /// Starts the fixture with the capabilities `needs`.
    pub(super) async fn start(needs: Capabilities) -> anyhow::Result<Self> {
        tests::init_test_logging();
        let fixture = F::start(needs).await?;
        // Shown with the output of a failing test: which backend it ran on.
        eprintln!("conformance on {}: {}", F::NAME, fixture.describe());
        let registry = fixture.registry().await?;
        let resolver = fixture.resolver().await?;
        Ok(Self {
            fixture,
            registry,
            resolver,
        })
    }

    /// A service name of the scenario's own and the target resolving it.
    pub(super) fn service(&self, base: &str) -> (String, String) {
        let service = self.fixture.service_name(base);
        let target = self.fixture.target(&service);
        (service, target)
    }

    /// An instance of `service` listening on `port`.
    pub(super) fn instance(&self, service: &str, port: u16) -> Instance {
        Instance::new(service, self.fixture.address(port))
    }

    /// What a resolver must show for `registrations`, in address order.
    pub(super) fn expected<'a>(
        &self,
        registrations: impl IntoIterator<Item = &'a Registration>,
    ) -> Vec<Instance> {
        let mut want: Vec<_> = registrations
            .into_iter()
            .map(|r| self.fixture.as_resolved(r.instance()))
            .collect();
        want.sort_by_key(|i| i.address);
        want
    }

    /// Fails unless the backend itself holds exactly the addresses of `want`.
    pub(super) async fn assert_stored(
        &self,
        service: &str,
        want: &[Instance],
    ) -> anyhow::Result<()> {
        let stored = self.fixture.stored(service).await?;
        anyhow::ensure!(
            stored == addresses(want),
            "{} holds {stored:?} for {service}, expected {:?}",
            F::NAME,
            addresses(want)
        );
        Ok(())
    }

    /// Waits until the backend itself holds exactly the addresses of `want`.
    pub(super) async fn stores(
        &self,
        service: &str,
        want: &[Instance],
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let want = addresses(want);
        let last = Mutex::new(None);
        let what = format!("{} to hold {want:?} for {service}", F::NAME);
        tests::eventually(deadline, &what, || async {
            let stored = self.fixture.stored(service).await;
            let done = matches!(&stored, Ok(stored) if *stored == want);
            *lock(&last) = Some(stored.map_err(|e| e.to_string()));
            done.then_some(())
        })
        .await
        .map_err(|error| anyhow::anyhow!("{error}; last read: {:?}", lock(&last)))
    }
}

/// The addresses of `instances`, sorted.
fn addresses(instances: &[Instance]) -> Vec<SocketAddr> {
    let mut addresses: Vec<_> = instances.iter().map(|i| i.address).collect();
    addresses.sort_unstable();
    addresses
}

/// The instances a resolver returned, in its (address) order.
pub(super) fn shown(instances: &[std::sync::Arc<Instance>]) -> Vec<Instance> {
    instances.iter().map(|i| Instance::clone(i)).collect()
}

/// Waits until `watch` shows exactly `want` with no error reported.
pub(super) async fn settles_on(
    watch: &ServiceWatch,
    want: &[Instance],
    deadline: Duration,
) -> anyhow::Result<ServiceSnapshot> {
    until(
        watch,
        deadline,
        &format!("exactly {want:?}, no error"),
        |s| s.last_error.is_none() && shown(&s.instances) == want,
    )
    .await
}

/// Waits until `watch`'s snapshot satisfies `check`; the error shows the
/// last snapshot.
pub(super) async fn until(
    watch: &ServiceWatch,
    deadline: Duration,
    what: &str,
    check: impl Fn(&ServiceSnapshot) -> bool,
) -> anyhow::Result<ServiceSnapshot> {
    let what = format!("{} to show {what}", watch.service());
    tests::eventually(deadline, &what, || {
        let snapshot = watch.current();
        let found = check(&snapshot).then_some(snapshot);
        async move { found }
    })
    .await
    .map_err(|error| anyhow::anyhow!("{error}; it shows {:?}", watch.current()))
}

/// Waits until a new resolver of `fixture`, with nothing cached,
/// resolves `target` to exactly `want`.
pub(super) async fn fresh_resolver_resolves<F: BackendFixture>(
    fixture: &F,
    target: &str,
    want: &[Instance],
    deadline: Duration,
) -> anyhow::Result<()> {
    let fresh = fixture.resolver().await?;
    let last = Mutex::new(None);
    let what = format!("a new resolver to resolve {target} to exactly {want:?}");
    tests::eventually(deadline, &what, || async {
        let resolved = fresh.resolve(target).await.map(|r| shown(&r));
        let done = matches!(&resolved, Ok(resolved) if resolved == want);
        *lock(&last) = Some(resolved.map_err(|e| e.to_string()));
        done.then_some(())
    })
    .await
    .map_err(|error| anyhow::anyhow!("{error}; last answer: {:?}", lock(&last)))
}

/// The value behind `mutex`, even if a panicking holder poisoned it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
