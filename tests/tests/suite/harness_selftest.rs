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

/// A tonic Echo server that keeps the headers of every request it gets.
async fn header_keeping_tonic_echo() -> anyhow::Result<(
    std::net::SocketAddr,
    SeenHeaders,
    tokio::sync::watch::Sender<bool>,
)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let seen = SeenHeaders::default();
    let keep = seen.clone();
    let service = echo::tonic_gen::echo_server::EchoServer::with_interceptor(
        echo::servers::TonicEcho { served_by: address },
        move |request: tonic::Request<()>| {
            keep.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(request.metadata().clone().into_headers());
            Ok(request)
        },
    );
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ),
    );
    Ok((address, seen, stop))
}

#[derive(Clone, Default)]
struct SeenHeaders(std::sync::Arc<std::sync::Mutex<Vec<http::HeaderMap>>>);

impl SeenHeaders {
    fn all(&self) -> Vec<http::HeaderMap> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// UUID text form, version 4, RFC 4122 variant.
fn is_uuid_v4(text: &str) -> bool {
    let bytes = text.as_bytes();
    let dashes = [8, 13, 18, 23];
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| {
            if dashes.contains(&i) {
                *b == b'-'
            } else {
                b.is_ascii_digit() || (b'a'..=b'f').contains(b)
            }
        })
        && bytes[14] == b'4'
        && matches!(bytes[19], b'8' | b'9' | b'a' | b'b')
}

async fn echo_client_via(
    sidecar: &tests::Sidecar,
) -> anyhow::Result<echo::tonic_gen::echo_client::EchoClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(sidecar.endpoint())?
        .connect()
        .await?;
    Ok(echo::tonic_gen::echo_client::EchoClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_forwards_grpc_and_starts_one_span_per_hop() -> anyhow::Result<()> {
    use echo::tonic_gen::{CountRequest, SayRequest};
    use tests::sidecar::{Sidecar, TraceFormat};

    let (upstream, seen, _stop) = header_keeping_tonic_echo().await?;
    let sidecar = Sidecar::start(upstream, TraceFormat::W3c).await?;
    let mut client = echo_client_via(&sidecar).await?;

    // Unary, no trace header and no request id: a new trace and a new id.
    let reply = client
        .say(SayRequest {
            message: "hello".into(),
        })
        .await?
        .into_inner();
    assert_eq!(reply.message, "hello");
    assert_eq!(reply.served_by, upstream.to_string());
    let hops = sidecar.hops();
    assert_eq!(hops.len(), 1);
    let hop = &hops[0];
    assert_eq!(hop.path, "/echo.Echo/Say");
    assert_eq!(
        (hop.status, hop.grpc_status.as_deref()),
        (Some(200), Some("0"))
    );
    assert!(hop.request_id_generated);
    assert!(is_uuid_v4(&hop.request_id), "{}", hop.request_id);
    let span = hop.span.clone().expect("a span");
    assert_eq!(span.parent_span_id, None);
    let received = &seen.all()[0];
    assert_eq!(
        header(received, "x-request-id").as_deref(),
        Some(&*hop.request_id)
    );
    assert_eq!(
        header(received, "traceparent"),
        Some(format!("00-{}-{}-01", span.trace_id, span.span_id))
    );

    // A server stream that fails after two replies: the messages and the
    // status in the trailers both cross.
    let mut stream = client
        .count(CountRequest {
            message: "fail".into(),
            count: 2,
            interval_ms: 0,
        })
        .await?
        .into_inner();
    let mut replies = Vec::new();
    let end = loop {
        match stream.message().await {
            Ok(Some(reply)) => replies.push(reply.message),
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    assert_eq!(replies, ["fail 1", "fail 2"]);
    let end = end.expect("the stream ends with a status");
    assert_eq!(end.code(), tonic::Code::Unavailable);
    assert_eq!(end.message(), "asked to fail mid-stream");
    // A trailers-only error answer passes as it came.
    let refused = client
        .say(SayRequest {
            message: "fail".into(),
        })
        .await
        .expect_err("asked to fail");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(refused.message(), "asked to fail");

    // A caller's request id and trace context are kept: the sidecar's span
    // is the caller's child and the upstream's parent.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(SayRequest {
        message: "kept".into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "caller-chosen-id".parse()?);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01").parse()?,
    );
    client.say(request).await?;

    // Junk trace headers: no span, forwarded untouched, the call served.
    let mut junk = tonic::Request::new(SayRequest {
        message: "junk".into(),
    });
    junk.metadata_mut()
        .insert("traceparent", "00-not-a-trace-01".parse()?);
    client.say(junk).await?;

    let hops = sidecar.hops();
    let received = seen.all();
    assert_eq!(hops.len(), 5);
    assert_eq!(received.len(), 5);
    assert_eq!(hops[1].path, "/echo.Echo/Count");
    assert_eq!(
        (hops[1].status, hops[1].grpc_status.as_deref()),
        (Some(200), Some("14"))
    );
    assert_eq!(
        (hops[2].status, hops[2].grpc_status.as_deref()),
        (Some(200), Some("3"))
    );
    // Every hop without a caller's id got a fresh one.
    let generated: std::collections::HashSet<_> = [0, 1, 2, 4]
        .iter()
        .map(|&i| {
            assert!(hops[i].request_id_generated);
            assert!(is_uuid_v4(&hops[i].request_id));
            assert_eq!(
                header(&received[i], "x-request-id").as_deref(),
                Some(&*hops[i].request_id)
            );
            hops[i].request_id.clone()
        })
        .collect();
    assert_eq!(generated.len(), 4);

    let kept = &hops[3];
    assert_eq!(kept.request_id, "caller-chosen-id");
    assert!(!kept.request_id_generated);
    let kept_span = kept.span.clone().expect("a span");
    assert_eq!(kept_span.trace_id, caller_trace);
    assert_eq!(kept_span.parent_span_id.as_deref(), Some(caller_span));
    assert_ne!(kept_span.span_id, caller_span);
    assert_eq!(
        header(&received[3], "x-request-id").as_deref(),
        Some("caller-chosen-id")
    );
    assert_eq!(
        header(&received[3], "traceparent"),
        Some(format!("00-{caller_trace}-{}-01", kept_span.span_id))
    );

    assert_eq!(hops[4].span, None);
    assert_eq!(
        header(&received[4], "traceparent").as_deref(),
        Some("00-not-a-trace-01")
    );
    assert_eq!(sidecar.hops_dropped(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_writes_b3_and_answers_unavailable_for_a_dead_upstream() -> anyhow::Result<()> {
    use echo::tonic_gen::SayRequest;
    use tests::sidecar::{Sidecar, TraceFormat};

    let (upstream, seen, _stop) = header_keeping_tonic_echo().await?;
    let sidecar = Sidecar::start(upstream, TraceFormat::B3Multi).await?;
    let mut client = echo_client_via(&sidecar).await?;
    let mut request = tonic::Request::new(SayRequest {
        message: "b3".into(),
    });
    let metadata = request.metadata_mut();
    metadata.insert("x-b3-traceid", "463ac35c9f6413ad".parse()?);
    metadata.insert("x-b3-spanid", "a2fb4a1d1a96d312".parse()?);
    metadata.insert("x-b3-sampled", "1".parse()?);
    client.say(request).await?;
    let hop = sidecar.hops().remove(0);
    let span = hop.span.expect("a span");
    assert_eq!(span.trace_id, "0000000000000000463ac35c9f6413ad");
    assert_eq!(span.parent_span_id.as_deref(), Some("a2fb4a1d1a96d312"));
    let received = seen.all().remove(0);
    // The 64-bit trace id goes on as 64 bits; no traceparent is invented.
    assert_eq!(
        header(&received, "x-b3-traceid").as_deref(),
        Some("463ac35c9f6413ad")
    );
    assert_eq!(header(&received, "x-b3-spanid"), Some(span.span_id.clone()));
    assert_eq!(
        header(&received, "x-b3-parentspanid").as_deref(),
        Some("a2fb4a1d1a96d312")
    );
    assert_eq!(header(&received, "x-b3-sampled").as_deref(), Some("1"));
    assert_eq!(header(&received, "traceparent"), None);

    // Nothing listens at the upstream address any more: a closed port.
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        listener.local_addr()?
    };
    let sidecar = Sidecar::start(dead, TraceFormat::W3c).await?;
    let status = echo_client_via(&sidecar)
        .await?
        .say(SayRequest {
            message: "nobody".into(),
        })
        .await
        .expect_err("no upstream");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let hops = sidecar.hops();
    assert_eq!(hops.len(), 1);
    assert_eq!(
        (hops[0].status, hops[0].grpc_status.as_deref()),
        (None, Some("14"))
    );
    Ok(())
}
