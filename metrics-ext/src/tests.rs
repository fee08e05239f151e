//! The families and labels each naming scheme gives, and the bounds on
//! what the wire can add.

use crate::{
    encode_text, thrift, Call, Conventions, GrpcCode, Outcome, RpcMetrics, RpcSystem, Side,
};

fn metrics(conventions: Conventions) -> RpcMetrics {
    RpcMetrics::builder()
        .conventions(conventions)
        .build()
        .unwrap()
}

fn text(metrics: &RpcMetrics) -> String {
    encode_text(metrics.registry()).unwrap()
}

/// The series of `family` (its exact name, so `_count` is not `_bucket`).
fn series(metrics: &RpcMetrics, family: &str) -> Vec<String> {
    text(metrics)
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .map(str::to_owned)
        .collect()
}

fn grpc(side: Side, service: &'static str, method: &'static str) -> Call<'static> {
    Call::rpc(side, RpcSystem::Grpc, service, method)
}

#[test]
fn current_server_series_are_the_otel_translation() {
    let metrics = metrics(Conventions::Current);
    let call = metrics.start_call(grpc(Side::Server, "echo.Echo", "Say"));
    let mut sized = metrics.start_call(grpc(Side::Server, "echo.Echo", "Say"));
    sized.request_size(10);
    call.finish(GrpcCode::OK, Some(42));
    sized.finish(GrpcCode::UNAVAILABLE, None);
    metrics
        .start_call(grpc(Side::Server, "echo.Echo", "Say"))
        .finish(GrpcCode::INVALID_ARGUMENT, None);
    let text = text(&metrics);
    for line in [
        r#"rpc_server_call_duration_seconds_count{error_type="",rpc_method="echo.Echo/Say",rpc_response_status_code="OK",rpc_system_name="grpc"} 1"#,
        // A server error: error_type set.
        r#"rpc_server_call_duration_seconds_count{error_type="UNAVAILABLE",rpc_method="echo.Echo/Say",rpc_response_status_code="UNAVAILABLE",rpc_system_name="grpc"} 1"#,
        // The caller's mistake: not a server failure.
        r#"rpc_server_call_duration_seconds_count{error_type="",rpc_method="echo.Echo/Say",rpc_response_status_code="INVALID_ARGUMENT",rpc_system_name="grpc"} 1"#,
        r#"rpc_server_active_requests{rpc_method="echo.Echo/Say",rpc_system_name="grpc"} 0"#,
        r#"rpc_server_request_size_bytes_count{rpc_method="echo.Echo/Say",rpc_system_name="grpc"} 1"#,
        r#"rpc_server_response_size_bytes_count{rpc_method="echo.Echo/Say",rpc_system_name="grpc"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    // The histogram's count is the call count: no counter of its own.
    assert!(!text.contains("_total"), "{text}");
    assert!(!text.contains("rpc_server_duration_seconds"), "{text}");
}

#[test]
fn current_client_series_carry_the_target() {
    let metrics = metrics(Conventions::Current);
    let call = grpc(Side::Client, "echo.Echo", "Say")
        .server_address("echo.internal", Some(50051))
        .peer_service("ignored in the current names");
    metrics.start_call(call).finish(GrpcCode::NOT_FOUND, None);
    let no_port = grpc(Side::Client, "echo.Echo", "Say").server_address("echo", None);
    metrics.start_call(no_port).finish(GrpcCode::OK, None);
    let text = text(&metrics);
    for line in [
        // Every non-OK code is a client failure.
        r#"rpc_client_call_duration_seconds_count{error_type="NOT_FOUND",rpc_method="echo.Echo/Say",rpc_response_status_code="NOT_FOUND",rpc_system_name="grpc",server_address="echo.internal",server_port="50051"} 1"#,
        r#"rpc_client_call_duration_seconds_count{error_type="",rpc_method="echo.Echo/Say",rpc_response_status_code="OK",rpc_system_name="grpc",server_address="echo",server_port=""} 1"#,
        r#"rpc_client_active_requests{rpc_method="echo.Echo/Say",rpc_system_name="grpc"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(!text.contains("peer_service"), "{text}");
}

#[test]
fn thrift_has_no_status_code_and_its_error_kind_as_error_type() {
    let metrics = metrics(Conventions::Current);
    let call = || Call::rpc(Side::Server, RpcSystem::Thrift, "Echo", "say");
    metrics
        .start_call(call())
        .finish(Outcome::Thrift(thrift::OK), None);
    metrics
        .start_call(call())
        .finish(Outcome::Thrift(thrift::APPLICATION_EXCEPTION), None);
    drop(metrics.start_call(call()));
    let text = text(&metrics);
    for line in [
        r#"rpc_server_call_duration_seconds_count{error_type="",rpc_method="Echo/say",rpc_response_status_code="",rpc_system_name="apache_thrift"} 1"#,
        r#"rpc_server_call_duration_seconds_count{error_type="application_exception",rpc_method="Echo/say",rpc_response_status_code="",rpc_system_name="apache_thrift"} 1"#,
        r#"rpc_server_call_duration_seconds_count{error_type="cancelled",rpc_method="Echo/say",rpc_response_status_code="",rpc_system_name="apache_thrift"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[test]
fn http_calls_go_to_the_http_families() {
    let metrics = metrics(Conventions::Current);
    let get = Call::http(Side::Server, &http::Method::GET);
    metrics
        .start_call(get.route("/users/{id}"))
        .finish(Outcome::Http(200), Some(3));
    metrics
        .start_call(get.route("/boom").url_scheme("HTTPS"))
        .finish(Outcome::Http(503), None);
    // No route matched.
    metrics.start_call(get).finish(Outcome::Http(404), None);
    let client = Call::http(Side::Client, &http::Method::POST).server_address("api", Some(443));
    metrics.start_call(client).finish(Outcome::Http(404), None);
    metrics.start_call(client).finish(Outcome::Failed, None);
    let text = text(&metrics);
    for line in [
        r#"http_server_request_duration_seconds_count{error_type="",http_request_method="GET",http_response_status_code="200",http_route="/users/{id}",url_scheme="http"} 1"#,
        r#"http_server_request_duration_seconds_count{error_type="503",http_request_method="GET",http_response_status_code="503",http_route="/boom",url_scheme="https"} 1"#,
        r#"http_server_request_duration_seconds_count{error_type="",http_request_method="GET",http_response_status_code="404",http_route="_OTHER",url_scheme="http"} 1"#,
        r#"http_server_active_requests{http_request_method="GET",url_scheme="http"} 0"#,
        // A client's 4xx is a failure.
        r#"http_client_request_duration_seconds_count{error_type="404",http_request_method="POST",http_response_status_code="404",server_address="api",server_port="443"} 1"#,
        r#"http_client_request_duration_seconds_count{error_type="transport",http_request_method="POST",http_response_status_code="",server_address="api",server_port="443"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(
        !text.contains("rpc_"),
        "HTTP calls in the RPC families:\n{text}"
    );
}

#[test]
fn a_method_that_is_not_standard_is_other() {
    let metrics = metrics(Conventions::Current);
    let purge = http::Method::from_bytes(b"PURGE").unwrap();
    metrics
        .start_call(Call::http(Side::Server, &purge).route("/cache"))
        .finish(Outcome::Http(200), None);
    // The generic constructor normalizes too.
    metrics
        .start_call(Call::rpc(Side::Server, RpcSystem::Http, "/cache", "PURGE"))
        .finish(Outcome::Http(200), None);
    let text = text(&metrics);
    assert!(
        text.contains(r#"http_server_request_duration_seconds_count{error_type="",http_request_method="_OTHER",http_response_status_code="200",http_route="/cache",url_scheme="http"} 2"#),
        "{text}"
    );
    assert!(!text.contains("PURGE"), "{text}");
}

#[test]
fn junk_methods_never_become_series_however_they_end() {
    let metrics = metrics(Conventions::Current);
    let ends: [fn(crate::CallRecorder); 4] = [
        |call| call.finish(GrpcCode::UNIMPLEMENTED, None),
        // An inner auth layer turned the caller away.
        |call| call.finish(GrpcCode::UNAUTHENTICATED, None),
        // The caller reset the stream.
        drop,
        |call| call.finish(Outcome::Failed, None),
    ];
    for i in 0..1_000 {
        let method = format!("Junk{i}");
        let call = Call::rpc(Side::Server, RpcSystem::Grpc, "junk.Svc", &method);
        ends[i % ends.len()](metrics.start_untrusted_call(call));
    }
    metrics
        .start_untrusted_call(grpc(Side::Server, "echo.Echo", "Say"))
        .finish(GrpcCode::OK, None);
    let text = text(&metrics);
    assert!(!text.contains("junk"), "{text}");
    let durations = series(&metrics, "rpc_server_call_duration_seconds_count");
    // The real method, and the overflow series of each junk outcome.
    assert_eq!(durations.len(), 5, "{durations:#?}");
    for line in [
        r#"rpc_server_call_duration_seconds_count{error_type="",rpc_method="_OTHER",rpc_response_status_code="UNAUTHENTICATED",rpc_system_name="grpc"} 250"#,
        r#"rpc_server_call_duration_seconds_count{error_type="CANCELLED",rpc_method="_OTHER",rpc_response_status_code="CANCELLED",rpc_system_name="grpc"} 250"#,
        r#"rpc_server_call_duration_seconds_count{error_type="UNIMPLEMENTED",rpc_method="_OTHER",rpc_response_status_code="UNIMPLEMENTED",rpc_system_name="grpc"} 250"#,
        r#"rpc_server_call_duration_seconds_count{error_type="",rpc_method="echo.Echo/Say",rpc_response_status_code="OK",rpc_system_name="grpc"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert_eq!(metrics.inner.cache.len(Side::Server), 1);
}

#[test]
fn recognized_methods_are_series_from_the_first_call() {
    let metrics = RpcMetrics::builder()
        .conventions(Conventions::Current)
        .recognized_methods(["echo.Echo/Say", "/echo.Echo/Shout"])
        .build()
        .unwrap();
    for method in ["Say", "Shout", "Whisper"] {
        metrics
            .start_untrusted_call(grpc(Side::Server, "echo.Echo", method))
            .finish(GrpcCode::UNAUTHENTICATED, None);
    }
    let text = text(&metrics);
    assert!(text.contains(r#"rpc_method="echo.Echo/Say""#), "{text}");
    assert!(text.contains(r#"rpc_method="echo.Echo/Shout""#), "{text}");
    assert!(!text.contains("Whisper"), "{text}");
    let malformed = RpcMetrics::builder().recognized_methods(["Say"]).build();
    assert!(matches!(malformed, Err(crate::Error::Config(_))));
}

#[test]
fn the_cap_is_per_side() {
    let metrics = RpcMetrics::builder()
        .conventions(Conventions::Current)
        .max_methods(10)
        .build()
        .unwrap();
    let routes: Vec<String> = (0..100).map(|i| format!("/r{i}")).collect();
    for route in &routes {
        let get = Call::http(Side::Server, &http::Method::GET).route(route);
        metrics.start_call(get).finish(Outcome::Http(200), None);
    }
    // The server side is full; the client side has its own 10.
    for i in 0..100u16 {
        let target = Call::http(Side::Client, &http::Method::GET).server_address("api", Some(i));
        metrics.start_call(target).finish(Outcome::Http(200), None);
    }
    let server = series(&metrics, "http_server_request_duration_seconds_count");
    let client = series(&metrics, "http_client_request_duration_seconds_count");
    // Ten label sets each, plus the overflow one.
    assert_eq!(server.len(), 11, "{server:#?}");
    assert_eq!(client.len(), 11, "{client:#?}");
    assert!(server
        .iter()
        .any(|s| s.contains(r#"http_route="_OTHER""#) && s.ends_with(" 90")));
    assert!(client
        .iter()
        .any(|s| s.contains(r#"server_address="_OTHER""#) && s.ends_with(" 90")));
}

#[test]
fn dropped_calls_count_as_cancelled_and_leave_flight() {
    let metrics = metrics(Conventions::Current);
    let call = metrics.start_call(grpc(Side::Server, "s", "m"));
    let active =
        |n| format!(r#"rpc_server_active_requests{{rpc_method="s/m",rpc_system_name="grpc"}} {n}"#);
    assert!(text(&metrics).contains(&active(1)));
    drop(call);
    let text = text(&metrics);
    assert!(text.contains(&active(0)), "{text}");
    assert!(
        text.contains(
            r#"error_type="CANCELLED",rpc_method="s/m",rpc_response_status_code="CANCELLED""#
        ),
        "{text}"
    );
}

#[test]
fn old_names_are_the_families_before_v1_44() {
    let metrics = metrics(Conventions::Old);
    let client = grpc(Side::Client, "echo.Echo", "Say")
        .server_address("127.0.0.1", Some(1))
        .peer_service("echo");
    metrics
        .start_call(client)
        .finish(GrpcCode::INVALID_ARGUMENT, None);
    metrics
        .start_call(grpc(Side::Server, "echo.Echo", "Say"))
        .finish(GrpcCode::OK, None);
    let get = Call::http(Side::Server, &http::Method::GET).route("/users/{id}");
    metrics.start_call(get).finish(Outcome::Http(200), Some(5));
    let text = text(&metrics);
    for line in [
        r#"rpc_client_requests_total{peer_service="echo",rpc_method="Say",rpc_service="echo.Echo",rpc_system="grpc",status_code="3"} 1"#,
        r#"rpc_client_duration_seconds_count{peer_service="echo",rpc_method="Say",rpc_service="echo.Echo",rpc_system="grpc",status_code="3"} 1"#,
        r#"rpc_client_active_requests{peer_service="echo",rpc_method="Say",rpc_service="echo.Echo",rpc_system="grpc"} 0"#,
        r#"rpc_server_requests_total{rpc_method="Say",rpc_service="echo.Echo",rpc_system="grpc",status_code="0"} 1"#,
        r#"rpc_server_requests_total{rpc_method="GET",rpc_service="/users/{id}",rpc_system="http",status_code="200"} 1"#,
        r#"rpc_server_response_size_bytes_count{rpc_method="GET",rpc_service="/users/{id}",rpc_system="http"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    for current in [
        "call_duration",
        "http_server",
        "server_address",
        "error_type",
    ] {
        assert!(!text.contains(current), "{current} in\n{text}");
    }
}

#[test]
fn dup_registers_both_durations_and_the_current_per_method_families() {
    let metrics = metrics(Conventions::Dup);
    let client = grpc(Side::Client, "echo.Echo", "Say")
        .server_address("127.0.0.1", Some(1))
        .peer_service("echo");
    metrics.start_call(client).finish(GrpcCode::OK, Some(1));
    let get = Call::http(Side::Server, &http::Method::GET).route("/users/{id}");
    metrics.start_call(get).finish(Outcome::Http(200), None);
    let text = text(&metrics);
    for line in [
        r#"rpc_client_requests_total{peer_service="echo",rpc_method="Say",rpc_service="echo.Echo",rpc_system="grpc",status_code="0"} 1"#,
        r#"rpc_client_call_duration_seconds_count{error_type="",rpc_method="echo.Echo/Say",rpc_response_status_code="OK",rpc_system_name="grpc",server_address="127.0.0.1",server_port="1"} 1"#,
        r#"rpc_client_active_requests{rpc_method="echo.Echo/Say",rpc_system_name="grpc"} 0"#,
        r#"rpc_client_response_size_bytes_count{rpc_method="echo.Echo/Say",rpc_system_name="grpc"} 1"#,
        r#"rpc_server_requests_total{rpc_method="GET",rpc_service="/users/{id}",rpc_system="http",status_code="200"} 1"#,
        r#"http_server_request_duration_seconds_count{error_type="",http_request_method="GET",http_response_status_code="200",http_route="/users/{id}",url_scheme="http"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[test]
fn conventions_come_from_the_environment_by_default() {
    // Whatever the environment says, the builder's choice is what is used.
    let built = RpcMetrics::builder().build().unwrap();
    assert_eq!(built.conventions(), Conventions::from_env());
}

/// The samples recorded (no `# HELP`, `# TYPE`).
fn samples(metrics: &RpcMetrics) -> Vec<String> {
    text(metrics)
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(str::to_owned)
        .collect()
}

const HEALTH: &str = "grpc.health.v1.Health";

#[test]
fn health_checks_are_recorded_unless_skipped() {
    let metrics = metrics(Conventions::Current);
    metrics
        .start_call(grpc(Side::Client, HEALTH, "Check"))
        .finish(GrpcCode::OK, None);
    metrics
        .start_untrusted_call(grpc(Side::Server, HEALTH, "Check"))
        .finish(GrpcCode::OK, Some(2));
    let text = text(&metrics);
    for family in [
        "rpc_client_call_duration_seconds_count",
        "rpc_server_call_duration_seconds_count",
    ] {
        let series = format!(
            r#"{family}{{error_type="",rpc_method="grpc.health.v1.Health/Check",rpc_response_status_code="OK",rpc_system_name="grpc""#
        );
        assert!(text.contains(&series), "missing {series} in\n{text}");
    }

    let metrics = RpcMetrics::builder()
        .conventions(Conventions::Dup)
        .skip_health_checks(true)
        .build()
        .unwrap();
    let mut calls = vec![
        metrics.start_call(grpc(Side::Client, HEALTH, "Check")),
        metrics.start_call(grpc(Side::Server, HEALTH, "Watch")),
        metrics.start_untrusted_call(grpc(Side::Server, HEALTH, "Check")),
    ];
    for call in &mut calls {
        call.request_size(5);
    }
    // Not in flight (not even under `_OTHER`, as an untrusted name would be).
    assert_eq!(samples(&metrics), Vec::<String>::new());
    let mut ends = calls.into_iter();
    ends.next().unwrap().finish(GrpcCode::OK, Some(1));
    ends.next().unwrap().finish(GrpcCode::UNAVAILABLE, None);
    // Dropped: not recorded as cancelled either.
    drop(ends);
    assert_eq!(samples(&metrics), Vec::<String>::new());
    // Other calls are, and a Thrift service of that name is no health check.
    metrics
        .start_call(grpc(Side::Server, "echo.Echo", "Say"))
        .finish(GrpcCode::OK, None);
    metrics
        .start_call(Call::rpc(Side::Server, RpcSystem::Thrift, HEALTH, "Check"))
        .finish(Outcome::Thrift(thrift::OK), None);
    let recorded = samples(&metrics);
    assert!(
        recorded
            .iter()
            .any(|line| line.contains(r#"rpc_method="echo.Echo/Say""#)),
        "{recorded:#?}"
    );
    let health: Vec<_> = recorded
        .iter()
        .filter(|line| line.contains("grpc.health"))
        .collect();
    assert!(!health.is_empty(), "{recorded:#?}");
    assert!(
        health.iter().all(|line| line.contains("apache_thrift")),
        "{health:#?}"
    );
}

#[test]
fn skipped_http_routes_record_nothing() {
    let metrics = RpcMetrics::builder()
        .conventions(Conventions::Current)
        .skip_http_routes(["/healthz", "/debug/{name}"])
        .build()
        .unwrap();
    let get = Call::http(Side::Server, &http::Method::GET);
    let in_flight = metrics.start_call(get.route("/healthz"));
    assert_eq!(samples(&metrics), Vec::<String>::new());
    in_flight.finish(Outcome::Http(200), Some(2));
    assert_eq!(samples(&metrics), Vec::<String>::new());

    // A route known only once the router ran: counted in flight, then
    // nothing recorded.
    let mut late = metrics.start_call(get);
    late.request_size(3);
    let active = r#"http_server_active_requests{http_request_method="GET",url_scheme="http"}"#;
    assert!(text(&metrics).contains(&format!("{active} 1")));
    late.relabel(&metrics, get.route("/debug/{name}"));
    late.finish(Outcome::Http(200), Some(2));
    let after = text(&metrics);
    assert!(after.contains(&format!("{active} 0")), "{after}");
    assert!(!after.contains("http_server_request_duration"), "{after}");

    // Clients, other routes and `_OTHER` are recorded.
    let client = Call::http(Side::Client, &http::Method::GET).route("/healthz");
    metrics.start_call(client).finish(Outcome::Http(200), None);
    metrics
        .start_call(get.route("/users/{id}"))
        .finish(Outcome::Http(200), None);
    let mut unmatched = metrics.start_call(get);
    unmatched.relabel(&metrics, get);
    unmatched.finish(Outcome::Http(404), None);
    let text = crate::encode_text(metrics.registry()).unwrap();
    assert!(
        text.contains("http_client_request_duration_seconds_count{"),
        "{text}"
    );
    assert!(text.contains(r#"http_route="/users/{id}""#), "{text}");
    assert!(text.contains(r#"http_route="_OTHER""#), "{text}");
    assert!(
        !text.contains("healthz") && !text.contains("debug"),
        "{text}"
    );
}
