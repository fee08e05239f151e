//! [`RpcTracingBuilder`]: the options of [`RpcTracing`].

use std::sync::Arc;

use opentelemetry::{propagation::TextMapPropagator, trace::Tracer, KeyValue};
use rpc_ext_core::{
    mesh::{Mesh, MeshMode},
    semconv::Conventions,
};

use crate::{
    call::{CallFilter, CallTracer, ExtraAttributes, Inner, SpanNameFormatter},
    methods::{MethodSet, DEFAULT_MAX_METHODS},
    CallInfo, RpcTracing, INSTRUMENTATION_NAME,
};

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
    conventions: Option<Conventions>,
    recognized_methods: Vec<String>,
    max_methods: usize,
    trace_health_checks: bool,
    skip_http_routes: Vec<Box<str>>,
    mesh: MeshMode,
    forward_request_id: Option<bool>,
    #[cfg(feature = "fastrace")]
    fastrace: Option<crate::FastraceSampler>,
}

impl std::fmt::Debug for RpcTracingBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcTracingBuilder")
            .field("conventions", &self.conventions)
            .field("max_methods", &self.max_methods)
            .field("trace_health_checks", &self.trace_health_checks)
            .field("mesh", &self.mesh)
            .field("forward_request_id", &self.forward_request_id)
            .finish_non_exhaustive()
    }
}

impl RpcTracing {
    /// Starts a builder: global tracer provider, propagators from
    /// `OTEL_PROPAGATORS` (default W3C trace context + baggage), the
    /// conventions `OTEL_SEMCONV_STABILITY_OPT_IN` asks for (default the
    /// current ones), gRPC health checks left out, `x-request-id`
    /// forwarded in mesh mode only.
    pub fn builder() -> RpcTracingBuilder {
        RpcTracingBuilder {
            tracer: None,
            propagator: None,
            name: None,
            extra: None,
            filter: None,
            record_sizes: false,
            tracing_span: true,
            conventions: None,
            recognized_methods: Vec::new(),
            max_methods: DEFAULT_MAX_METHODS,
            trace_health_checks: false,
            skip_http_routes: Vec::new(),
            mesh: MeshMode::Auto,
            forward_request_id: None,
            #[cfg(feature = "fastrace")]
            fastrace: None,
        }
    }
}

impl RpcTracingBuilder {
    #[cfg(feature = "fastrace")]
    fn fastrace_tracer(&self) -> Option<CallTracer> {
        self.fastrace.map(CallTracer::Fastrace)
    }

    #[cfg(not(feature = "fastrace"))]
    #[allow(clippy::unused_self)] // The same call with or without the feature.
    fn fastrace_tracer(&self) -> Option<CallTracer> {
        None
    }

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

    /// Which RPC attribute names spans carry, instead of what
    /// `OTEL_SEMCONV_STABILITY_OPT_IN` asks for
    /// ([`Conventions::from_env`]; unset: the current ones).
    ///
    /// - [`Conventions::Current`]: `rpc.system.name`, `rpc.method` as the
    ///   full method (`echo.Echo/Say`), `rpc.response.status_code` as the
    ///   status name (`DEADLINE_EXCEEDED`), `error.type` the status name.
    /// - [`Conventions::Old`]: the names before v1.38, as this crate wrote
    ///   them before: `rpc.system`, `rpc.service`, `rpc.method` the short
    ///   method (`Say`), `rpc.grpc.status_code` the number, `error.type`
    ///   the number.
    /// - [`Conventions::Dup`]: both sets. The one key they share,
    ///   `rpc.method`, carries the current value (the full method), as
    ///   does `error.type`.
    ///
    /// Span names are the same in every mode: the full method.
    ///
    /// ```
    /// use rpc_ext_tracing::{semconv::Conventions, RpcTracing};
    ///
    /// let tracing = RpcTracing::builder().conventions(Conventions::Dup).build();
    /// # let _ = tracing;
    /// ```
    pub fn conventions(mut self, conventions: Conventions) -> Self {
        self.conventions = Some(conventions);
        self
    }

    /// gRPC methods the servers serve, known up front (`echo.Echo/Say`, a
    /// leading `/` allowed): their server spans carry `rpc.method` from the
    /// start, where samplers see it, from the first call on. Other methods
    /// are learned from traffic: a server span whose method is not known
    /// yet is named `grpc` and gets `rpc.method` when the call ends, the
    /// method if the call ended OK (any other status may come from a layer
    /// in front of the router, for any path), else `_OTHER` (with the name
    /// the client sent in
    /// `rpc.method_original`). These methods do not count towards
    /// [`max_methods`](Self::max_methods).
    ///
    /// ```
    /// use rpc_ext_tracing::RpcTracing;
    ///
    /// let tracing = RpcTracing::builder()
    ///     .recognized_methods(["echo.Echo/Say", "echo.Echo/Count"])
    ///     .build();
    /// # let _ = tracing;
    /// ```
    pub fn recognized_methods(
        mut self,
        methods: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.recognized_methods
            .extend(methods.into_iter().map(Into::into));
        self
    }

    /// Most gRPC methods learned from traffic (default 1,000): the set is
    /// kept for the life of the process, and method names come from the
    /// network. Past it, calls to methods not learned by then are recorded
    /// as `_OTHER`.
    pub fn max_methods(mut self, max: usize) -> Self {
        self.max_methods = max;
        self
    }

    /// Traces calls to the standard gRPC health service
    /// (`grpc.health.v1.Health/*`), which are left out by default: a
    /// probe every few seconds is noise in every trace store.
    pub fn trace_health_checks(mut self, trace: bool) -> Self {
        self.trace_health_checks = trace;
        self
    }

    /// Leaves out HTTP server calls to these route templates (`/healthz`,
    /// `/metrics`). A layer that runs before the router (Volo HTTP, a
    /// tower layer outside axum's `Router::layer`) knows no route when the
    /// call starts; it leaves out requests whose path is one of the listed
    /// templates that have no parameters.
    ///
    /// ```
    /// use rpc_ext_tracing::RpcTracing;
    ///
    /// let tracing = RpcTracing::builder().skip_http_routes(["/healthz", "/metrics"]).build();
    /// # let _ = tracing;
    /// ```
    pub fn skip_http_routes(mut self, routes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.skip_http_routes.extend(
            routes
                .into_iter()
                .map(|route| route.into().into_boxed_str()),
        );
        self
    }

    /// Names spans with `formatter` instead of the conventional name.
    /// Spans keep the name it gives: a server method settled at the end or
    /// a route matched later does not rename them.
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

    /// Traces only calls for which `filter` returns true, on top of the
    /// calls left out by [`trace_health_checks`](Self::trace_health_checks)
    /// and [`skip_http_routes`](Self::skip_http_routes); the others still
    /// carry the caller's context through.
    pub fn filter(
        mut self,
        filter: impl Fn(&CallInfo<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// Records request and response sizes as span attributes where known
    /// (`rpc.request.size`, `rpc.response.size`: this crate's, not
    /// semantic conventions).
    pub fn record_sizes(mut self, record: bool) -> Self {
        self.record_sizes = record;
        self
    }

    /// Also enters a `tracing` span (`rpc.call`, with `rpc.method`,
    /// `trace_id` and `span_id` fields) around each call, so log lines
    /// inside a call carry the ids (default on; costs nothing when no
    /// subscriber wants it, and is not made at all while no `tracing`
    /// subscriber is enabled at INFO: it is not passed on to `log`).
    pub fn tracing_span(mut self, enabled: bool) -> Self {
        self.tracing_span = enabled;
        self
    }

    /// Whether the service runs in a service mesh (Istio's Envoy sidecars),
    /// instead of the rule of [`rpc_ext_core::mesh`] (`RPC_EXT_MESH`, else
    /// Istio's sidecar annotation): decided once, when
    /// [`build`](Self::build) runs, which logs one line at `info` when
    /// mesh mode is on. In mesh mode `x-request-id` is forwarded unless
    /// [`forward_request_id`](Self::forward_request_id) says otherwise.
    ///
    /// This builder decides on its own, as rpc-ext-registry's `MeshAware`
    /// does: with `RPC_EXT_MESH` or detection deciding, both agree, but
    /// `MeshMode::On` here does not turn on the registry's mesh mode (nor
    /// the reverse). Set `RPC_EXT_MESH`, or pass the same mode to both.
    ///
    /// ```
    /// use rpc_ext_tracing::{MeshMode, RpcTracing};
    ///
    /// let tracing = RpcTracing::builder().mesh(MeshMode::On).build();
    /// # let _ = tracing;
    /// ```
    pub fn mesh(mut self, mode: MeshMode) -> Self {
        self.mesh = mode;
        self
    }

    /// Carries the `x-request-id` a server call came in with to every call
    /// made while serving it (default: exactly when this builder's mesh
    /// mode is on, see [`mesh`](Self::mesh)): the server layers put a
    /// valid inbound id (1 to
    /// [`MAX_REQUEST_ID_LEN`](crate::MAX_REQUEST_ID_LEN) bytes of visible
    /// ASCII; anything else is ignored) in the call's context as a
    /// [`RequestId`](crate::RequestId), the client layers write it on
    /// outbound requests that do not carry one already, and the server
    /// span records it (`http.request.header.x-request-id`; on RPC spans
    /// `rpc.request.metadata.x-request-id`, and with the conventions before
    /// v1.38 `rpc.grpc.request.metadata.x-request-id` for gRPC and nothing
    /// for Thrift). Envoy sidecars tag their spans and access logs with
    /// this id (traces are joined by the trace headers); it stays one id
    /// across hops only if the application forwards it. Tasks spawned in a
    /// handler need the context carried over, see [`RequestId`](crate::RequestId).
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use rpc_ext_tracing::{CallInfo, RpcTracing};
    ///
    /// let tracing = RpcTracing::builder().forward_request_id(true).build();
    /// let inbound = HashMap::from([("x-request-id".to_string(), "abc-123".to_string())]);
    /// let server = tracing.start_server(&CallInfo::grpc("/echo.Echo/Say"), &inbound);
    /// let outbound = futures_executor::block_on(server.run(async {
    ///     // A client layer inside the handler:
    ///     let mut headers = HashMap::new();
    ///     let _client = tracing.start_client(&CallInfo::grpc("/echo.Backend/Get"), &mut headers);
    ///     headers
    /// }));
    /// assert_eq!(outbound["x-request-id"], "abc-123");
    /// ```
    pub fn forward_request_id(mut self, forward: bool) -> Self {
        self.forward_request_id = Some(forward);
        self
    }

    /// Records spans with [fastrace](https://docs.rs/fastrace) instead of
    /// the OpenTelemetry SDK (feature `fastrace`), sampled as
    /// `OTEL_TRACES_SAMPLER` says ([`FastraceSampler::from_env`]; set one
    /// with [`fastrace_sampler`](Self::fastrace_sampler)). The spans are
    /// the same: names, kinds, attributes (integers where the SDK path
    /// sends integers, once through
    /// [`FastraceSpanExporter`](crate::FastraceSpanExporter)), status and
    /// `error.type`, and the `rpc.call` `tracing` span with the ids. What
    /// differs:
    ///
    /// - export is fastrace's: set a reporter, e.g. with
    ///   [`OtlpTracing::install_fastrace`](crate::otlp::OtlpTracing::install_fastrace);
    ///   [`tracer_provider`](Self::tracer_provider) and the SDK's span
    ///   processors and samplers play no part;
    /// - context travels as W3C `traceparent` only (no `tracestate`,
    ///   baggage or B3, whatever the [`propagator`](Self::propagator));
    /// - while a call's future runs, its span is fastrace's local parent:
    ///   the application's `LocalSpan`s nest under it, and a client call
    ///   made inside the application's own fastrace span is its child.
    ///   `opentelemetry::Context::current()` holds no span there.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use rpc_ext_tracing::{CallInfo, Outcome, RpcTracing};
    ///
    /// let tracing = RpcTracing::builder().fastrace().build();
    /// let inbound = HashMap::from([(
    ///     "traceparent".to_string(),
    ///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
    /// )]);
    /// let server = tracing.start_server(&CallInfo::grpc("/echo.Echo/Say"), &inbound);
    /// let outbound = futures_executor::block_on(server.run(async {
    ///     // The application's own fastrace span, under the server's:
    ///     let _local = fastrace::local::LocalSpan::enter_with_local_parent("lookup");
    ///     let mut headers = HashMap::new();
    ///     let client = tracing.start_client(&CallInfo::grpc("/echo.Backend/Get"), &mut headers);
    ///     client.finish(&Outcome::default());
    ///     headers
    /// }));
    /// server.finish(&Outcome::default());
    /// // Same trace, sampled, written for the next hop:
    /// assert!(outbound["traceparent"].starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    /// assert!(outbound["traceparent"].ends_with("-01"));
    /// ```
    ///
    /// [`FastraceSampler::from_env`]: crate::FastraceSampler::from_env
    #[cfg(feature = "fastrace")]
    pub fn fastrace(mut self) -> Self {
        self.fastrace = Some(crate::FastraceSampler::from_env());
        self
    }

    /// Records spans with fastrace ([`fastrace`](Self::fastrace)), sampled
    /// by `sampler` instead of what `OTEL_TRACES_SAMPLER` says.
    ///
    /// ```
    /// use rpc_ext_tracing::{FastraceSampler, RpcTracing};
    ///
    /// // Follow callers; keep 1 in 100 new traces.
    /// let tracing = RpcTracing::builder()
    ///     .fastrace_sampler(FastraceSampler::ParentBased { root_ratio: 0.01 })
    ///     .build();
    /// # let _ = tracing;
    /// ```
    #[cfg(feature = "fastrace")]
    pub fn fastrace_sampler(mut self, sampler: crate::FastraceSampler) -> Self {
        self.fastrace = Some(sampler);
        self
    }

    /// Finishes the configuration.
    pub fn build(self) -> RpcTracing {
        let mesh = Mesh::resolve(self.mesh);
        let forward_request_id = self.forward_request_id.unwrap_or(mesh.enabled);
        if mesh.enabled {
            tracing::info!(
                reason = mesh.reason,
                forward_request_id,
                "rpc-ext-tracing in mesh mode"
            );
        }
        RpcTracing {
            inner: Arc::new(Inner {
                tracer: self.fastrace_tracer().or(self.tracer).unwrap_or_else(|| {
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
                conventions: self.conventions.unwrap_or_else(Conventions::from_env),
                methods: Arc::new(MethodSet::new(self.recognized_methods, self.max_methods)),
                trace_health_checks: self.trace_health_checks,
                skip_http_routes: self.skip_http_routes.into_boxed_slice(),
                forward_request_id,
            }),
        }
    }
}
