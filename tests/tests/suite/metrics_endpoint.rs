//! The `/metrics` endpoint under hostile clients: stalled half-requests,
//! shutdown with live connections, and authentication, scraped by a real
//! Prometheus.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use rpc_ext_metrics::{prometheus, MetricsEndpoint};
use tests::{eventually, PrometheusServer};
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
    tests::init_test_logging();
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
    prometheus
        .wait_for_scrape("endpoint_test_marker", 7.0)
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
    tests::init_test_logging();
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

/// Reads one whole HTTP/1.1 response (head, then a body framed by
/// `Content-Length` or chunked encoding) and returns the status line and
/// body; the connection stays open. Fails if the peer closes first.
async fn read_response(stream: &mut TcpStream) -> anyhow::Result<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let head_len = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        fill(stream, &mut data).await?;
    };
    let head = String::from_utf8_lossy(&data[..head_len]).to_ascii_lowercase();
    let status = head.lines().next().unwrap_or_default().to_owned();
    let mut rest = data.split_off(head_len);
    let header = |name: &str| {
        head.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
    };
    if let Some(length) = header("content-length") {
        let length: usize = length.parse().context("bad content-length")?;
        while rest.len() < length {
            fill(stream, &mut rest).await?;
        }
        if rest.len() > length {
            bail!("{} bytes after the body", rest.len() - length);
        }
        return Ok((status, rest));
    }
    if header("transfer-encoding").as_deref() != Some("chunked") {
        bail!("response with neither content-length nor chunked: {head}");
    }
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
                break at;
            }
            fill(stream, &mut rest).await?;
        };
        let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        // The chunk and its CRLF (for the last, empty chunk: the CRLF that
        // ends the trailers, none expected here).
        while rest.len() < line_end + 2 + size + 2 {
            fill(stream, &mut rest).await?;
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest.drain(..line_end + 2 + size + 2);
        if size == 0 {
            if !rest.is_empty() {
                bail!("{} bytes after the last chunk", rest.len());
            }
            return Ok((status, body));
        }
    }
}

/// Appends what the peer sends next to `data`; fails on EOF or after 5 s.
async fn fill(stream: &mut TcpStream, data: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .context("no response within 5 s")??;
    if n == 0 {
        bail!("closed before the whole response arrived");
    }
    data.extend_from_slice(&buf[..n]);
    Ok(())
}

/// Sends one complete kept-alive `GET /metrics` and reads its whole
/// response; returns the body, failing unless the status is 200.
async fn scrape_on(stream: &mut TcpStream) -> anyhow::Result<String> {
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
        .await?;
    let (status, body) = read_response(stream).await?;
    if !status.starts_with("http/1.1 200") {
        bail!("unexpected status {status:?}");
    }
    Ok(String::from_utf8(body)?)
}

/// Asserts that the server closes `stream`, on which nothing is sent any
/// more, one idle timeout after the last response was read (the caller
/// calls it straight after): not before, less a little slack, and not
/// much after. Returns the time it took.
async fn assert_closed_after_idle(
    stream: &mut TcpStream,
    idle: Duration,
    what: &str,
) -> anyhow::Result<Duration> {
    let elapsed = wait_closed(stream, idle + Duration::from_secs(5))
        .await
        .with_context(|| format!("{what}: never closed"))?;
    assert!(
        elapsed >= idle - Duration::from_millis(20),
        "{what}: closed after {elapsed:?}, before the {idle:?} idle timeout"
    );
    assert!(
        elapsed < idle + Duration::from_secs(1),
        "{what}: closed only after {elapsed:?}, idle timeout {idle:?}"
    );
    Ok(elapsed)
}

/// (e) The idle timeout on a real socket: a kept-alive connection left
/// silent after a complete response is closed once the idle timeout
/// passes (well before the header-read timeout), not before; one that
/// sends a request every 300 ms (each gap under the 500 ms timeout) stays
/// open across 6 requests spanning 1.5 s, three times the timeout: the
/// clock restarts with each request, so it is an idle timeout and not a
/// cap on a connection's life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout_not_while_in_use(
) -> anyhow::Result<()> {
    tests::init_test_logging();
    let idle = Duration::from_millis(500);
    let endpoint = MetricsEndpoint::builder(registry_with_marker()?)
        .idle_timeout(idle)
        // Far longer, so only the idle timeout can close the connection.
        .header_read_timeout(Duration::from_secs(10))
        .serve("127.0.0.1:0".parse()?)
        .await?;
    let addr = endpoint.local_addr();

    // One request, then silence.
    let mut stream = TcpStream::connect(addr).await?;
    let body = scrape_on(&mut stream).await?;
    assert!(body.contains("endpoint_test_marker 7\n"), "{body}");
    let elapsed = assert_closed_after_idle(&mut stream, idle, "after one request").await?;
    tracing::info!(?elapsed, "silent kept-alive connection closed");

    // A request every 300 ms: each gap is under the idle timeout, their
    // sum far over it.
    let mut stream = TcpStream::connect(addr).await?;
    let started = Instant::now();
    for i in 0..6 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let body = scrape_on(&mut stream)
            .await
            .with_context(|| format!("request {} after {:?}", i + 1, started.elapsed()))?;
        assert!(body.contains("endpoint_test_marker 7\n"), "{body}");
    }
    let span = started.elapsed();
    assert!(span >= idle * 3, "the requests spanned only {span:?}");
    // Then silent: closed one idle timeout after the last response.
    let elapsed = assert_closed_after_idle(&mut stream, idle, "after six requests").await?;
    tracing::info!(?span, ?elapsed, "busy connection stayed open, then closed");

    endpoint.shutdown().await;
    Ok(())
}

/// A collector that takes `delay` to collect: a scrape in progress with no
/// byte moving on the connection.
struct SlowCollector {
    gauge: prometheus::IntGauge,
    delay: Duration,
}

impl prometheus::core::Collector for SlowCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        // Blocks the worker, as a slow synchronous collector does.
        std::thread::sleep(self.delay);
        self.gauge.collect()
    }
}

/// (e) A scrape that takes longer than the idle timeout to produce (a slow
/// collector) is not cut while in flight: the client is waiting for the
/// server, not idle. The connection is closed one idle timeout after the
/// response, as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_slower_than_the_idle_timeout_is_not_cut() -> anyhow::Result<()> {
    tests::init_test_logging();
    let idle = Duration::from_millis(500);
    let delay = Duration::from_millis(1200);
    let registry = prometheus::Registry::new();
    let gauge = prometheus::IntGauge::new("endpoint_test_slow", "Collected slowly.")?;
    gauge.set(3);
    registry.register(Box::new(SlowCollector { gauge, delay }))?;
    let endpoint = MetricsEndpoint::builder(registry)
        .idle_timeout(idle)
        .header_read_timeout(Duration::from_secs(10))
        .serve("127.0.0.1:0".parse()?)
        .await?;

    // Other work arriving meanwhile, as in any busy process, keeps the
    // runtime's other worker awake, and so its timers turning, while the
    // collector blocks one worker. Without it the timer driver may stall
    // with the blocked worker, and whether the overdue idle deadline is
    // noticed depends on which worker held the driver.
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let runtime = tokio::runtime::Handle::current();
        let stop = std::sync::Arc::clone(&stop_load);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                runtime.spawn(async { tokio::time::sleep(Duration::from_millis(1)).await });
            }
        })
    };

    let mut stream = TcpStream::connect(endpoint.local_addr()).await?;
    let mut took = Vec::new();
    for i in 0..2 {
        let started = Instant::now();
        let body = scrape_on(&mut stream)
            .await
            .with_context(|| format!("slow scrape {} was cut", i + 1))?;
        let elapsed = started.elapsed();
        assert!(body.contains("endpoint_test_slow 3\n"), "{body}");
        assert!(
            elapsed >= delay,
            "answered in {elapsed:?}, faster than the collector"
        );
        took.push(elapsed);
    }
    let elapsed = assert_closed_after_idle(&mut stream, idle, "after slow scrapes").await?;
    tracing::info!(?took, ?elapsed, "slow scrapes answered, then closed");
    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().expect("the load thread panicked");
    endpoint.shutdown().await;
    Ok(())
}

/// The value of the first sample of an instant query; `None` until the
/// query answers with one.
async fn value(prometheus: &PrometheusServer, promql: &str) -> Option<f64> {
    prometheus.query_value(promql).await.ok().flatten()
}
