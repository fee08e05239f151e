//! Backend fixtures: each one a running registry backend behind the one
//! trait [`BackendFixture`], so that a scenario written once (the suite's
//! `conformance` module, the benches) runs against every backend.
//!
//! A fixture starts its backend — a real server, a stand-in, or a
//! connection to the real one the environment names — builds registries and
//! resolvers connected to it with short TTLs, backoffs and intervals (so
//! scenarios run in seconds), reads what the backend itself holds, and, when
//! it can, takes the backend down, brings it back, and restarts it losing
//! its data.
//!
//! | fixture | backend | outage | data loss | expiry |
//! |---|---|---|---|---|
//! | [`MemoryFixture`] | [`MemoryRegistry`](rpc_ext_registry::MemoryRegistry) | no | no | no |
//! | [`EtcdFixture`] | a real etcd ([`EtcdServer`](crate::EtcdServer)), killed and restarted | yes | yes (data directory wiped) | 2 s lease TTL |
//! | [`ConsulFixture`] | the stand-in agent behind a [`FaultProxy`](crate::FaultProxy), or the real agent at `CONSUL_HTTP_ADDR` | stand-in | stand-in (its restart) | 2 s TTL check |
//! | [`DirectoryFixture`] | a temporary [`DirectoryRegistry`](crate::directory_registry::DirectoryRegistry) root | root renamed away | every file removed | 2 s without a heartbeat |
//! | [`ZooKeeperFixture`] | a real ZooKeeper ([`ZooKeeperServer`](crate::ZooKeeperServer)), killed and restarted | yes | yes (data directory wiped: every session gone) | 2 s session |
//! | [`K8sFixture`] | the stand-in API server behind a [`FaultProxy`](crate::FaultProxy), or the real cluster of `KUBECONFIG` | stand-in | stand-in (slices and Leases deleted) | 2 s Lease |
//!
//! A real Consul agent or cluster cannot be taken down or wiped by a test,
//! so those fixtures report the capabilities as absent
//! ([`BackendFixture::capabilities`]) and [`BackendFixture::start`], asked
//! for them, starts the stand-in even when a real backend is configured.
//!
//! # Adding a backend
//!
//! 1. A module here with a type owning the running backend and its
//!    `impl BackendFixture`: `start` (honouring `needs`, failing when it
//!    cannot provide them), `registry`, `resolver`, `stored` (read straight
//!    from the backend, not through the resolver under test), and the
//!    outage and data-loss methods it supports. Override `service_name`,
//!    `target`, `address` and `as_resolved` where the backend's names,
//!    addresses or instances differ from the defaults (the Kubernetes
//!    fixture does all four). Re-export the type below.
//! 2. One line in `tests/tests/suite/conformance/mod.rs`, naming the
//!    scenario groups the backend runs, for example
//!
//!    ```text
//!    conformance!(zookeeper: tests::backends::ZooKeeperFixture; core, weights, expiry, outage, data_loss);
//!    ```
//!
//!    with a comment saying why any group is left out. A group left out
//!    generates no test, so a scenario a backend cannot run never passes
//!    silently; a group named for a fixture that lacks its capability fails
//!    at its first step.

mod consul;
mod directory;
mod etcd;
mod k8s;
mod memory;
mod zookeeper;

use std::{future::Future, net::SocketAddr, time::Duration};

use rpc_ext_registry::{Instance, Registry, Resolver};

pub use consul::ConsulFixture;
pub use directory::DirectoryFixture;
pub use etcd::EtcdFixture;
pub use k8s::K8sFixture;
pub use memory::MemoryFixture;
pub use zookeeper::ZooKeeperFixture;

/// What a running backend lets a test do to it beyond registering and
/// resolving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// [`BackendFixture::take_down`] and [`BackendFixture::bring_back`].
    pub outage: bool,
    /// [`BackendFixture::restart_losing_data`].
    pub data_loss: bool,
}

impl Capabilities {
    /// Registering and resolving only.
    pub const NONE: Self = Self {
        outage: false,
        data_loss: false,
    };
    /// Taking the backend down and bringing it back.
    pub const OUTAGE: Self = Self {
        outage: true,
        data_loss: false,
    };
    /// Restarting the backend without its data.
    pub const DATA_LOSS: Self = Self {
        outage: false,
        data_loss: true,
    };
    /// Everything.
    pub const ALL: Self = Self {
        outage: true,
        data_loss: true,
    };

    /// Whether these capabilities include every one of `needs`.
    pub fn covers(self, needs: Self) -> bool {
        (self.outage || !needs.outage) && (self.data_loss || !needs.data_loss)
    }
}

/// A running registry backend, with registries and resolvers connected to
/// it. Dropping it stops what it started.
pub trait BackendFixture: Sized + Send + Sync + 'static {
    /// The registry type of the backend.
    type Registry: Registry + 'static;
    /// The resolver type of the backend.
    type Resolver: Resolver;

    /// The backend's name in test names and messages.
    const NAME: &'static str;

    /// Starts the backend (or connects to the configured real one) with at
    /// least the capabilities `needs`; fails if this backend has none that
    /// covers them.
    fn start(needs: Capabilities) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// What is running, for test output: "the stand-in", "the agent at …".
    fn describe(&self) -> String;

    /// What this running backend can do.
    fn capabilities(&self) -> Capabilities;

    /// How long a registration lives without being renewed (lease TTL,
    /// TTL check, Lease duration), `None` when registrations never expire.
    fn ttl(&self) -> Option<Duration>;

    /// A new registry connected to the backend: a process of its own, as
    /// far as the backend can tell.
    fn registry(&self) -> impl Future<Output = anyhow::Result<Self::Registry>> + Send;

    /// A new resolver connected to the backend, with nothing cached.
    fn resolver(&self) -> impl Future<Output = anyhow::Result<Self::Resolver>> + Send;

    /// The addresses the backend itself holds for `service`, read straight
    /// from it (not through a resolver), sorted.
    fn stored(&self, service: &str)
        -> impl Future<Output = anyhow::Result<Vec<SocketAddr>>> + Send;

    /// A service name for `base` that the backend accepts and that no
    /// other test uses (unchanged unless the backend is shared, such as a
    /// real agent).
    fn service_name(&self, base: &str) -> String {
        base.to_owned()
    }

    /// What a resolver subscribes to for `service`.
    fn target(&self, service: &str) -> String {
        service.to_owned()
    }

    /// The address of an instance listening on `port`.
    fn address(&self, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The instance a resolver returns for `registered`: what the backend
    /// stores of it (unchanged unless it drops some fields).
    fn as_resolved(&self, registered: &Instance) -> Instance {
        registered.clone()
    }

    /// Makes the backend unreachable for registries and resolvers, keeping
    /// its data.
    fn take_down(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Err(missing::<Self>("take its backend down")) }
    }

    /// Makes the backend reachable again after [`take_down`](Self::take_down),
    /// with the data it had.
    fn bring_back(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Err(missing::<Self>("bring its backend back")) }
    }

    /// Restarts the backend without any of its data (a wiped store, an
    /// agent that forgot its registrations); returns once it serves again.
    fn restart_losing_data(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Err(missing::<Self>("restart its backend losing data")) }
    }
}

/// The error of a capability `F` does not have.
fn missing<F: BackendFixture>(what: &str) -> anyhow::Error {
    anyhow::anyhow!("the {} fixture cannot {what}", F::NAME)
}

/// Fails unless `have` covers `needs`.
fn ensure_covers<F: BackendFixture>(have: Capabilities, needs: Capabilities) -> anyhow::Result<()> {
    anyhow::ensure!(
        have.covers(needs),
        "the {} fixture has {have:?}, the test needs {needs:?}",
        F::NAME
    );
    Ok(())
}

/// `base` with a suffix no other test run uses: the process id and a
/// random number, for names on a backend shared with other runs (a real
/// agent or cluster). Lowercase letters, digits and `-` only, so that it
/// stays a Kubernetes Service name when `base` is one.
fn unique_name(base: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let salt = RandomState::new().hash_one((
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now(),
    ));
    format!("{base}-{}-{}", std::process::id(), salt % 1_000_000)
}

/// How long the fixtures' registrations live without renewal.
const TTL: Duration = Duration::from_secs(2);

/// The fixtures' cap on retry backoff after a failure.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
