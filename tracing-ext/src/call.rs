//! The framework-free core: start a span for a call, end it with its outcome.

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use opentelemetry::{
    global::BoxedTracer,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer},
    Context, KeyValue, StringValue,
};

use crate::{
    recent::{self, CallNames},
    semconv::{self, Outcome, RpcSystem, Side},
};

/// What a layer knows about a call when it starts.
#[derive(Debug, Clone)]
pub struct CallInfo<'a> {
    /// The RPC system.
    pub system: RpcSystem,
    /// `rpc.service` (gRPC: `package.Service`); for HTTP, the route template.
    pub service: &'a str,
    /// `rpc.method`; for HTTP, the request method.
    pub method: &'a str,
    /// The server's address (`server.address`/`server.port`), where known.
    pub server_addr: Option<SocketAddr>,
    /// The other end's address (`network.peer.*`), where known.
    pub peer_addr: Option<SocketAddr>,
    /// Request size in bytes, where known (recorded with `record_sizes`).
    pub request_size: Option<u64>,
}

/// Formats span names from call info; the default follows the conventions:
/// `package.Service/Method` for RPC, `GET /route` for HTTP.
pub type SpanNameFormatter = Arc<dyn Fn(&CallInfo<'_>) -> String + Send + Sync>;
/// Extra attributes computed from call info.
pub type ExtraAttributes = Arc<dyn Fn(&CallInfo<'_>) -> Vec<KeyValue> + Send + Sync>;
/// Decides whether a call is traced at all (for example, skip health checks).
pub type CallFilter = Arc<dyn Fn(&CallInfo<'_>) -> bool + Send + Sync>;

/// Tracing configuration shared by every layer of a process: the tracer, the
/// propagator and the options. Cheap to clone.
///
/// ```
/// use rpc_ext_tracing::RpcTracing;
///
/// // Global tracer provider and propagators (OTEL_PROPAGATORS or W3C):
/// let tracing = RpcTracing::builder().build();
/// // Skip gRPC health checks, record sizes:
/// let tracing = RpcTracing::builder()
///     .filter(|call| call.service != "grpc.health.v1.Health")
///     .record_sizes(true)
///     .build();
/// # let _ = tracing;
/// ```
#[derive(Clone)]
pub struct RpcTracing {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    tracer: CallTracer,
    propagator: Box<dyn TextMapPropagator + Send + Sync>,
    name: Option<SpanNameFormatter>,
    extra: Option<ExtraAttributes>,
    filter: Option<CallFilter>,
    record_sizes: bool,
    tracing_span: bool,
}

impl std::fmt::Debug for RpcTracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcTracing")
            .field("record_sizes", &self.inner.record_sizes)
            .field("tracing_span", &self.inner.tracing_span)
            .finish_non_exhaustive()
    }
}

/// Builds [`RpcTracing`].
#[must_use]
pub struct RpcTracingBuilder {
    tracer: Option<CallTracer>,
    propagator: Option<Box<dyn TextMapPropagator + Send + Sync>>,
    name: Option<SpanNameFormatter>,
    extra: Option<ExtraAttributes>,
    filter: Option<CallFilter>,
    record_sizes: bool,
    tracing_span: bool,
}

/// The instrumentation scope name of the spans.
pub const INSTRUMENTATION_NAME: &str = "rpc-ext-tracing";

impl RpcTracing {
    /// Starts a builder: global tracer provider, propagators from
    /// `OTEL_PROPAGATORS` (default W3C trace context + baggage).
    pub fn builder() -> RpcTracingBuilder {
        RpcTracingBuilder {
            tracer: None,
            propagator: None,
            name: None,
            extra: None,
            filter: None,
            record_sizes: false,
            tracing_span: true,
        }
    }
}

impl RpcTracingBuilder {
    /// Creates spans with this provider instead of the global one.
    pub fn tracer_provider<P>(mut self, provider: &P) -> Self
    where
        P: opentelemetry::trace::TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as Tracer>::Span: Send + Sync + 'static,
    {
        let scope = opentelemetry::InstrumentationScope::builder(INSTRUMENTATION_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        self.tracer = Some(CallTracer::new(provider.tracer_with_scope(scope)));
        self
    }

    /// Reads and writes context with this propagator instead of the default.
    pub fn propagator(
        mut self,
        propagator: impl TextMapPropagator + Send + Sync + 'static,
    ) -> Self {
        self.propagator = Some(Box::new(propagator));
        self
    }

    /// Names spans with `formatter` instead of the conventional name.
    pub fn span_name(
        mut self,
        formatter: impl Fn(&CallInfo<'_>) -> String + Send + Sync + 'static,
    ) -> Self {
        self.name = Some(Arc::new(formatter));
        self
    }

    /// Adds attributes computed from each call.
    pub fn extra_attributes(
        mut self,
        attributes: impl Fn(&CallInfo<'_>) -> Vec<KeyValue> + Send + Sync + 'static,
    ) -> Self {
        self.extra = Some(Arc::new(attributes));
        self
    }

    /// Traces only calls for which `filter` returns true; the others still
    /// carry the caller's context through.
    pub fn filter(
        mut self,
        filter: impl Fn(&CallInfo<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// Records request and response sizes as span attributes where known.
    pub fn record_sizes(mut self, record: bool) -> Self {
        self.record_sizes = record;
        self
    }

    /// Also enters a `tracing` span (`rpc.call`, with `trace_id` and
    /// `span_id` fields) around each call, so log lines inside a call carry
    /// the ids (default on; costs nothing when no subscriber wants it).
    pub fn tracing_span(mut self, enabled: bool) -> Self {
        self.tracing_span = enabled;
        self
    }

    /// Finishes the configuration.
    pub fn build(self) -> RpcTracing {
        RpcTracing {
            inner: Arc::new(Inner {
                tracer: self.tracer.unwrap_or_else(|| {
                    let scope = opentelemetry::InstrumentationScope::builder(INSTRUMENTATION_NAME)
                        .with_version(env!("CARGO_PKG_VERSION"))
                        .build();
                    CallTracer::Boxed(opentelemetry::global::tracer_with_scope(scope))
                }),
                propagator: self.propagator.unwrap_or_else(crate::propagator_from_env),
                name: self.name,
                extra: self.extra,
                filter: self.filter,
                record_sizes: self.record_sizes,
                tracing_span: self.tracing_span,
            }),
        }
    }
}

/// A call being traced: its context (to run the call in) and, if traced,
/// its span. End it with [`finish`](Self::finish); dropping it unfinished
/// ends the span as cancelled.
#[must_use = "a span ends when the call is finished or dropped"]
pub struct ActiveCall {
    cx: Context,
    side: Side,
    traced: bool,
    record_sizes: bool,
    tracing_span: tracing::Span,
    finished: bool,
}

impl std::fmt::Debug for ActiveCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveCall")
            .field("span", &self.cx.span().span_context())
            .finish_non_exhaustive()
    }
}

impl RpcTracing {
    /// Starts the server span of a call, as a child of the context the
    /// caller sent in `carrier`. Junk or oversize fields start a new trace.
    pub fn start_server(&self, info: &CallInfo<'_>, carrier: &dyn Extractor) -> ActiveCall {
        let parent = self
            .inner
            .propagator
            .extract_with_context(&Context::new(), carrier);
        self.start(info, parent, SpanKind::Server)
    }

    /// Starts the client span of a call as a child of the current context,
    /// and writes that span's context into `carrier` for the server.
    pub fn start_client(&self, info: &CallInfo<'_>, carrier: &mut dyn Injector) -> ActiveCall {
        let call = self.start(info, Context::current(), SpanKind::Client);
        self.inner.propagator.inject_context(&call.cx, carrier);
        call
    }

    fn start(&self, info: &CallInfo<'_>, parent: Context, kind: SpanKind) -> ActiveCall {
        let side = if kind == SpanKind::Server {
            Side::Server
        } else {
            Side::Client
        };
        let inner = &self.inner;
        if inner.filter.as_ref().is_some_and(|filter| !filter(info)) {
            return ActiveCall {
                cx: parent,
                side,
                traced: false,
                record_sizes: false,
                tracing_span: tracing::Span::none(),
                finished: false,
            };
        }
        let mut names = recent::call_names(
            info.system,
            info.service,
            info.method,
            inner.name.is_none().then_some(default_span_name),
        );
        let name: Cow<'static, str> = match &inner.name {
            Some(formatter) => formatter(info).into(),
            None => std::mem::take(&mut names.span_name),
        };
        let builder = SpanBuilder::from_name(name).with_kind(kind);
        let attributes = || self.attributes(info, &names);
        let cx = match &inner.tracer {
            CallTracer::Sdk(tracer) => start_span(tracer, builder, &parent, attributes),
            CallTracer::Boxed(tracer) => start_span(tracer, builder, &parent, attributes),
        };
        let tracing_span = if inner.tracing_span {
            let context = cx.span().span_context().clone();
            tracing::info_span!(
                target: "rpc_ext_tracing::rpc",
                "rpc.call",
                rpc.service = info.service,
                rpc.method = info.method,
                trace_id = %context.trace_id(),
                span_id = %context.span_id(),
            )
        } else {
            tracing::Span::none()
        };
        ActiveCall {
            cx,
            side,
            traced: true,
            record_sizes: inner.record_sizes,
            tracing_span,
            finished: false,
        }
    }
}

impl RpcTracing {
    fn attributes(&self, info: &CallInfo<'_>, names: &CallNames) -> Vec<KeyValue> {
        let mut attributes = attributes_of(info, names);
        if self.inner.record_sizes {
            if let Some(size) = info.request_size {
                attributes.push(KeyValue::new(semconv::RPC_REQUEST_SIZE, size as i64));
            }
        }
        if let Some(extra) = &self.inner.extra {
            attributes.extend(extra(info));
        }
        attributes
    }
}

/// The tracer spans start from.
enum CallTracer {
    /// The SDK's, called directly: its spans are boxed once (by the
    /// context), not twice.
    Sdk(opentelemetry_sdk::trace::SdkTracer),
    /// Any other, and the global one.
    Boxed(BoxedTracer),
}

impl CallTracer {
    fn new<T>(tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        let any: &dyn std::any::Any = &tracer;
        match any.downcast_ref::<opentelemetry_sdk::trace::SdkTracer>() {
            Some(sdk) => Self::Sdk(sdk.clone()),
            None => Self::Boxed(BoxedTracer::new(Box::new(tracer))),
        }
    }
}

/// Room for a span's attributes: the call's (at most 8), the size ones and
/// those added at the end (status, error type), so the `Vec` never grows
/// unless extra attributes are configured.
const ATTRIBUTE_CAPACITY: usize = 12;

/// Starts a span under `parent` and returns the context holding it.
///
/// Under a sampled parent, a parent-based sampler (the SDK's default) keeps
/// the span, so the attributes go into the builder, where the SDK takes the
/// `Vec` as it is. Otherwise they are built only if the sampler kept the
/// span: an unsampled call then costs no string copies. A root span (no
/// parent at all) gets an empty `Vec` sized for them, so that a kept root
/// takes its attributes without growing it; under an unsampled parent the
/// span is usually dropped, and nothing is allocated for it. Samplers
/// always see name, kind and parent; they see the attributes only under a
/// sampled parent, so a sampler that decides on attributes should not be
/// used here.
fn start_span<T>(
    tracer: &T,
    builder: SpanBuilder,
    parent: &Context,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) -> Context
where
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    let parent_span = parent.span();
    let parent_span = parent_span.span_context();
    if parent_span.is_sampled() {
        let span = builder
            .with_attributes(attributes())
            .start_with_context(tracer, parent);
        return parent.with_span(span);
    }
    let builder = if parent_span.is_valid() {
        builder
    } else {
        builder.with_attributes(Vec::with_capacity(ATTRIBUTE_CAPACITY))
    };
    let mut span = builder.start_with_context(tracer, parent);
    if span.is_recording() {
        span.set_attributes(attributes());
    }
    parent.with_span(span)
}

fn default_span_name(system: RpcSystem, service: &str, method: &str) -> String {
    // Joined by hand: `format!` costs several times the copy, per call.
    let join = |first: &str, separator: char, second: &str| {
        let mut name = String::with_capacity(first.len() + 1 + second.len());
        name.push_str(first);
        name.push(separator);
        name.push_str(second);
        name
    };
    match system {
        // HTTP clients know no route: the method alone, per the conventions.
        RpcSystem::Http if service.is_empty() => method.to_owned(),
        RpcSystem::Http => join(method, ' ', service),
        _ => join(service, '/', method),
    }
}

fn attributes_of(info: &CallInfo<'_>, names: &CallNames) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(ATTRIBUTE_CAPACITY);
    match info.system {
        RpcSystem::Http => {
            attributes.push(KeyValue::new(
                semconv::HTTP_REQUEST_METHOD,
                StringValue::from(names.method.clone()),
            ));
            attributes.push(KeyValue::new(
                semconv::HTTP_ROUTE,
                StringValue::from(names.service.clone()),
            ));
        }
        system => {
            attributes.push(KeyValue::new(semconv::RPC_SYSTEM, system.as_str()));
            attributes.push(KeyValue::new(
                semconv::RPC_SERVICE,
                StringValue::from(names.service.clone()),
            ));
            attributes.push(KeyValue::new(
                semconv::RPC_METHOD,
                StringValue::from(names.method.clone()),
            ));
        }
    }
    if let Some(addr) = info.server_addr {
        attributes.push(KeyValue::new(
            semconv::SERVER_ADDRESS,
            recent::ip(addr.ip()),
        ));
        attributes.push(KeyValue::new(semconv::SERVER_PORT, i64::from(addr.port())));
    }
    if let Some(addr) = info.peer_addr {
        attributes.push(KeyValue::new(
            semconv::NETWORK_PEER_ADDRESS,
            recent::ip(addr.ip()),
        ));
        attributes.push(KeyValue::new(
            semconv::NETWORK_PEER_PORT,
            i64::from(addr.port()),
        ));
    }
    attributes
}

impl ActiveCall {
    /// The context to run the call in (holds the span as current).
    #[must_use]
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// The `tracing` span to run the call in (`Span::none()` when disabled).
    #[must_use]
    pub fn tracing_span(&self) -> &tracing::Span {
        &self.tracing_span
    }

    /// Names an HTTP span by the route template once the router has
    /// matched it (`GET /users/{id}`), and records `http.route`.
    pub fn set_http_route(&self, method: &str, route: &str) {
        if !self.traced {
            return;
        }
        let span = self.cx.span();
        span.update_name(format!("{method} {route}"));
        span.set_attribute(KeyValue::new(semconv::HTTP_ROUTE, route.to_owned()));
    }

    /// Ends the span with the call's outcome.
    pub fn finish(mut self, outcome: &Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: &Outcome) {
        if self.finished || !self.traced {
            self.finished = true;
            return;
        }
        self.finished = true;
        let span = self.cx.span();
        let mut error = None;
        if let Some(code) = outcome.grpc_code {
            span.set_attribute(KeyValue::new(
                semconv::RPC_GRPC_STATUS_CODE,
                i64::from(code.as_i32()),
            ));
            if semconv::grpc_code_is_error(code, self.side) {
                error = Some(Cow::Borrowed(code.as_label()));
            }
        }
        if let Some(status) = outcome.http_status {
            span.set_attribute(KeyValue::new(
                semconv::HTTP_RESPONSE_STATUS_CODE,
                i64::from(status),
            ));
            if semconv::http_status_is_error(status, self.side) {
                error = Some(Cow::Owned(status.to_string()));
            }
        }
        if let Some(error_type) = &outcome.error_type {
            error = Some(error_type.clone());
        }
        if self.record_sizes {
            if let Some(size) = outcome.response_size {
                span.set_attribute(KeyValue::new(semconv::RPC_RESPONSE_SIZE, size as i64));
            }
        }
        if let Some(error) = error {
            span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error.to_string()));
            span.set_status(Status::error(error));
        }
        span.end();
    }
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        // Dropped unfinished: the caller went away (or the future was cancelled).
        self.end(&Outcome {
            error_type: Some(Cow::Borrowed("cancelled")),
            ..Outcome::default()
        });
    }
}
