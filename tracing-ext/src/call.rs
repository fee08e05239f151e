//! The framework-free core: start a span for a call (its name and the
//! attributes known at the start, per the conventions chosen); the
//! [`ActiveCall`] it returns ends it.

use std::{borrow::Cow, sync::Arc};

use opentelemetry::{
    global::BoxedTracer,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{Span as _, SpanBuilder, SpanKind, TraceContextExt, Tracer},
    Context, KeyValue,
};
use rpc_ext_core::semconv::{self, Conventions};

use crate::{
    active::{ActiveCall, Pending},
    attributes::{self, Method},
    methods::MethodSet,
    recent,
    request_id::{RequestId, X_REQUEST_ID},
    CallInfo, RpcSystem, Side,
};

/// Formats span names from call info, instead of the conventional names
/// (`package.Service/Method`, `GET /route`).
pub type SpanNameFormatter = Arc<dyn Fn(&CallInfo<'_>) -> String + Send + Sync>;
/// Extra attributes computed from call info.
pub type ExtraAttributes = Arc<dyn Fn(&CallInfo<'_>) -> Vec<KeyValue> + Send + Sync>;
/// Decides whether a call is traced at all.
pub type CallFilter = Arc<dyn Fn(&CallInfo<'_>) -> bool + Send + Sync>;

/// Tracing configuration shared by every layer of a process: the tracer, the
/// propagator and the options. Cheap to clone.
///
/// Spans follow the OpenTelemetry semantic conventions
/// ([`semconv::SEMCONV_VERSION`](crate::semconv::SEMCONV_VERSION)): an RPC
/// span is named by its full method (`echo.Echo/Say`) and carries
/// `rpc.system.name`, `rpc.method`, `rpc.response.status_code` (the gRPC
/// status name), `server.address`/`server.port`, `network.peer.*` and, when
/// the call failed, `error.type`. The names before v1.38 are available with
/// [`RpcTracingBuilder::conventions`](crate::RpcTracingBuilder::conventions).
///
/// ```
/// use rpc_ext_tracing::RpcTracing;
///
/// // Global tracer provider and propagators (OTEL_PROPAGATORS or W3C):
/// let tracing = RpcTracing::builder().build();
/// // Leave out an internal service, record sizes:
/// let tracing = RpcTracing::builder()
///     .filter(|call| call.service != "echo.Internal")
///     .record_sizes(true)
///     .build();
/// # let _ = tracing;
/// ```
#[derive(Clone)]
pub struct RpcTracing {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) tracer: CallTracer,
    pub(crate) propagator: Box<dyn TextMapPropagator + Send + Sync>,
    pub(crate) name: Option<SpanNameFormatter>,
    pub(crate) extra: Option<ExtraAttributes>,
    pub(crate) filter: Option<CallFilter>,
    pub(crate) record_sizes: bool,
    pub(crate) tracing_span: bool,
    pub(crate) conventions: Conventions,
    pub(crate) methods: Arc<MethodSet>,
    pub(crate) trace_health_checks: bool,
    pub(crate) skip_http_routes: Box<[Box<str>]>,
    /// Carry the inbound `x-request-id` to the calls made inside a call.
    pub(crate) forward_request_id: bool,
}

impl std::fmt::Debug for RpcTracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcTracing")
            .field("conventions", &self.inner.conventions)
            .field("record_sizes", &self.inner.record_sizes)
            .field("tracing_span", &self.inner.tracing_span)
            .field("trace_health_checks", &self.inner.trace_health_checks)
            .field("skip_http_routes", &self.inner.skip_http_routes)
            .field("forward_request_id", &self.inner.forward_request_id)
            .finish_non_exhaustive()
    }
}

/// The instrumentation scope name of the spans.
pub const INSTRUMENTATION_NAME: &str = "rpc-ext-tracing";

/// How a server learns that the method a call names is real.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recognition {
    /// The name is not from the network (a client's own call, a server
    /// configured with its service name, an HTTP route template).
    Trusted,
    /// From the network, unchecked: named from the start if the method set
    /// holds it, else settled by the status the call ends with (gRPC).
    AtEnd,
    /// From the network but checked by the framework before the layer (a
    /// decoded Thrift method; the service name may still be the caller's
    /// word): added to the method set at the start while it has room.
    AtStart,
}

impl RpcTracing {
    /// Starts the server span of a call, as a child of the context the
    /// caller sent in `carrier`. Junk or oversize fields start a new trace.
    ///
    /// A gRPC method the server is not yet known to serve is not named at
    /// the start: the span is named `grpc` and gets its `rpc.method` when
    /// the call ends ([`ActiveCall::finish`] with the gRPC status), the
    /// method itself if the status says the server served it, else
    /// `_OTHER` with the name in `rpc.method_original`.
    ///
    /// With
    /// [`forward_request_id`](crate::RpcTracingBuilder::forward_request_id)
    /// on, a valid `x-request-id` in `carrier` goes in the call's context
    /// as a [`RequestId`], for the calls made inside it, and on its span.
    pub fn start_server(&self, info: &CallInfo<'_>, carrier: &dyn Extractor) -> ActiveCall {
        let recognition = match info.system {
            RpcSystem::Grpc => Recognition::AtEnd,
            RpcSystem::Thrift => Recognition::AtStart,
            RpcSystem::Http => Recognition::Trusted,
        };
        self.start_server_with(info, carrier, recognition)
    }

    pub(crate) fn start_server_with(
        &self,
        info: &CallInfo<'_>,
        carrier: &dyn Extractor,
        recognition: Recognition,
    ) -> ActiveCall {
        #[cfg(feature = "fastrace")]
        if let CallTracer::Fastrace(sampler) = &self.inner.tracer {
            return crate::fastrace_span::start_server(self, sampler, info, carrier, recognition);
        }
        let parent = self
            .inner
            .propagator
            .extract_with_context(&Context::new(), carrier);
        // Forwarding off, or no valid id: the same path as without the
        // option, with no id to hold or drop.
        if self.inner.forward_request_id {
            if let Some(id) = carrier.get(X_REQUEST_ID).and_then(RequestId::parse) {
                let parent = parent.with_value(id.clone());
                let call = self.start(info, parent, Side::Server, recognition);
                call.record_request_id(&id);
                return call;
            }
        }
        self.start(info, parent, Side::Server, recognition)
    }

    /// Starts the client span of a call as a child of the current context,
    /// and writes that span's context into `carrier` for the server. With
    /// [`forward_request_id`](crate::RpcTracingBuilder::forward_request_id)
    /// on, the current context's [`RequestId`] goes in `carrier` too, as
    /// `x-request-id` (this crate's carriers keep one the request already
    /// has).
    pub fn start_client(&self, info: &CallInfo<'_>, carrier: &mut dyn Injector) -> ActiveCall {
        #[cfg(feature = "fastrace")]
        if let CallTracer::Fastrace(sampler) = &self.inner.tracer {
            return crate::fastrace_span::start_client(self, sampler, info, carrier);
        }
        let call = self.start(info, Context::current(), Side::Client, Recognition::Trusted);
        self.inner
            .propagator
            .inject_context(call.context(), carrier);
        if self.inner.forward_request_id {
            if let Some(id) = call.context().get::<RequestId>() {
                carrier.set(X_REQUEST_ID, id.as_str().to_owned());
            }
        }
        call
    }

    fn start(
        &self,
        info: &CallInfo<'_>,
        parent: Context,
        side: Side,
        recognition: Recognition,
    ) -> ActiveCall {
        let inner = &self.inner;
        let Some((method, name)) = self.plan(info, side, recognition) else {
            return ActiveCall::untraced(parent, side, info.system);
        };
        let kind = if side.is_server() {
            SpanKind::Server
        } else {
            SpanKind::Client
        };
        let builder = SpanBuilder::from_name(name).with_kind(kind);
        let attributes = || {
            let mut attributes = attributes::at_start(info, &method, side, inner.conventions);
            if inner.record_sizes {
                if let Some(size) = info.request_size {
                    attributes.push(KeyValue::new(
                        crate::semconv::RPC_REQUEST_SIZE,
                        i64::try_from(size).unwrap_or(i64::MAX),
                    ));
                }
            }
            if let Some(extra) = &inner.extra {
                attributes.extend(extra(info));
            }
            attributes
        };
        let (cx, recording) = match &inner.tracer {
            CallTracer::Sdk(tracer) => start_span(tracer, builder, &parent, attributes),
            CallTracer::Boxed(tracer) => start_span(tracer, builder, &parent, attributes),
            // Started by `fastrace::start`, never here.
            #[cfg(feature = "fastrace")]
            CallTracer::Fastrace(_) => (parent, false),
        };
        let tracing_span = if inner.tracing_span {
            let span = cx.span();
            let context = span.span_context();
            self.tracing_span(&method, context.trace_id(), context.span_id())
        } else {
            tracing::Span::none()
        };
        let mut call = ActiveCall::traced(cx, side, info.system, inner.conventions, tracing_span);
        call.recording = recording;
        self.settings(&mut call, info, method, side);
        call
    }

    /// The method and name of a call to trace, or `None` for a call left
    /// out (filtered, a skipped route, a health check).
    pub(crate) fn plan<'a>(
        &self,
        info: &CallInfo<'a>,
        side: Side,
        recognition: Recognition,
    ) -> Option<(Method<'a>, Cow<'static, str>)> {
        let inner = &self.inner;
        if inner.filter.as_ref().is_some_and(|filter| !filter(info))
            || (side.is_server() && self.skips_route(info))
        {
            return None;
        }
        let method = self.method(info, side, recognition);
        if !inner.trace_health_checks && info.system == RpcSystem::Grpc {
            let full = match &method {
                Method::Known(names) => Some(&*names.full),
                Method::Pending(full) => Some(full.as_str()),
                Method::Other(_) | Method::Http(..) => None,
            };
            if full.is_some_and(semconv::is_grpc_health) {
                return None;
            }
        }
        let name: Cow<'static, str> = match (&inner.name, &method) {
            (Some(formatter), _) => formatter(info).into(),
            (None, Method::Known(names) | Method::Http(names, _)) => names.full.clone(),
            (None, Method::Pending(_) | Method::Other(_)) => Cow::Borrowed(info.system.as_str()),
        };
        Some((method, name))
    }

    /// The `tracing` span a call runs in, with the ids of its span.
    pub(crate) fn tracing_span(
        &self,
        method: &Method<'_>,
        trace_id: impl std::fmt::Display,
        span_id: impl std::fmt::Display,
    ) -> tracing::Span {
        // No subscriber wants INFO (none is installed): the macro would
        // still build the span's fields to hand them to `log` (tracing's
        // `log` feature, which axum and others turn on), on every call.
        // This span is for `tracing` subscribers; `log` has no spans to
        // correlate with.
        if tracing::level_filters::LevelFilter::current() < tracing::Level::INFO {
            return tracing::Span::none();
        }
        let logged = match method {
            Method::Known(names) | Method::Http(names, _) => &*names.full,
            Method::Pending(full) => full,
            Method::Other(raw) => raw,
        };
        tracing::info_span!(
            target: "rpc_ext_tracing::rpc",
            "rpc.call",
            rpc.method = logged,
            trace_id = %trace_id,
            span_id = %span_id,
        )
    }

    /// What a traced call needs to know at its end, from how it started.
    pub(crate) fn settings(
        &self,
        call: &mut ActiveCall,
        info: &CallInfo<'_>,
        method: Method<'_>,
        side: Side,
    ) {
        let inner = &self.inner;
        call.record_sizes = inner.record_sizes;
        call.renames = inner.name.is_none();
        call.peer_known = info.peer_addr.is_some();
        if let Method::Http(_, normalized) = method {
            call.http_method = normalized;
            call.route_known = !info.service.is_empty() && side.is_server();
        }
        if let Method::Pending(full) = method {
            // Settled (and learned) even when the span records nothing, so
            // that unsampled calls do not stay unknown for good.
            // Boxed: the call is moved from future to body, and a pending
            // method is the rare case.
            call.pending = Some(Box::new(Pending {
                service_len: info.service.len(),
                full,
                methods: Arc::clone(&inner.methods),
            }));
        }
    }

    /// How the span names the call's method.
    fn method<'a>(&self, info: &CallInfo<'a>, side: Side, recognition: Recognition) -> Method<'a> {
        if info.system == RpcSystem::Http {
            let normalized = http_method(info.method);
            // Clients know no route: the span is named by the method.
            let route = if side.is_server() { info.service } else { "" };
            return Method::Http(
                recent::call_names(RpcSystem::Http, route, normalized),
                normalized,
            );
        }
        if info.service.is_empty() || info.method.is_empty() {
            return Method::Other(Cow::Borrowed(info.method));
        }
        let methods = &self.inner.methods;
        let recognized = |in_set: &dyn Fn(&str) -> bool| {
            recent::recognized_names(info.system, info.service, info.method, methods.id(), in_set)
        };
        match (side, recognition) {
            (Side::Client, _) | (_, Recognition::Trusted) => {
                Method::Known(recent::call_names(info.system, info.service, info.method))
            }
            (Side::Server, Recognition::AtEnd) => {
                match recognized(&|full| methods.contains(full)) {
                    Ok(names) => Method::Known(names),
                    Err(full) => Method::Pending(full),
                }
            }
            (Side::Server, Recognition::AtStart) => match recognized(&|full| methods.learn(full)) {
                Ok(names) => Method::Known(names),
                Err(full) => Method::Other(Cow::Owned(full)),
            },
        }
    }

    /// Whether an HTTP server call is to a route left out: its route
    /// template is listed or, before routing, its path is a listed
    /// template without parameters.
    fn skips_route(&self, info: &CallInfo<'_>) -> bool {
        let routes = &self.inner.skip_http_routes;
        if info.system != RpcSystem::Http || routes.is_empty() {
            return false;
        }
        if !info.service.is_empty() {
            return routes.iter().any(|route| **route == *info.service);
        }
        let Some(url) = &info.url else {
            return false;
        };
        routes
            .iter()
            .any(|route| **route == *url.path && !route.contains(['{', '*', ':']))
    }
}

/// The `http.request.method` of a method as sent.
fn http_method(method: &str) -> &'static str {
    match http::Method::from_bytes(method.as_bytes()) {
        Ok(method) => semconv::http_method(&method),
        Err(_) => semconv::OTHER,
    }
}

/// The tracer spans start from.
pub(crate) enum CallTracer {
    /// The SDK's, called directly: its spans are boxed once (by the
    /// context), not twice.
    Sdk(opentelemetry_sdk::trace::SdkTracer),
    /// Any other, and the global one.
    Boxed(BoxedTracer),
    /// No OpenTelemetry tracer: spans are fastrace's, sampled so.
    #[cfg(feature = "fastrace")]
    Fastrace(crate::FastraceSampler),
}

impl CallTracer {
    pub(crate) fn new<T>(tracer: T) -> Self
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

/// Starts a span under `parent` and returns the context holding it, and
/// whether the span records (asked of the span while it is still ours: in
/// the context, every question takes a lock).
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
) -> (Context, bool)
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
        let recording = span.is_recording();
        return (parent.with_span(span), recording);
    }
    let builder = if parent_span.is_valid() {
        builder
    } else {
        builder.with_attributes(Vec::with_capacity(attributes::CAPACITY))
    };
    let mut span = builder.start_with_context(tracer, parent);
    let recording = span.is_recording();
    if recording {
        span.set_attributes(attributes());
    }
    (parent.with_span(span), recording)
}
