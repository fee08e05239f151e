//! Discovery latency for every registry backend: how long after `register`
//! starts a resolver's watch shows the instance, and Volo's
//! `Discover::watch` sends the change; then how long after `deregister`
//! starts the watch drops it.
//!
//! ```text
//! cargo bench -p tests --bench discovery
//! DISCOVERY_BACKENDS=etcd,zookeeper DISCOVERY_REGISTRATIONS=200 cargo bench -p tests --bench discovery
//! ```
//! Each backend runs behind its test fixture (`tests::backends`): real etcd
//! and ZooKeeper servers, the Consul and Kubernetes stand-ins (or the real
//! ones `CONSUL_HTTP_ADDR` / `KUBECONFIG` name), the in-process registry and
//! the directory backend built on the public kit. Prints p50/p90/p99/max
//! over 1,000 registrations per backend, one after the other, all
//! registrations held until the deregistration pass, so the last ones are
//! seen among 999 others.

use std::time::{Duration, Instant};

use rpc_ext_registry::{volo::VoloDiscover, Instance, Registry, Resolver};
use tests::backends::{
    BackendFixture, Capabilities, ConsulFixture, DirectoryFixture, EtcdFixture, K8sFixture,
    MemoryFixture, ZooKeeperFixture,
};
use volo::discovery::Discover;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn report(backend: &str, what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{backend:<10} {what:<34} n={} p50={:>9.3?} p90={:>9.3?} p99={:>9.3?} max={:>9.3?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
    );
}

async fn run<F: BackendFixture>(registrations: usize) -> anyhow::Result<()> {
    let fixture = F::start(Capabilities::NONE).await?;
    eprintln!("{}: {}", F::NAME, fixture.describe());
    let registry = fixture.registry().await?;
    let resolver = fixture.resolver().await?;
    let service = fixture.service_name("bench");
    let target = fixture.target(&service);
    let mut watch = resolver.subscribe(&target).await?;
    let discover = VoloDiscover::new(resolver);
    discover
        .discover(&volo::context::Endpoint::new(target.clone().into()))
        .await?;
    let mut changes = discover.watch(None).expect("VoloDiscover always watches");

    let mut to_watch = Vec::with_capacity(registrations);
    let mut to_volo = Vec::with_capacity(registrations);
    let mut held = Vec::with_capacity(registrations);
    for i in 0..registrations {
        let address = fixture.address(20_000 + i as u16);
        let start = Instant::now();
        held.push(
            registry
                .register(Instance::new(service.as_str(), address))
                .await?,
        );
        watch
            .wait_for(|instances| instances.iter().any(|x| x.address == address))
            .await?;
        to_watch.push(start.elapsed());
        let wanted = volo::net::Address::from(address);
        loop {
            let change = changes.recv().await?;
            if change.added.iter().any(|x| x.address == wanted) {
                break;
            }
        }
        to_volo.push(start.elapsed());
    }
    report(F::NAME, "register -> ServiceWatch", to_watch);
    report(F::NAME, "register -> Volo Discover Change", to_volo);

    let mut to_gone = Vec::with_capacity(registrations);
    for registration in held {
        let address = registration.instance().address;
        let start = Instant::now();
        registration.deregister().await?;
        watch
            .wait_for(|instances| instances.iter().all(|x| x.address != address))
            .await?;
        to_gone.push(start.elapsed());
    }
    report(F::NAME, "deregister -> ServiceWatch", to_gone);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // `cargo test --benches` and `cargo bench --no-run` build this; only run it for real.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return Ok(());
    }
    let registrations = match std::env::var("DISCOVERY_REGISTRATIONS") {
        Ok(n) => n.parse()?,
        Err(_) => 1_000,
    };
    let chosen = std::env::var("DISCOVERY_BACKENDS").ok();
    let wanted = |name: &str| {
        chosen
            .as_deref()
            .is_none_or(|list| list.split(',').any(|x| x.trim() == name))
    };
    if wanted(MemoryFixture::NAME) {
        run::<MemoryFixture>(registrations).await?;
    }
    if wanted(EtcdFixture::NAME) {
        run::<EtcdFixture>(registrations).await?;
    }
    if wanted(ZooKeeperFixture::NAME) {
        run::<ZooKeeperFixture>(registrations).await?;
    }
    if wanted(ConsulFixture::NAME) {
        run::<ConsulFixture>(registrations).await?;
    }
    if wanted(K8sFixture::NAME) {
        run::<K8sFixture>(registrations).await?;
    }
    if wanted(DirectoryFixture::NAME) {
        run::<DirectoryFixture>(registrations).await?;
    }
    Ok(())
}
