//! Discovery latency against a real etcd: how long after `register` a
//! resolver's watch (and Volo's `Discover::watch`) shows the instance.
//!
//! ```text
//! cargo bench -p tests --bench discovery
//! ```
//! Prints p50/p90/p99/max over 1,000 registrations. Needs `etcd` on PATH.

use std::time::{Duration, Instant};

use rpc_ext_registry::{
    etcd::{EtcdRegistry, EtcdResolver},
    volo::VoloDiscover,
    Instance, Registry, Resolver,
};
use tests::EtcdServer;
use volo::discovery::Discover;

const REGISTRATIONS: usize = 1_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<44} n={} p50={:>8.3?} p90={:>8.3?} p99={:>8.3?} max={:>8.3?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // `cargo test --benches` and `cargo bench --no-run` build this; only run it for real.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return Ok(());
    }
    let etcd = EtcdServer::start().await?;
    let registry = EtcdRegistry::builder([etcd.endpoint()]).build().await?;
    let resolver = EtcdResolver::builder([etcd.endpoint()]).build().await?;
    let mut watch = resolver.subscribe("bench").await?;
    let discover = VoloDiscover::new(resolver.clone());
    let endpoint = volo::context::Endpoint::new("bench".into());
    discover.discover(&endpoint).await?;
    let mut changes = discover.watch(None).expect("watch");

    let mut register_to_watch = Vec::with_capacity(REGISTRATIONS);
    let mut register_to_volo = Vec::with_capacity(REGISTRATIONS);
    let mut registrations = Vec::with_capacity(REGISTRATIONS);
    for i in 0..REGISTRATIONS {
        let port = 20_000 + i as u16;
        let start = Instant::now();
        registrations.push(
            registry
                .register(Instance::new("bench", ([127, 0, 0, 1], port).into()))
                .await?,
        );
        watch
            .wait_for(|instances| instances.iter().any(|x| x.address.port() == port))
            .await?;
        register_to_watch.push(start.elapsed());
        loop {
            let change = changes.recv().await?;
            if change
                .added
                .iter()
                .any(|x| format!("{:?}", x.address).contains(&port.to_string()))
            {
                break;
            }
        }
        register_to_volo.push(start.elapsed());
    }
    report("register() start -> ServiceWatch update", register_to_watch);
    report("register() start -> Volo Discover Change", register_to_volo);

    let mut deregister_to_watch = Vec::with_capacity(REGISTRATIONS);
    for registration in registrations {
        let port = registration.instance().address.port();
        let start = Instant::now();
        registration.deregister().await?;
        watch
            .wait_for(|instances| instances.iter().all(|x| x.address.port() != port))
            .await?;
        deregister_to_watch.push(start.elapsed());
    }
    report(
        "deregister() start -> ServiceWatch update",
        deregister_to_watch,
    );
    Ok(())
}
