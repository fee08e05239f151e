//! Exemplars end to end through `RpcMetrics`: a call in a sampled span
//! leaves one on its series' bucket in OpenMetrics, and nothing else
//! changes.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::{
    encode_openmetrics, encode_text, Call, Conventions, GrpcCode, Outcome, RpcMetrics, RpcSystem,
    Side,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

/// Makes a span with these ids current (as a tracing layer outside the
/// metrics layer does) until dropped.
fn in_span(trace: &str, span: &str, sampled: bool) -> opentelemetry::ContextGuard {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let context = SpanContext::new(
        TraceId::from_hex(trace).unwrap(),
        SpanId::from_hex(span).unwrap(),
        flags,
        false,
        TraceState::default(),
    );
    opentelemetry::Context::current()
        .with_remote_span_context(context)
        .attach()
}

fn say(side: Side) -> Call<'static> {
    Call::rpc(side, RpcSystem::Grpc, "echo.Echo", "Say")
}

fn current() -> RpcMetrics {
    RpcMetrics::builder()
        .conventions(Conventions::Current)
        .build()
        .unwrap()
}

/// One `Say` call served OK while a span with the test's ids (sampled or
/// not) is current.
fn served_in_span(metrics: &RpcMetrics, sampled: bool) {
    let _span = in_span(TRACE, SPAN, sampled);
    metrics
        .start_call(say(Side::Server))
        .finish(GrpcCode::OK, None);
}

/// The OpenMetrics exposition of `registry` and its one exemplar line,
/// asserted to be the only one.
fn the_one_exemplar(registry: &Registry) -> (String, String) {
    let text = encode_openmetrics(registry).unwrap();
    let lines = exemplar_lines(&text);
    assert_eq!(lines.len(), 1, "{text}");
    let line = lines[0].to_owned();
    (text, line)
}

/// The lines of `text` that carry an exemplar.
fn exemplar_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|line| line.contains(" # {")).collect()
}

/// `text` without its exemplars.
fn strip_exemplars(text: &str) -> String {
    text.lines()
        .map(|line| line.split_once(" # {").map_or(line, |(sample, _)| sample))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Parses ` # {trace_id="…",span_id="…"} value timestamp` off a bucket
/// line: (le, trace id, span id, value, timestamp).
fn parse(line: &str) -> (f64, String, String, f64, f64) {
    let (sample, exemplar) = line.split_once(" # ").unwrap();
    let le = sample
        .split("le=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let le = if le == "+Inf" {
        f64::INFINITY
    } else {
        le.parse().unwrap()
    };
    let (labels, rest) = exemplar
        .strip_prefix("{trace_id=\"")
        .unwrap()
        .split_once("\"} ")
        .unwrap();
    let (trace, span) = labels.split_once("\",span_id=\"").unwrap();
    let (value, timestamp) = rest.split_once(' ').unwrap();
    (
        le,
        trace.to_owned(),
        span.to_owned(),
        value.parse().unwrap(),
        timestamp.parse().unwrap(),
    )
}

#[test]
fn a_sampled_call_leaves_its_trace_on_its_bucket() {
    let metrics = current();
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    served_in_span(&metrics, true);
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let (_, line) = the_one_exemplar(metrics.registry());
    assert!(
        line.starts_with(r#"rpc_server_call_duration_seconds_bucket{error_type="",rpc_method="echo.Echo/Say",rpc_response_status_code="OK",rpc_system_name="grpc",le=""#),
        "{line}"
    );
    let (le, trace, span, value, timestamp) = parse(&line);
    assert_eq!((trace.as_str(), span.as_str()), (TRACE, SPAN));
    // The bucket the value was counted in: the first bound at or above it.
    let bounds = crate::DEFAULT_DURATION_BUCKETS;
    let index = bounds
        .iter()
        .position(|b| value <= *b)
        .unwrap_or(bounds.len());
    assert_eq!(
        le,
        bounds.get(index).copied().unwrap_or(f64::INFINITY),
        "{line}"
    );
    assert!(value >= 0.0);
    // The call's end, in wall time (milliseconds kept).
    let slack = 0.05;
    assert!(
        timestamp >= before.as_secs_f64() - slack && timestamp <= after.as_secs_f64() + slack,
        "{timestamp} not in {before:?}..{after:?}"
    );
}

#[test]
fn unsampled_untraced_and_switched_off_calls_leave_none() {
    let metrics = current();
    served_in_span(&metrics, false);
    metrics
        .start_call(say(Side::Client))
        .finish(GrpcCode::OK, None);
    let text = encode_openmetrics(metrics.registry()).unwrap();
    assert!(exemplar_lines(&text).is_empty(), "{text}");
    assert!(
        text.contains("rpc_server_call_duration_seconds_count{"),
        "{text}"
    );

    let off = RpcMetrics::builder()
        .conventions(Conventions::Current)
        .exemplars(false)
        .build()
        .unwrap();
    {
        let _span = in_span(TRACE, SPAN, true);
        off.start_call(say(Side::Server)).finish(GrpcCode::OK, None);
    }
    let text = encode_openmetrics(off.registry()).unwrap();
    assert!(exemplar_lines(&text).is_empty(), "{text}");
}

/// The trace is the one current when the call started: a call that ends
/// outside its span (a server's body ending after the tracing layer's
/// scope) keeps it, and a span made current later does not count.
#[test]
fn the_trace_is_read_when_the_call_starts() {
    let metrics = current();
    let call = {
        let _span = in_span(TRACE, SPAN, true);
        metrics.start_call(say(Side::Server))
    };
    call.finish(GrpcCode::OK, None);
    let late = metrics.start_call(say(Side::Client));
    {
        let _span = in_span(TRACE, SPAN, true);
        late.finish(GrpcCode::OK, None);
    }
    let (_, line) = the_one_exemplar(metrics.registry());
    assert!(line.starts_with("rpc_server_call_duration_seconds_bucket{"));
}

/// The Prometheus text format is what the `prometheus` crate's encoder
/// writes, byte for byte, exemplars or not; OpenMetrics is the same lines
/// plus exemplars (the current names have no counter to rename) and
/// `# EOF`.
#[test]
fn the_text_format_is_unchanged_and_openmetrics_only_gains_exemplars() {
    let metrics = current();
    for (i, side) in [Side::Server, Side::Client].into_iter().enumerate() {
        let _span = in_span(TRACE, &format!("{:016x}", i + 1), true);
        let mut call = metrics.start_call(say(side).server_address("echo", Some(50051)));
        call.request_size(10);
        call.finish(GrpcCode::UNAVAILABLE, Some(20));
        metrics
            .start_call(Call::http(side, &http::Method::GET).route("/users/{id}"))
            .finish(Outcome::Http(200), None);
    }
    let mut plain = Vec::new();
    TextEncoder::new()
        .encode(&metrics.registry().gather(), &mut plain)
        .unwrap();
    let plain = String::from_utf8(plain).unwrap();
    assert_eq!(encode_text(metrics.registry()).unwrap(), plain);

    let openmetrics = encode_openmetrics(metrics.registry()).unwrap();
    // Server and client, gRPC and HTTP: one exemplar per duration series.
    let lines = exemplar_lines(&openmetrics);
    assert_eq!(lines.len(), 4, "{openmetrics}");
    for family in [
        "rpc_server_call_duration_seconds_bucket{",
        "rpc_client_call_duration_seconds_bucket{",
        "http_server_request_duration_seconds_bucket{",
        "http_client_request_duration_seconds_bucket{",
    ] {
        assert_eq!(
            lines.iter().filter(|l| l.starts_with(family)).count(),
            1,
            "{family}"
        );
    }
    assert_eq!(strip_exemplars(&openmetrics), format!("{plain}# EOF\n"));
}

/// Old and Dup: every duration family of the call carries it.
#[test]
fn every_duration_family_of_the_call_carries_it() {
    for (conventions, families) in [
        (
            Conventions::Old,
            &["rpc_server_duration_seconds_bucket{"][..],
        ),
        (
            Conventions::Dup,
            &[
                "rpc_server_call_duration_seconds_bucket{",
                "rpc_server_duration_seconds_bucket{",
            ][..],
        ),
    ] {
        let metrics = RpcMetrics::builder()
            .conventions(conventions)
            .build()
            .unwrap();
        served_in_span(&metrics, true);
        let text = encode_openmetrics(metrics.registry()).unwrap();
        let lines = exemplar_lines(&text);
        assert_eq!(lines.len(), families.len(), "{conventions:?}: {text}");
        for family in families {
            let line = lines.iter().find(|l| l.starts_with(family)).unwrap();
            assert_eq!(parse(line).1, TRACE);
        }
        // The old names' counter is still announced without `_total`.
        if conventions.old() {
            assert!(
                text.contains("# TYPE rpc_server_requests counter\n"),
                "{text}"
            );
        }
    }
}

/// Users' own registries: a prefix and constant labels change the
/// gathered families, and the exemplars are still found; other
/// collectors' histograms get none.
#[test]
fn a_users_registry_with_a_prefix_and_constant_labels_keeps_them() {
    let registry = Registry::new_custom(
        Some("shop".into()),
        Some([("region".to_owned(), "eu".to_owned())].into()),
    )
    .unwrap();
    let theirs = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
        "checkout_duration_seconds",
        "Their own histogram.",
    ))
    .unwrap();
    registry.register(Box::new(theirs.clone())).unwrap();
    let metrics = RpcMetrics::builder()
        .conventions(Conventions::Current)
        .registry(registry.clone())
        .build()
        .unwrap();
    {
        let _span = in_span(TRACE, SPAN, true);
        metrics
            .start_call(say(Side::Server))
            .finish(GrpcCode::OK, None);
        theirs.observe(0.01);
    }
    let (text, line) = the_one_exemplar(&registry);
    assert!(
        line.starts_with("shop_rpc_server_call_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(line.contains(r#"region="eu""#));
    assert_eq!(parse(&line).1, TRACE);
}

/// Another collector's histogram whose name ends with ours
/// (`foo_rpc_server_call_duration_seconds`, same labels and series) is not
/// taken for ours: only the exact name gets the exemplar.
#[test]
fn a_family_named_like_ours_with_a_prefix_gets_none() {
    let registry = Registry::new();
    let metrics = RpcMetrics::builder()
        .conventions(Conventions::Current)
        .registry(registry.clone())
        .build()
        .unwrap();
    let labels = [
        "rpc_system_name",
        "rpc_method",
        "rpc_response_status_code",
        "error_type",
    ];
    let theirs = prometheus::HistogramVec::new(
        prometheus::HistogramOpts::new("foo_rpc_server_call_duration_seconds", "Theirs."),
        &labels,
    )
    .unwrap();
    registry.register(Box::new(theirs.clone())).unwrap();
    served_in_span(&metrics, true);
    theirs
        .with_label_values(&["grpc", "echo.Echo/Say", "OK", ""])
        .observe(0.001);
    let (text, line) = the_one_exemplar(&registry);
    assert!(
        line.starts_with("rpc_server_call_duration_seconds_bucket{"),
        "{text}"
    );
}

/// One bucket (a single bound above any call's duration), so every call
/// lands in the same slot: it keeps the first sampled call after each
/// scrape.
#[test]
fn one_exemplar_per_bucket_per_scrape() {
    let metrics = RpcMetrics::builder()
        .conventions(Conventions::Current)
        .duration_buckets(vec![600.0])
        .build()
        .unwrap();
    let span_of_the_exemplar = |calls: &[u64]| {
        for span in calls {
            let _span = in_span(TRACE, &format!("{span:016x}"), true);
            metrics
                .start_call(say(Side::Server))
                .finish(GrpcCode::OK, None);
        }
        let (text, line) = the_one_exemplar(metrics.registry());
        assert!(line.contains(r#"le="600""#), "{text}");
        parse(&line).2
    };
    assert_eq!(span_of_the_exemplar(&[1, 2, 3]), format!("{:016x}", 1));
    // Scraped: the next call takes the slot.
    assert_eq!(span_of_the_exemplar(&[4, 5]), format!("{:016x}", 4));
    // No call since: the same one again.
    assert_eq!(span_of_the_exemplar(&[]), format!("{:016x}", 4));
    // The text format is no scrape of exemplars: it leaves them as they are.
    encode_text(metrics.registry()).unwrap();
    assert_eq!(span_of_the_exemplar(&[6]), format!("{:016x}", 6));
}

/// An untrusted method's call is in flight under `_OTHER` and recorded
/// under its own name once it succeeded: the exemplar goes with it.
#[test]
fn the_exemplar_follows_the_series_the_call_is_recorded_under() {
    let metrics = current();
    {
        let _span = in_span(TRACE, SPAN, true);
        metrics
            .start_untrusted_call(say(Side::Server))
            .finish(GrpcCode::OK, None);
    }
    let (text, line) = the_one_exemplar(metrics.registry());
    assert!(line.contains(r#"rpc_method="echo.Echo/Say""#), "{text}");
}
