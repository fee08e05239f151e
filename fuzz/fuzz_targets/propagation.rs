//! Trace context from the network: `traceparent`, `tracestate` and `baggage`
//! as HTTP headers / gRPC metadata and as Volo Thrift TTHeader values
//! (metainfo upstreams), through the server path every layer runs.
//!
//! Input: up to three fields separated by NUL bytes.
//! Properties: our W3C reader and the SDK's propagators read the same
//! context; nothing panics; a context that is accepted survives an
//! inject/extract round trip unchanged; an accepted parent is the parent of
//! the server span.

#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use metainfo::{Forward, MetaInfo};
use opentelemetry::{
    baggage::BaggageExt,
    propagation::{Extractor, TextMapCompositePropagator, TextMapPropagator},
    trace::TraceContextExt,
    Context,
};
use opentelemetry_sdk::{
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::SdkTracerProvider,
};
use rpc_ext_tracing::{
    propagator_from_env, volo::MetaInfoExtractor, CallInfo, HeaderExtractor, HeaderInjector,
    Outcome, RpcSystem, RpcTracing, W3cPropagator,
};

const FIELDS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

struct Setup {
    tracing: RpcTracing,
    propagator: Box<dyn TextMapPropagator + Send + Sync>,
    sdk: TextMapCompositePropagator,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        // Sampled spans with no exporter: the whole span path runs, and
        // finished spans are dropped.
        let provider = SdkTracerProvider::builder().build();
        Setup {
            tracing: RpcTracing::builder()
                .tracer_provider(&provider)
                .tracing_span(false)
                .build(),
            propagator: propagator_from_env(),
            sdk: TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ]),
        }
    })
}

fn check(setup: &Setup, carrier: &dyn Extractor) {
    // Our allocation-free W3C reader agrees with the SDK's propagators.
    let ours = W3cPropagator::new().extract(carrier);
    let sdk = setup.sdk.extract(carrier);
    assert_eq!(ours.span().span_context(), sdk.span().span_context());
    let entries = |cx: &Context| {
        let mut all: Vec<String> = cx
            .baggage()
            .iter()
            .map(|(k, (v, m))| format!("{k}={v};{}", m.as_str()))
            .collect();
        all.sort();
        all
    };
    assert_eq!(entries(&ours), entries(&sdk));

    let parent = setup.propagator.extract(carrier);
    let parent_span = parent.span().span_context().clone();
    if parent_span.is_valid() {
        // What we accept, we can send on unchanged.
        let mut headers = HeaderMap::new();
        setup
            .propagator
            .inject_context(&parent, &mut HeaderInjector(&mut headers));
        let again = setup.propagator.extract(&HeaderExtractor(&headers));
        let again = again.span().span_context().clone();
        assert_eq!(again.trace_id(), parent_span.trace_id());
        assert_eq!(again.span_id(), parent_span.span_id());
        assert_eq!(again.trace_flags(), parent_span.trace_flags());
    }
    let info = CallInfo::rpc(RpcSystem::Grpc, "fuzz.Echo", "Echo");
    let call = setup.tracing.start_server(&info, carrier);
    if parent_span.is_valid() {
        assert_eq!(
            call.context().span().span_context().trace_id(),
            parent_span.trace_id()
        );
    }
    call.finish(&Outcome::default());
    drop(Context::current());
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    let mut headers = HeaderMap::new();
    let mut metainfo = MetaInfo::default();
    for (name, value) in FIELDS.iter().zip(data.split(|b| *b == 0)) {
        if let Ok(header) = HeaderValue::from_bytes(value) {
            headers.insert(*name, header);
        }
        metainfo.set_upstream(*name, String::from_utf8_lossy(value).into_owned());
    }
    check(setup, &HeaderExtractor(&headers));
    check(setup, &MetaInfoExtractor(&metainfo));
});
