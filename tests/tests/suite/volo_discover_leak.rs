//! Dropping a `VoloDiscover` (and the resolver it owns) stops its forward
//! tasks and releases their etcd watches, even for a quiet service whose
//! watch never fires again; so does dropping a tonic balanced channel.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::Context;
use rpc_ext_registry::{etcd::EtcdResolver, volo::VoloDiscover};
use tests::{eventually, EtcdServer};
use volo::discovery::Discover;

/// How long the tasks and watches may take to go after the drop.
const RELEASE_DEADLINE: Duration = Duration::from_secs(5);

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The task count once it has stayed the same for half a second (the health
/// checks of `EtcdServer::start` leave connection tasks that end shortly).
async fn settled_tasks() -> usize {
    let mut count = alive_tasks();
    let mut steady = 0;
    while steady < 5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = alive_tasks();
        steady = if now == count { steady + 1 } else { 0 };
        count = now;
    }
    count
}

/// etcd's count of open watchers, from its Prometheus metrics. A plain
/// blocking HTTP/1.0 request, so that scraping spawns no tokio task of its
/// own into the count under test.
fn etcd_watchers(etcd: &EtcdServer) -> anyhow::Result<u64> {
    let authority = etcd
        .endpoint()
        .strip_prefix("http://")
        .context("etcd endpoint is http")?
        .to_owned();
    let mut stream = TcpStream::connect(&authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .lines()
        .find_map(|line| line.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .context("etcd_debugging_mvcc_watcher_total missing from /metrics")?
        .trim()
        .parse::<f64>()
        .map(|value| value as u64)
        .context("bad etcd_debugging_mvcc_watcher_total")
}

/// Waits until the task and watcher counts are back at their baselines.
async fn released(
    etcd: &EtcdServer,
    baseline_tasks: usize,
    baseline_watchers: u64,
) -> anyhow::Result<()> {
    let outcome = eventually(
        RELEASE_DEADLINE,
        "the drop to release everything",
        || async {
            let (tasks, watchers) = (alive_tasks(), etcd_watchers(etcd).ok()?);
            (tasks == baseline_tasks && watchers == baseline_watchers).then_some(())
        },
    )
    .await;
    outcome.with_context(|| {
        format!(
            "{} tokio tasks alive (baseline {baseline_tasks}), etcd has {:?} watchers \
             (baseline {baseline_watchers})",
            alive_tasks(),
            etcd_watchers(etcd)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_volo_discover_releases_its_task_and_etcd_watch() -> anyhow::Result<()> {
    tests::init_test_logging();
    let etcd = EtcdServer::start().await?;
    let baseline_tasks = settled_tasks().await;
    let baseline_watchers = etcd_watchers(&etcd)?;

    let resolver = EtcdResolver::builder([etcd.endpoint()]).build().await?;
    let discover = VoloDiscover::new(resolver);
    let changes = discover.watch(None).expect("watch is supported");
    // A quiet service: nothing is registered, so its watch never fires.
    let endpoint = volo::context::Endpoint::new("quiet".into());
    assert!(discover.discover(&endpoint).await?.is_empty());
    // A clone, as Volo's load balancer keeps one: all must go for the task to stop.
    let clone = discover.clone();
    assert!(clone.discover(&endpoint).await?.is_empty());

    eventually(RELEASE_DEADLINE, "the etcd watch to be open", || async {
        (etcd_watchers(&etcd).ok()? > baseline_watchers).then_some(())
    })
    .await?;
    assert!(
        alive_tasks() > baseline_tasks,
        "the forwarder and the resolver's watch run as tasks"
    );

    drop(changes);
    drop(clone);
    drop(discover);

    released(&etcd, baseline_tasks, baseline_watchers).await?;
    Ok(())
}

/// The tower adapter has no such leak: its forward task stops when tonic's
/// balancer, owned by the channel, goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_balanced_channel_releases_its_task_and_etcd_watch() -> anyhow::Result<()> {
    tests::init_test_logging();
    let etcd = EtcdServer::start().await?;
    let baseline_tasks = settled_tasks().await;
    let baseline_watchers = etcd_watchers(&etcd)?;

    let resolver = EtcdResolver::builder([etcd.endpoint()]).build().await?;
    let channel = rpc_ext_registry::tonic::balanced_channel(&resolver, "quiet").await?;
    drop(resolver);
    eventually(RELEASE_DEADLINE, "the etcd watch to be open", || async {
        (etcd_watchers(&etcd).ok()? > baseline_watchers).then_some(())
    })
    .await?;

    drop(channel);
    released(&etcd, baseline_tasks, baseline_watchers).await?;
    Ok(())
}
