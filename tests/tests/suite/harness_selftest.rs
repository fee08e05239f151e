//! The harness starts real servers, and stops them.

use std::time::Duration;

use tests::{
    eventually, EtcdServer, PrometheusServer, ZooKeeperEnsemble, ZooKeeperServer,
    ZOOKEEPER_MIN_SESSION_TIMEOUT,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_starts_serves_and_dies_with_its_guard() -> anyhow::Result<()> {
    let etcd = EtcdServer::start().await?;
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    client.put("harness/key", "value", None).await?;
    let response = client.get("harness/key", None).await?;
    assert_eq!(response.kvs()[0].value_str()?, "value");

    let pid = etcd.pid().expect("etcd runs");
    drop(etcd);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "etcd process {pid} outlived its guard"
    );
    Ok(())
}

/// Serves a fixed exposition on every connection.
async fn serve_fixed_metrics(listener: TcpListener) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let body = "# TYPE harness_answer gauge\nharness_answer 42\n";
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_target_and_answers_queries() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?.to_string();
    tokio::spawn(serve_fixed_metrics(listener));

    let prometheus = PrometheusServer::start(&[target]).await?;
    let answer = eventually(Duration::from_secs(20), "a scraped sample", || async {
        prometheus
            .query_value(r#"harness_answer{job="rpc"}"#)
            .await
            .ok()
            .flatten()
    })
    .await?;
    assert_eq!(answer, 42.0);

    let targets = prometheus.targets().await?;
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0]["health"], "up");

    let pid = prometheus.pid().expect("prometheus runs");
    drop(prometheus);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    Ok(())
}

/// A plain client of `connect_string` with a short session, as the tests use.
async fn zookeeper_client(connect_string: &str) -> anyhow::Result<zookeeper_client::Client> {
    Ok(zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(2))
        .connect(connect_string)
        .await?)
}

fn persistent() -> zookeeper_client::CreateOptions<'static> {
    zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_serves_keeps_data_across_a_restart_and_dies_with_its_guard() -> anyhow::Result<()>
{
    let mut zookeeper = ZooKeeperServer::start().await?;
    assert_eq!(zookeeper.mode().await.as_deref(), Some("standalone"));
    let client = zookeeper_client(&zookeeper.connect_string()).await?;
    client.create("/harness", b"kept", &persistent()).await?;

    // The short ticks of the generated zoo.cfg are in force: the shortest
    // session the server grants is 400 ms (ZooKeeper's default: 4 s).
    let short = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_millis(100))
        .connect(&zookeeper.connect_string())
        .await?;
    assert_eq!(short.session_timeout(), ZOOKEEPER_MIN_SESSION_TIMEOUT);
    drop(short);

    // Paused, it answers nothing; resumed, it serves on.
    zookeeper.pause()?;
    assert_eq!(zookeeper.mode().await, None);
    zookeeper.resume()?;
    assert_eq!(zookeeper.mode().await.as_deref(), Some("standalone"));

    let old_pid = zookeeper.pid().expect("ZooKeeper runs");
    zookeeper.kill();
    assert!(!std::path::Path::new(&format!("/proc/{old_pid}")).exists());
    assert_eq!(zookeeper.mode().await, None, "a killed server answers");
    zookeeper.restart().await?;
    let client = zookeeper_client(&zookeeper.connect_string()).await?;
    assert_eq!(client.get_data("/harness").await?.0, b"kept");

    zookeeper.wipe_and_restart().await?;
    let client = zookeeper_client(&zookeeper.connect_string()).await?;
    assert_eq!(
        client.check_stat("/harness").await?,
        None,
        "data survived a wipe"
    );

    let pid = zookeeper.pid().expect("ZooKeeper runs");
    drop(zookeeper);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "ZooKeeper process {pid} outlived its guard"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_ensemble_elects_a_leader_and_survives_losing_it() -> anyhow::Result<()> {
    let mut ensemble = ZooKeeperEnsemble::start(3).await?;
    let mut modes = Vec::new();
    for member in &ensemble.members {
        modes.push(member.mode().await.unwrap_or_default());
    }
    let leader = modes
        .iter()
        .position(|mode| mode == "leader")
        .expect("a leader");
    modes.sort();
    assert_eq!(modes, ["follower", "follower", "leader"]);

    let client = zookeeper_client(&ensemble.connect_string()).await?;
    client.create("/before", b"1", &persistent()).await?;

    // Losing the leader is the hardest loss: the two left elect another.
    ensemble.members[leader].kill();
    let created = eventually(
        Duration::from_secs(60),
        "a write after the loss",
        || async {
            match client.create("/after", b"2", &persistent()).await {
                Ok(_) | Err(zookeeper_client::Error::NodeExists) => Some(()),
                Err(_) => None,
            }
        },
    )
    .await;
    created?;
    let mut left = Vec::new();
    for (i, member) in ensemble.members.iter().enumerate() {
        if i != leader {
            left.push(member.mode().await.unwrap_or_default());
        }
    }
    left.sort();
    assert_eq!(left, ["follower", "leader"]);

    // Back, it follows and holds what was written while it was down.
    ensemble.members[leader].restart().await?;
    let back = &ensemble.members[leader];
    assert_eq!(back.mode().await.as_deref(), Some("follower"));
    let direct = zookeeper_client(&back.connect_string()).await?;
    direct.sync("/").await?;
    assert_eq!(direct.get_data("/before").await?.0, b"1");
    assert_eq!(direct.get_data("/after").await?.0, b"2");

    let pids: Vec<u32> = ensemble.members.iter().filter_map(|m| m.pid()).collect();
    assert_eq!(pids.len(), 3);
    drop(ensemble);
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    Ok(())
}
