//! One hundred network and lease faults against a running etcd registration
//! and resolver: nothing is lost, and neither tasks nor memory grow.
//!
//! A test binary of its own with a single test, so the process's resident
//! memory and the runtime's task count measure this loop and nothing else.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use etcd_client::GetOptions;
use rpc_ext_registry::{
    etcd::{encode_instance, EtcdRegistry, EtcdResolver},
    Instance, Registry, Resolver, ServiceWatch,
};
use tests::{EtcdServer, FaultProxy};
use tokio::time::Instant;

const FAULTS: usize = 100;
const WARM_UP_FAULTS: usize = 8;
/// Lease TTL 2 s, renewal every 667 ms, backoff capped at 300 ms: a lost
/// lease is replaced within about a second.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(20);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Resident memory of this process, from `/proc/self/status`.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Everything the test expects etcd and the resolvers to show.
struct Truth {
    alpha: BTreeSet<u16>,
    beta: BTreeSet<u16>,
}

struct World {
    proxy: FaultProxy,
    raw: etcd_client::Client,
    registry: EtcdRegistry,
    registered_keys: Vec<String>,
    alpha: ServiceWatch,
    beta: ServiceWatch,
    truth: Truth,
}

impl World {
    /// Waits until etcd holds every registration and both watches show the
    /// truth without an error; returns how long that took.
    async fn converged(&mut self, since: Instant) -> anyhow::Result<Duration> {
        let deadline = since + RECOVERY_DEADLINE;
        loop {
            let stored = self
                .raw
                .get("/registry-ext/", Some(GetOptions::new().with_prefix()))
                .await?;
            let stored: BTreeSet<String> = stored
                .kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect();
            let registrations_present = self.registered_keys.iter().all(|k| stored.contains(k));
            if registrations_present
                && shows(&self.alpha, &self.truth.alpha)
                && shows(&self.beta, &self.truth.beta)
            {
                return Ok(since.elapsed());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "no convergence within {RECOVERY_DEADLINE:?}: stored {stored:?}, alpha {:?} (want {:?}), beta {:?} (want {:?})",
                    self.alpha.current(),
                    self.truth.alpha,
                    self.beta.current(),
                    self.truth.beta
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Injects fault number `n`; each kind comes round every fourth fault.
    async fn inject(&mut self, n: usize) -> anyhow::Result<()> {
        match n % 4 {
            // Every connection cut at once: watches and keep-alives break.
            0 => self.proxy.cut(),
            // A short partition (under the lease TTL).
            1 => {
                self.proxy.set_refusing(true);
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.proxy.set_refusing(false);
            }
            // A change made while the resolvers are cut off must still
            // reach them afterwards.
            2 => {
                self.proxy.set_refusing(true);
                tokio::time::sleep(Duration::from_millis(100)).await;
                let port = 8100 + u16::try_from(n % 3).unwrap_or(0);
                let key = format!("/registry-ext/alpha/{}", addr(port));
                if self.truth.alpha.remove(&port) {
                    self.raw.delete(key, None).await?;
                } else {
                    let value = encode_instance(&Instance::new("alpha", addr(port)));
                    self.raw.put(key, value, None).await?;
                    self.truth.alpha.insert(port);
                }
                self.proxy.set_refusing(false);
            }
            // A lease lost behind the registry's back.
            _ => {
                let key = &self.registered_keys[n % self.registered_keys.len()];
                let lease = self
                    .raw
                    .get(key.as_str(), None)
                    .await?
                    .kvs()
                    .first()
                    .map(etcd_client::KeyValue::lease);
                if let Some(lease) = lease {
                    self.raw.lease_revoke(lease).await?;
                }
            }
        }
        Ok(())
    }
}

fn shows(watch: &ServiceWatch, ports: &BTreeSet<u16>) -> bool {
    let current = watch.current();
    current.last_error.is_none()
        && current
            .instances
            .iter()
            .map(|i| i.address)
            .eq(ports.iter().map(|p| addr(*p)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_faults_lose_nothing_and_leak_nothing() -> anyhow::Result<()> {
    tests::init_test_logging();
    let etcd = EtcdServer::start().await?;
    let proxy = FaultProxy::in_front_of(&etcd.endpoint()).await?;
    let raw = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let registry = EtcdRegistry::builder([proxy.endpoint()])
        .ttl(Duration::from_secs(2))
        .max_backoff(Duration::from_millis(300))
        .build()
        .await?;
    let resolver = EtcdResolver::builder([proxy.endpoint()])
        .max_backoff(Duration::from_millis(300))
        .build()
        .await?;

    let mut registrations = Vec::new();
    for (service, port) in [
        ("alpha", 8001),
        ("alpha", 8002),
        ("beta", 9001),
        ("beta", 9002),
    ] {
        registrations.push(
            registry
                .register(Instance::new(service, addr(port)))
                .await?,
        );
    }
    let registered_keys = registrations
        .iter()
        .map(|r| registry.key_of(r.instance()))
        .collect();
    let mut world = World {
        alpha: resolver.subscribe("alpha").await?,
        beta: resolver.subscribe("beta").await?,
        proxy,
        raw,
        registry,
        registered_keys,
        truth: Truth {
            alpha: [8001, 8002].into(),
            beta: [9001, 9002].into(),
        },
    };
    world.converged(Instant::now()).await?;

    // Warm up: the first faults grow connection pools and buffers once.
    for n in 0..WARM_UP_FAULTS {
        world.inject(n).await?;
        world.converged(Instant::now()).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (tasks_before, rss_before) = (alive_tasks(), rss_kib());
    let accepted_before = world.proxy.accepted();

    let mut slowest = Duration::ZERO;
    let mut total = Duration::ZERO;
    for n in 0..FAULTS {
        let started = Instant::now();
        world.inject(n).await?;
        let took = world
            .converged(started)
            .await
            .map_err(|e| e.context(format!("after fault {n} (kind {})", n % 4)))?;
        slowest = slowest.max(took);
        total += took;
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (tasks_after, rss_after) = (alive_tasks(), rss_kib());
    let reconnects = world.proxy.accepted() - accepted_before;
    eprintln!(
        "faults survived: {FAULTS}; registrations lost: 0; updates lost: 0; \
         recovery mean {:?}, max {slowest:?}; reconnects {reconnects}; \
         tasks {tasks_before} -> {tasks_after}; RSS {rss_before} KiB -> {rss_after} KiB",
        total / u32::try_from(FAULTS).unwrap_or(1),
    );
    assert!(
        reconnects >= 50,
        "the faults did not break connections ({reconnects} reconnects)"
    );
    assert!(
        tasks_after <= tasks_before + 2,
        "tasks grew from {tasks_before} to {tasks_after}"
    );
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // Shutdown still deregisters everything after all that.
    for registration in registrations {
        registration.deregister().await?;
    }
    world.truth.alpha.retain(|p| *p >= 8100);
    world.truth.beta.clear();
    world.registered_keys.clear();
    world.converged(Instant::now()).await?;
    let left = world
        .raw
        .get("/registry-ext/", Some(GetOptions::new().with_prefix()))
        .await?
        .kvs()
        .len();
    assert_eq!(left, world.truth.alpha.len(), "deregistered keys remain");
    drop(world.registry);
    Ok(())
}
