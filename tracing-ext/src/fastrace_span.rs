//! The fastrace path (feature `fastrace`): calls start a [`fastrace::Span`]
//! instead of an OpenTelemetry span, with the same name, kind, attributes
//! and status, and W3C `traceparent` propagation. No OpenTelemetry context
//! is built or attached per call (unless `x-request-id` forwarding is on):
//! the call's span is fastrace's local parent while the call's future is
//! polled, so a user's own fastrace spans and ours form one trace.

use std::borrow::Cow;

use fastrace::{
    collector::{SpanContext, SpanId, TraceId},
    Span,
};
use opentelemetry::{
    propagation::{Extractor, Injector},
    Context, KeyValue,
};

use crate::{
    active::ActiveCall,
    attributes::{self, AttributeValue, Attributes},
    call::Recognition,
    request_id::{RequestId, X_REQUEST_ID},
    w3c, CallInfo, FastraceSampler, RpcTracing, Side,
};

/// The name a span is renamed to after it started (a gRPC method settled at
/// the end, an HTTP route matched later): fastrace spans keep the name they
/// start with, so the new name travels as this property and
/// [`FastraceSpanExporter`](crate::FastraceSpanExporter) applies it.
///
/// ```
/// assert_eq!(rpc_ext_tracing::SPAN_NAME_PROPERTY, "rpc_ext.span.name");
/// ```
pub const SPAN_NAME_PROPERTY: &str = "rpc_ext.span.name";

const TRACEPARENT: &str = "traceparent";

/// A call's fastrace span, and what it learns while it runs.
pub(crate) struct FastCall {
    pub(crate) span: Span,
    /// The attributes known at the start (of a sampled span), given to the
    /// span with those of the end in one go: a fastrace span's properties
    /// would otherwise be copied in twice and grown once.
    pub(crate) properties: Properties,
    /// A route matched after the start (its span name and route),
    /// recorded at the end: a live fastrace span takes properties only
    /// through a pseudo-span each.
    pub(crate) late_route: std::sync::OnceLock<(Cow<'static, str>, std::sync::Arc<str>)>,
}

/// Attributes gathered for one `with_properties` call: a span takes them in
/// one go (adding them one at a time to a live fastrace span costs a
/// pseudo-span each).
pub(crate) struct Properties(Vec<(Cow<'static, str>, Cow<'static, str>)>);

impl Properties {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    /// Adds a property under a key known only at run time.
    pub(crate) fn push_owned(&mut self, attribute: KeyValue) {
        let value = attribute.value.as_str().into_owned();
        self.0
            .push((Cow::Owned(attribute.key.into()), Cow::Owned(value)));
    }

    pub(crate) fn push_static(&mut self, key: &'static str, value: Cow<'static, str>) {
        self.0.push((Cow::Borrowed(key), value));
    }

    /// Gives the properties to `span`.
    pub(crate) fn apply(self, span: Span) -> Span {
        if self.0.is_empty() {
            return span;
        }
        span.with_properties(|| self.0)
    }
}

impl Attributes for Properties {
    fn add(&mut self, key: &'static str, value: impl AttributeValue) {
        self.0.push((Cow::Borrowed(key), value.into_text()));
    }
}

/// Starts a server call's fastrace span, as a child of the `traceparent`
/// in `carrier` (else a new trace), sampled by `sampler`.
pub(crate) fn start_server(
    tracing: &RpcTracing,
    sampler: &FastraceSampler,
    info: &CallInfo<'_>,
    carrier: &dyn Extractor,
    recognition: Recognition,
) -> ActiveCall {
    let request_id = tracing
        .inner
        .forward_request_id
        .then(|| carrier.get(X_REQUEST_ID).and_then(RequestId::parse))
        .flatten();
    let cx = match &request_id {
        Some(id) => Context::new().with_value(id.clone()),
        None => Context::new(),
    };
    let remote = carrier
        .get(TRACEPARENT)
        .and_then(w3c::parse_traceparent)
        .filter(|(trace_id, span_id, _)| *trace_id != 0 && *span_id != 0);
    let Some((method, name)) = tracing.plan(info, Side::Server, recognition) else {
        // Left out, but the caller's trace still reaches the calls made
        // inside, as on the SDK path: its context is current while the call
        // runs (an untraced server call attaches it), where `start_client`
        // looks when fastrace has no local parent.
        let cx = match remote {
            Some((trace_id, span_id, flags)) => {
                use opentelemetry::trace::TraceContextExt as _;
                cx.with_remote_span_context(opentelemetry::trace::SpanContext::new(
                    opentelemetry::trace::TraceId::from(trace_id),
                    opentelemetry::trace::SpanId::from(span_id),
                    opentelemetry::trace::TraceFlags::new(flags),
                    true,
                    opentelemetry::trace::TraceState::NONE,
                ))
            }
            None => cx,
        };
        return ActiveCall::untraced(cx, Side::Server, info.system);
    };
    let parent = match remote {
        Some((trace_id, span_id, flags)) => SpanContext::new(TraceId(trace_id), SpanId(span_id))
            .sampled(sampler.keeps_child_of_remote(flags & 1 == 1, trace_id)),
        None => root(sampler),
    };
    let span = Span::root(name, parent);
    let mut call = start(
        tracing,
        cx,
        span,
        parent.sampled,
        &method,
        info,
        Side::Server,
        |props| {
            if remote.is_some() {
                props.push_static(
                    fastrace_opentelemetry::SPAN_PARENT_SPAN_IS_REMOTE,
                    Cow::Borrowed("true"),
                );
            }
            if let Some(id) = &request_id {
                attributes::request_id(props, id, info.system, tracing.inner.conventions);
            }
        },
    );
    // The id lives in the OpenTelemetry context, as on the SDK path: it is
    // attached around polls only when there is one.
    call.attach_context = request_id.is_some();
    tracing.settings(&mut call, info, method, Side::Server);
    call
}

/// Starts a client call's fastrace span as a child of the current fastrace
/// local parent (else a new trace) and writes its `traceparent` into
/// `carrier`.
pub(crate) fn start_client(
    tracing: &RpcTracing,
    sampler: &FastraceSampler,
    info: &CallInfo<'_>,
    carrier: &mut dyn Injector,
) -> ActiveCall {
    let forwarded = tracing
        .inner
        .forward_request_id
        .then(|| Context::current().get::<RequestId>().cloned())
        .flatten();
    if let Some(id) = &forwarded {
        carrier.set(X_REQUEST_ID, id.as_str().to_owned());
    }
    let Some((method, name)) = tracing.plan(info, Side::Client, Recognition::Trusted) else {
        // Left out: the caller's trace still reaches the server.
        if let Some(parent) = SpanContext::current_local_parent().or_else(current_otel_parent) {
            carrier.set(TRACEPARENT, traceparent(&parent));
        }
        return ActiveCall::untraced(Context::new(), Side::Client, info.system);
    };
    let (span, sampled) = match SpanContext::current_local_parent() {
        Some(parent) => (Span::enter_with_local_parent(name), parent.sampled),
        None => {
            // Inside a server call left out (its caller's context), or in
            // code traced with OpenTelemetry: a child of that; else a root.
            let parent = match current_otel_parent() {
                Some(parent) => {
                    let sampled = sampler.keeps_child_of_remote(parent.sampled, parent.trace_id.0);
                    parent.sampled(sampled)
                }
                None => root(sampler),
            };
            (Span::root(name, parent), parent.sampled)
        }
    };
    let call = start(
        tracing,
        Context::new(),
        span,
        sampled,
        &method,
        info,
        Side::Client,
        |_| {},
    );
    if let Some(context) = call
        .fast
        .as_ref()
        .and_then(|fast| SpanContext::from_span(&fast.span))
    {
        carrier.set(TRACEPARENT, traceparent(&context));
    }
    let mut call = call;
    tracing.settings(&mut call, info, method, Side::Client);
    call
}

/// The span of the current OpenTelemetry context, if there is one (a
/// server call left out carries its caller's there).
fn current_otel_parent() -> Option<SpanContext> {
    use opentelemetry::trace::TraceContextExt as _;
    let cx = Context::current();
    let span = cx.span();
    let parent = span.span_context();
    parent.is_valid().then(|| {
        SpanContext::new(
            TraceId(u128::from_be_bytes(parent.trace_id().to_bytes())),
            SpanId(u64::from_be_bytes(parent.span_id().to_bytes())),
        )
        .sampled(parent.is_sampled())
    })
}

/// A new trace's parent: a random trace id, no span, sampled by the ratio.
fn root(sampler: &FastraceSampler) -> SpanContext {
    let trace_id = TraceId::random();
    SpanContext::new(trace_id, SpanId(0)).sampled(sampler.keeps_root(trace_id.0))
}

fn traceparent(context: &SpanContext) -> String {
    w3c::write_traceparent(context.trace_id.0, context.span_id.0, context.sampled)
}

/// The call around a started span: its start attributes if it records, its
/// `tracing` span.
#[allow(clippy::too_many_arguments)] // One private helper of the two starts.
fn start(
    tracing: &RpcTracing,
    cx: Context,
    span: Span,
    sampled: bool,
    method: &attributes::Method<'_>,
    info: &CallInfo<'_>,
    side: Side,
    more: impl FnOnce(&mut Properties),
) -> ActiveCall {
    let inner = &tracing.inner;
    let properties = if sampled {
        // Room for the end's attributes too.
        let mut props = Properties::with_capacity(attributes::CAPACITY + 4);
        props.push_static(
            fastrace_opentelemetry::SPAN_KIND,
            Cow::Borrowed(if side.is_server() { "server" } else { "client" }),
        );
        attributes::write_start(&mut props, info, method, side, inner.conventions);
        if inner.record_sizes {
            if let Some(size) = info.request_size {
                props.add(
                    crate::semconv::RPC_REQUEST_SIZE,
                    i64::try_from(size).unwrap_or(i64::MAX),
                );
            }
        }
        if let Some(extra) = &inner.extra {
            for attribute in extra(info) {
                props.push_owned(attribute);
            }
        }
        more(&mut props);
        props
    } else {
        Properties::with_capacity(0)
    };
    let tracing_span = match SpanContext::from_span(&span).filter(|_| inner.tracing_span) {
        Some(context) => tracing.tracing_span(method, context.trace_id, context.span_id),
        None => tracing::Span::none(),
    };
    let mut call = ActiveCall::traced(cx, side, info.system, inner.conventions, tracing_span);
    call.recording = sampled;
    call.fast = Some(Box::new(FastCall {
        span,
        properties,
        late_route: std::sync::OnceLock::new(),
    }));
    call
}
