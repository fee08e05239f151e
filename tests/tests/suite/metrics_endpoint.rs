//! The `/metrics` endpoint under hostile clients: stalled half-requests,
//! shutdown with live connections, and authentication, scraped by a real
//! Prometheus.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use harness::{eventually, PrometheusServer};
use rpc_ext_metrics::{prometheus, MetricsEndpoint};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Sent by the stalled clients: a request line and one header, never the
/// blank line that ends the head.
const HALF_REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: stalled\r\n";

/// A registry with one sample Prometheus can be asked for.
fn registry_with_marker() -> anyhow::Result<prometheus::Registry> {
    let registry = prometheus::Registry::new();
    let gauge = prometheus::IntGauge::new("endpoint_test_marker", "Set to 7 by the test.")?;
    gauge.set(7);
    registry.register(Box::new(gauge))?;
    Ok(registry)
}

/// Reads until the peer closes (EOF or reset); `Ok(elapsed)` then, or an
/// error after `limit`.
async fn wait_closed(stream: &mut TcpStream, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .with_context(|| format!("connection still open after {limit:?}"))?;
    Ok(started.elapsed())
}

/// Sends one complete request and reads its response head; the
/// connection stays open (HTTP/1.1 keep-alive). Returns the head.
async fn request_on(stream: &mut TcpStream) -> anyhow::Result<String> {
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        if n == 0 {
            bail!("closed before the response head");
        }
        response.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// (a) 1,000 clients that send half a request and stall neither keep a
/// real Prometheus from scraping nor stay open: the cap keeps them from
/// exhausting the process, and the header-read timeout closes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stalled_half_requests_do_not_stop_prometheus() -> anyhow::Result<()> {
    harness::init_test_logging();
    const STALLED: usize = 1000;
    let endpoint = MetricsEndpoint::builder(registry_with_marker()?)
        .max_connections(250)
        .header_read_timeout(Duration::from_secs(1))
        .serve("127.0.0.1:0".parse()?)
        .await?;
    let addr = endpoint.local_addr();

    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel::<()>(STALLED);
    let mut stalled = tokio::task::JoinSet::new();
    for _ in 0..STALLED {
        let connected_tx = connected_tx.clone();
        stalled.spawn(async move {
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(HALF_REQUEST).await?;
            let _ = connected_tx.send(()).await;
            // Beyond the cap they wait in the accept backlog: 4 rounds of
            // the 1 s header timeout, plus slack for a loaded machine.
            wait_closed(&mut stream, Duration::from_secs(30)).await
        });
    }
    drop(connected_tx);
    for _ in 0..STALLED {
        tokio::time::timeout(Duration::from_secs(30), connected_rx.recv())
            .await
            .context("stalled clients could not connect")?
            .context("a stalled client failed")?;
    }

    let prometheus = PrometheusServer::start(&[addr.to_string()]).await?;
    eventually(
        Duration::from_secs(30),
        "prometheus scrapes the endpoint",
        || async {
            let up = prometheus.query_value("up{job=\"rpc\"}").await.ok()??;
            let marker = prometheus
                .query_value("endpoint_test_marker{job=\"rpc\"}")
                .await
                .ok()??;
            (up == 1.0 && marker == 7.0).then_some(())
        },
    )
    .await?;

    let mut closed = 0;
    while let Some(result) = stalled.join_next().await {
        result??;
        closed += 1;
    }
    assert_eq!(closed, STALLED);
    // Prometheus still scrapes after the storm.
    let up = prometheus.query_value("up{job=\"rpc\"}").await?;
    assert_eq!(up, Some(1.0));
    endpoint.shutdown().await;
    Ok(())
}

/// (b) A client that sends half a request and stalls is closed once the
/// header-read timeout passes, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_half_request_is_closed_after_the_header_read_timeout() -> anyhow::Result<()> {
    let timeout = Duration::from_millis(500);
    let endpoint = MetricsEndpoint::builder(prometheus::Registry::new())
        .header_read_timeout(timeout)
        .serve("127.0.0.1:0".parse()?)
        .await?;
    let mut stream = TcpStream::connect(endpoint.local_addr()).await?;
    stream.write_all(HALF_REQUEST).await?;
    let elapsed = wait_closed(&mut stream, Duration::from_secs(5)).await?;
    assert!(
        elapsed >= timeout - Duration::from_millis(100),
        "closed too early: {elapsed:?}"
    );

    // A silent connection, never sending a byte, is closed too.
    let mut silent = TcpStream::connect(endpoint.local_addr()).await?;
    wait_closed(&mut silent, Duration::from_secs(5)).await?;

    // A complete request is still served.
    let mut stream = TcpStream::connect(endpoint.local_addr()).await?;
    let head = request_on(&mut stream).await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    endpoint.shutdown().await;
    Ok(())
}

/// (c) After `shutdown()`, a kept-alive connection is closed (and a stalled
/// one, after the shutdown timeout), and new connections are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_live_connections_and_refuses_new_ones() -> anyhow::Result<()> {
    // Empty: responses have no body, so request heads can follow each other.
    let endpoint = MetricsEndpoint::builder(prometheus::Registry::new())
        .shutdown_timeout(Duration::from_millis(500))
        .serve("127.0.0.1:0".parse()?)
        .await?;
    let addr: SocketAddr = endpoint.local_addr();

    let mut kept_alive = TcpStream::connect(addr).await?;
    for _ in 0..2 {
        let head = request_on(&mut kept_alive).await?;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("content-length: 0\r\n"), "{head}");
    }
    let mut stalled = TcpStream::connect(addr).await?;
    stalled.write_all(HALF_REQUEST).await?;
    // Let the endpoint accept it.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), endpoint.shutdown())
        .await
        .context("shutdown did not finish")?;
    // Default header-read timeout is 10 s: the stalled one was closed by
    // shutdown, within its 500 ms bound.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    wait_closed(&mut kept_alive, Duration::from_secs(2)).await?;
    wait_closed(&mut stalled, Duration::from_secs(2)).await?;
    let refused = TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted after shutdown"
    );
    Ok(())
}

/// (d) Bearer and basic auth: 401 with a challenge without or with wrong
/// credentials, 200 with the right ones; secrets do not show in `Debug`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_and_basic_auth_answer_401_or_200() -> anyhow::Result<()> {
    let http = reqwest::Client::new();

    let builder = MetricsEndpoint::builder(registry_with_marker()?).bearer_token("t0ken-s3cret");
    let debug = format!("{builder:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    let bearer = builder.serve("127.0.0.1:0".parse()?).await?;
    let url = format!("http://{}/metrics", bearer.local_addr());

    let response = http.get(&url).send().await?;
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str()?.to_owned();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    for wrong in ["t0ken-s3cre", "t0ken-s3cret2", "x"] {
        let response = http.get(&url).bearer_auth(wrong).send().await?;
        assert_eq!(response.status(), 401, "token {wrong:?}");
    }
    let response = http
        .get(&url)
        .basic_auth("u", Some("t0ken-s3cret"))
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    let response = http.get(&url).bearer_auth("t0ken-s3cret").send().await?;
    assert_eq!(response.status(), 200);
    assert!(response.text().await?.contains("endpoint_test_marker 7"));

    let builder =
        MetricsEndpoint::builder(registry_with_marker()?).basic_auth("scraper", "pa55-s3cret");
    let debug = format!("{builder:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    let basic = builder.serve("127.0.0.1:0".parse()?).await?;
    let url = format!("http://{}/metrics", basic.local_addr());

    let response = http.get(&url).send().await?;
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str()?.to_owned();
    assert!(challenge.starts_with("Basic"), "{challenge}");
    for (user, password) in [("scraper", "pa55-s3cre"), ("scrapers", "pa55-s3cret")] {
        let response = http
            .get(&url)
            .basic_auth(user, Some(password))
            .send()
            .await?;
        assert_eq!(response.status(), 401, "{user}:{password}");
    }
    let response = http.get(&url).bearer_auth("pa55-s3cret").send().await?;
    assert_eq!(response.status(), 401);
    let response = http
        .get(&url)
        .basic_auth("scraper", Some("pa55-s3cret"))
        .send()
        .await?;
    assert_eq!(response.status(), 200);

    // Unusable settings are refused, naming no secret.
    for builder in [
        MetricsEndpoint::builder(prometheus::Registry::new()).bearer_token(""),
        MetricsEndpoint::builder(prometheus::Registry::new()).bearer_token("has space-s3cret"),
        MetricsEndpoint::builder(prometheus::Registry::new()).basic_auth("a:b", "s3cret"),
        MetricsEndpoint::builder(prometheus::Registry::new()).max_connections(0),
        MetricsEndpoint::builder(prometheus::Registry::new()).header_read_timeout(Duration::ZERO),
    ] {
        let error = builder
            .serve("127.0.0.1:0".parse()?)
            .await
            .expect_err("invalid settings were accepted");
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }

    bearer.shutdown().await;
    basic.shutdown().await;
    Ok(())
}

/// (d) A real Prometheus scrapes with `authorization` and `basic_auth` in
/// its scrape config, and a wrong token shows as `up == 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_with_bearer_and_basic_auth() -> anyhow::Result<()> {
    harness::init_test_logging();
    let bearer = MetricsEndpoint::builder(registry_with_marker()?)
        .bearer_token("t0ken")
        .serve("127.0.0.1:0".parse()?)
        .await?;
    let basic = MetricsEndpoint::builder(registry_with_marker()?)
        .basic_auth("scraper", "pa55 word")
        .serve("127.0.0.1:0".parse()?)
        .await?;
    let jobs = format!(
        "  - job_name: bearer\n    authorization:\n      credentials: t0ken\n    \
         static_configs:\n      - targets: ['{bearer}']\n\
         \x20 - job_name: basic\n    basic_auth:\n      username: scraper\n      password: 'pa55 word'\n    \
         static_configs:\n      - targets: ['{basic}']\n\
         \x20 - job_name: wrong\n    authorization:\n      credentials: wrong\n    \
         static_configs:\n      - targets: ['{bearer}']\n",
        bearer = bearer.local_addr(),
        basic = basic.local_addr(),
    );
    let prometheus = PrometheusServer::start_with_jobs(&jobs).await?;
    eventually(
        Duration::from_secs(30),
        "scrapes with credentials",
        || async {
            let ok = value(&prometheus, "up{job=\"bearer\"}").await == Some(1.0)
                && value(&prometheus, "up{job=\"basic\"}").await == Some(1.0)
                && value(&prometheus, "up{job=\"wrong\"}").await == Some(0.0)
                && value(&prometheus, "endpoint_test_marker{job=\"bearer\"}").await == Some(7.0)
                && value(&prometheus, "endpoint_test_marker{job=\"basic\"}").await == Some(7.0);
            ok.then_some(())
        },
    )
    .await?;
    bearer.shutdown().await;
    basic.shutdown().await;
    Ok(())
}

/// The value of the first sample of an instant query; `None` until the
/// query answers with one.
async fn value(prometheus: &PrometheusServer, promql: &str) -> Option<f64> {
    prometheus.query_value(promql).await.ok().flatten()
}
