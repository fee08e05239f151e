//! The harness starts real servers, and stops them.

use std::time::Duration;

use tests::{eventually, EtcdServer, PrometheusServer};
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
