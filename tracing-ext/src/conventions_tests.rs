//! The attribute sets of each [`Conventions`] mode, through the
//! framework-free API the layers use.

use std::{collections::HashMap, net::SocketAddr};

use opentelemetry::{trace::Status, KeyValue};

use crate::{
    semconv::Conventions,
    testing::{attr, keys, Recorded, SAMPLED_PARENT},
    CallInfo, GrpcCode, Host, Outcome, RpcSystem, RpcTracing,
};

fn carrier() -> HashMap<String, String> {
    HashMap::from([("traceparent".to_owned(), SAMPLED_PARENT.to_owned())])
}

/// Asserts the value of `key` among `attributes` (`None`: absent).
#[track_caller]
fn assert_attr(attributes: &[KeyValue], key: &str, expected: Option<&str>) {
    assert_eq!(attr(attributes, key).as_deref(), expected, "{key}");
}

/// A server call to `path`, with no parent, that ends with `code`.
fn serve(tracing: &RpcTracing, path: &str, code: GrpcCode) {
    tracing
        .start_server(&CallInfo::grpc(path), &HashMap::<String, String>::new())
        .finish(&Outcome {
            grpc_code: Some(code),
            ..Outcome::default()
        });
}

/// A client call to `echo.Echo/Say` that ends DEADLINE_EXCEEDED, in `mode`.
fn deadline_exceeded(mode: Conventions) -> opentelemetry_sdk::trace::SpanData {
    let (tracing, recorded) = Recorded::tracing(|builder| builder.conventions(mode));
    let info =
        CallInfo::grpc("/echo.Echo/Say").with_server(Host::Name("echo.internal"), Some(50051));
    let call = tracing.start_client(&info, &mut HashMap::new());
    call.finish(&Outcome {
        grpc_code: Some(GrpcCode::DEADLINE_EXCEEDED),
        peer_addr: Some(SocketAddr::from(([10, 0, 0, 7], 50051))),
        ..Outcome::default()
    });
    recorded.only()
}

#[test]
fn current_names_by_default() {
    let span = deadline_exceeded(Conventions::Current);
    assert_eq!(span.name, "echo.Echo/Say");
    assert_eq!(
        keys(&span.attributes),
        [
            "error.type",
            "network.peer.address",
            "network.peer.port",
            "rpc.method",
            "rpc.response.status_code",
            "rpc.system.name",
            "server.address",
            "server.port",
        ]
    );
    let attributes = &span.attributes;
    assert_attr(attributes, "rpc.system.name", Some("grpc"));
    assert_attr(attributes, "rpc.method", Some("echo.Echo/Say"));
    assert_attr(
        attributes,
        "rpc.response.status_code",
        Some("DEADLINE_EXCEEDED"),
    );
    assert_attr(attributes, "error.type", Some("DEADLINE_EXCEEDED"));
    assert_attr(attributes, "network.peer.address", Some("10.0.0.7"));
    assert!(matches!(span.status, Status::Error { .. }));
}

#[test]
fn old_names_as_before_v1_38() {
    let span = deadline_exceeded(Conventions::Old);
    assert_eq!(span.name, "echo.Echo/Say");
    assert_eq!(
        keys(&span.attributes),
        [
            "error.type",
            "network.peer.address",
            "network.peer.port",
            "rpc.grpc.status_code",
            "rpc.method",
            "rpc.service",
            "rpc.system",
            "server.address",
            "server.port",
        ]
    );
    let attributes = &span.attributes;
    assert_attr(attributes, "rpc.system", Some("grpc"));
    assert_attr(attributes, "rpc.service", Some("echo.Echo"));
    assert_attr(attributes, "rpc.method", Some("Say"));
    assert_attr(attributes, "rpc.grpc.status_code", Some("4"));
    assert_attr(attributes, "error.type", Some("4"));
}

#[test]
fn dup_has_both_and_the_shared_key_is_current() {
    let span = deadline_exceeded(Conventions::Dup);
    assert_eq!(
        keys(&span.attributes),
        [
            "error.type",
            "network.peer.address",
            "network.peer.port",
            "rpc.grpc.status_code",
            "rpc.method",
            "rpc.response.status_code",
            "rpc.service",
            "rpc.system",
            "rpc.system.name",
            "server.address",
            "server.port",
        ]
    );
    let attributes = &span.attributes;
    assert_attr(attributes, "rpc.method", Some("echo.Echo/Say"));
    assert_attr(attributes, "rpc.service", Some("echo.Echo"));
    assert_attr(attributes, "rpc.grpc.status_code", Some("4"));
    assert_attr(attributes, "error.type", Some("DEADLINE_EXCEEDED"));
}

#[test]
fn a_server_method_settled_at_the_end_in_every_mode() {
    for mode in [Conventions::Current, Conventions::Old, Conventions::Dup] {
        let (tracing, recorded) = Recorded::tracing(|builder| builder.conventions(mode));
        let info = CallInfo::grpc("/echo.Echo/Say");
        let call = tracing.start_server(&info, &carrier());
        call.finish(&Outcome {
            grpc_code: Some(GrpcCode::OK),
            ..Outcome::default()
        });
        let span = recorded.only();
        assert_eq!(span.name, "echo.Echo/Say", "{mode:?}");
        let attributes = &span.attributes;
        let method = if mode == Conventions::Old {
            "Say"
        } else {
            "echo.Echo/Say"
        };
        assert_attr(attributes, "rpc.method", Some(method));
        assert_eq!(
            attr(attributes, "rpc.service").is_some(),
            mode.old(),
            "{mode:?}: {attributes:?}"
        );
        // NOT_FOUND is the caller's doing: not a server error.
        assert_attr(attributes, "error.type", None);
        assert_eq!(span.status, Status::Unset);
    }
}

#[test]
fn thrift_spans_need_the_service_name() {
    let (tracing, recorded) = Recorded::tracing(|builder| builder);
    let named = CallInfo::rpc(RpcSystem::Thrift, "ThriftEcho", "say");
    tracing
        .start_server(&named, &carrier())
        .finish(&Outcome::default());
    let (started_as, at_start) = recorded.last_started();
    assert_eq!(
        started_as, "ThriftEcho/say",
        "a decoded method is known at the start"
    );
    assert_attr(&at_start, "rpc.method", Some("ThriftEcho/say"));
    assert_attr(&at_start, "rpc.system.name", Some("apache_thrift"));

    let unnamed = CallInfo::rpc(RpcSystem::Thrift, "", "say");
    tracing
        .start_client(&unnamed, &mut HashMap::new())
        .finish(&Outcome {
            error_type: Some(rpc_ext_core::thrift::TRANSPORT_EXCEPTION.into()),
            ..Outcome::default()
        });
    let ended = recorded.ended();
    let span = &ended[1];
    assert_eq!(span.name, "apache_thrift");
    assert_attr(&span.attributes, "rpc.method", Some("_OTHER"));
    assert_attr(&span.attributes, "rpc.method_original", Some("say"));
    assert_attr(&span.attributes, "error.type", Some("transport_exception"));
    assert_attr(&span.attributes, "rpc.response.status_code", None);
}

#[test]
fn a_dropped_call_is_cancelled() {
    let (tracing, recorded) = Recorded::tracing(|builder| builder);
    drop(tracing.start_client(&CallInfo::grpc("/echo.Echo/Say"), &mut HashMap::new()));
    let info = CallInfo::rpc(RpcSystem::Thrift, "ThriftEcho", "say");
    drop(tracing.start_client(&info, &mut HashMap::new()));
    let ended = recorded.ended();
    assert_attr(&ended[0].attributes, "error.type", Some("CANCELLED"));
    assert_attr(&ended[1].attributes, "error.type", Some("cancelled"));
}

#[test]
fn a_user_filter_works_alongside() {
    let (tracing, recorded) =
        Recorded::tracing(|builder| builder.filter(|call| call.service != "echo.Internal"));
    let call = tracing.start_client(&CallInfo::grpc("/echo.Internal/Ping"), &mut HashMap::new());
    call.finish(&Outcome::default());
    let call = tracing.start_client(&CallInfo::grpc("/echo.Echo/Say"), &mut HashMap::new());
    call.finish(&Outcome::default());
    assert_eq!(recorded.only().name, "echo.Echo/Say");
}

#[test]
fn unsampled_calls_teach_the_server_its_methods_too() {
    let tracing = crate::testing::never_sampled();
    serve(&tracing, "/echo.Echo/Say", GrpcCode::OK);
    serve(&tracing, "/echo.Echo/Missing", GrpcCode::UNIMPLEMENTED);
    // An auth layer in front of the router answers any path.
    serve(&tracing, "/junk.Junk/Refused", GrpcCode::UNAUTHENTICATED);
    assert!(tracing.inner.methods.contains("echo.Echo/Say"));
    assert!(!tracing.inner.methods.contains("echo.Echo/Missing"));
    assert!(!tracing.inner.methods.contains("junk.Junk/Refused"));
}
