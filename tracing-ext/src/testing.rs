//! Unit-test support: a tracer provider whose ended spans are kept in
//! memory, and what the sampler saw of each span as it started.

use std::sync::{Arc, Mutex};

use opentelemetry::{
    trace::{Link, SpanKind, TraceId, TraceState},
    Context, KeyValue, Value,
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{
        SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample, Span, SpanData,
        SpanProcessor,
    },
};

use crate::{semconv::Conventions, RpcTracing, RpcTracingBuilder};

/// A span's name and attributes as the sampler saw them.
type Started = (String, Vec<KeyValue>);

/// Spans ended, and the attributes each span started with (what a sampler
/// is given), by span name at the start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorded {
    ended: Arc<Mutex<Vec<SpanData>>>,
    started: Arc<Mutex<Vec<Started>>>,
}

impl Recorded {
    /// A tracing set-up (current conventions unless `configure` says
    /// otherwise) recording into a fresh `Recorded`.
    pub(crate) fn tracing(
        configure: impl FnOnce(RpcTracingBuilder) -> RpcTracingBuilder,
    ) -> (RpcTracing, Self) {
        let recorded = Self::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(recorded.clone())
            .with_span_processor(recorded.clone())
            .build();
        let builder = RpcTracing::builder()
            .tracer_provider(&provider)
            .conventions(Conventions::Current)
            .tracing_span(false);
        (configure(builder).build(), recorded)
    }

    pub(crate) fn ended(&self) -> Vec<SpanData> {
        self.ended.lock().unwrap().clone()
    }

    /// Forgets the spans ended so far.
    pub(crate) fn clear(&self) {
        self.ended.lock().unwrap().clear();
    }

    /// The one span ended.
    pub(crate) fn only(&self) -> SpanData {
        let ended = self.ended();
        assert_eq!(ended.len(), 1, "{ended:#?}");
        ended.into_iter().next().unwrap()
    }

    /// The attributes the sampler saw for the last span started.
    pub(crate) fn last_started(&self) -> Started {
        self.started
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a span started")
    }
}

/// Tracing whose sampler keeps nothing (`AlwaysOff`), with no `tracing`
/// span: every call is unsampled.
pub(crate) fn never_sampled() -> RpcTracing {
    let provider = SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff)
        .build();
    RpcTracing::builder()
        .tracer_provider(&provider)
        .tracing_span(false)
        .build()
}

/// The value of `key` in `attributes`, as text.
pub(crate) fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let matching: Vec<&Value> = attributes
        .iter()
        .filter(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
        .collect();
    assert!(matching.len() <= 1, "{key} set twice: {attributes:?}");
    matching.first().map(|value| value.as_str().into_owned())
}

/// The keys of `attributes`, sorted.
pub(crate) fn keys(attributes: &[KeyValue]) -> Vec<String> {
    let mut keys: Vec<String> = attributes.iter().map(|kv| kv.key.to_string()).collect();
    keys.sort();
    keys
}

impl ShouldSample for Recorded {
    fn should_sample(
        &self,
        _parent: Option<&Context>,
        _trace_id: TraceId,
        name: &str,
        _kind: &SpanKind,
        attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        self.started
            .lock()
            .unwrap()
            .push((name.to_owned(), attributes.to_vec()));
        SamplingResult {
            decision: SamplingDecision::RecordAndSample,
            attributes: Vec::new(),
            trace_state: TraceState::default(),
        }
    }
}

impl SpanProcessor for Recorded {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.ended.lock().unwrap().push(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// A `traceparent` of a sampled parent: spans under it start with their
/// attributes, so the sampler sees them.
pub(crate) const SAMPLED_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
