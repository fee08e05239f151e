//! The instruments every layer records into, and how they are built.

use std::{collections::HashMap, sync::Arc};

use prometheus::Registry;
use rpc_ext_core::semconv::Conventions;

use crate::{
    cache::{MethodCache, MethodHandles},
    call::Call,
    families::{side_families, SideFamilies},
    recorder::{CallRecorder, Pending},
    skip::Skips,
    Error, RpcSystem, Side,
};

/// Latency buckets (seconds) from 50 µs to 10 s: a loopback RPC takes tens
/// of microseconds, so the first buckets must sit well below 1 ms.
pub const DEFAULT_DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Message size buckets (bytes) from 64 B to 16 MiB.
pub const DEFAULT_SIZE_BUCKETS: &[f64] = &[
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
];

/// RPC metrics for one process: create it once, hand clones to every layer,
/// and expose its [`registry`](Self::registry) on one endpoint.
///
/// ```
/// use rpc_ext_metrics::{Call, Conventions, GrpcCode, RpcMetrics, RpcSystem, Side};
///
/// let metrics = RpcMetrics::builder().conventions(Conventions::Current).build().unwrap();
/// let call = metrics.start_call(Call::rpc(Side::Server, RpcSystem::Grpc, "echo.Echo", "Say"));
/// call.finish(GrpcCode::OK, Some(42));
///
/// let text = rpc_ext_metrics::encode_text(metrics.registry()).unwrap();
/// assert!(text.contains(r#"rpc_server_call_duration_seconds_count{error_type="",rpc_method="echo.Echo/Say",rpc_response_status_code="OK",rpc_system_name="grpc"} 1"#));
/// ```
#[derive(Clone)]
pub struct RpcMetrics {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    registry: Registry,
    conventions: Conventions,
    server: SideFamilies,
    client: SideFamilies,
    #[cfg(feature = "otel")]
    otel: Option<[crate::otel::OtelSide; 2]>,
    recognized: Recognized,
    /// What is left out, if anything: the one test a call pays otherwise.
    skips: Option<Skips>,
    /// Whether the duration families keep exemplars.
    exemplars: bool,
    pub(crate) cache: MethodCache,
}

impl Inner {
    pub(crate) fn families(&self, side: Side) -> &SideFamilies {
        match side {
            Side::Server => &self.server,
            Side::Client => &self.client,
        }
    }

    pub(crate) fn exemplars(&self) -> bool {
        self.exemplars
    }

    #[cfg(feature = "otel")]
    pub(crate) fn otel(&self, side: Side) -> Option<&crate::otel::OtelSide> {
        let [server, client] = self.otel.as_ref()?;
        Some(match side {
            Side::Server => server,
            Side::Client => client,
        })
    }

    /// `call` without what the conventions do not label by, so that such
    /// values neither split series nor count against the cap.
    fn normalize<'a>(&self, mut call: Call<'a>) -> Call<'a> {
        let client = call.side == Side::Client;
        if !client || !self.conventions.current() {
            call.server_address = "";
            call.server_port = None;
        }
        if !client || !self.conventions.old() {
            call.peer_service = "";
        }
        // Only current HTTP server metrics carry `url.scheme`.
        if client || call.system != RpcSystem::Http || !self.conventions.current() {
            call.url_scheme = "";
        }
        call
    }
}

impl std::fmt::Debug for RpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cache = &self.inner.cache;
        f.debug_struct("RpcMetrics")
            .field("conventions", &self.inner.conventions)
            .field("server_methods", &cache.len(Side::Server))
            .field("client_methods", &cache.len(Side::Client))
            .field("skips", &self.inner.skips)
            .finish_non_exhaustive()
    }
}

impl RpcMetrics {
    /// Starts a builder with the default buckets, a new registry, a cap of
    /// 1,000 method label sets per side and the conventions
    /// `OTEL_SEMCONV_STABILITY_OPT_IN` asks for.
    pub fn builder() -> RpcMetricsBuilder {
        RpcMetricsBuilder::default()
    }

    /// The registry holding the instruments (the user's, if one was given).
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The naming scheme the instruments follow.
    #[must_use]
    pub fn conventions(&self) -> Conventions {
        self.inner.conventions
    }

    /// Starts recording one call whose labels are trusted (the caller's own
    /// configuration, a server's route table). The returned recorder counts
    /// the call as in flight until it is finished or dropped (a drop
    /// records [`Outcome::Cancelled`](crate::Outcome::Cancelled)).
    ///
    /// Framework layers call this; use it directly to instrument another
    /// framework.
    ///
    /// A call left out by [`RpcMetricsBuilder::skip_health_checks`] or
    /// [`RpcMetricsBuilder::skip_http_routes`] gets a recorder that records
    /// nothing.
    pub fn start_call(&self, call: Call<'_>) -> CallRecorder {
        if self.skips(&call) {
            return CallRecorder::skipped();
        }
        CallRecorder::start(self.handles(call))
    }

    /// Like [`start_call`](Self::start_call) for labels read from the wire
    /// (a gRPC request path, a Thrift method name): a method seen for the
    /// first time becomes a series only when a call to it succeeds, so
    /// junk names never create series — whether the server answers them
    /// UNIMPLEMENTED, an inner layer UNAUTHENTICATED, or the caller resets
    /// them (CANCELLED). Until then such calls are recorded under
    /// [`OTHER`](crate::OTHER). Methods named by
    /// [`RpcMetricsBuilder::recognized_methods`] are trusted from the first
    /// call.
    ///
    /// ```
    /// use rpc_ext_metrics::{Call, Conventions, GrpcCode, RpcMetrics, RpcSystem, Side};
    ///
    /// let metrics = RpcMetrics::builder().conventions(Conventions::Current).build().unwrap();
    /// let junk = Call::rpc(Side::Server, RpcSystem::Grpc, "no.Such", "Thing");
    /// metrics.start_untrusted_call(junk).finish(GrpcCode::UNAUTHENTICATED, None);
    ///
    /// let text = rpc_ext_metrics::encode_text(metrics.registry()).unwrap();
    /// assert!(!text.contains("no.Such"));
    /// assert!(text.contains(r#"rpc_method="_OTHER""#));
    /// ```
    pub fn start_untrusted_call(&self, call: Call<'_>) -> CallRecorder {
        let inner = &self.inner;
        // Normalizing keeps what the skips look at (side, system, names).
        let call = inner.normalize(call);
        if self.skips(&call) {
            return CallRecorder::skipped();
        }
        if let Some(handles) = inner.cache.find(&call) {
            return CallRecorder::start(handles);
        }
        if inner.recognized.contains(call.service, call.method) {
            return CallRecorder::start(inner.cache.get(inner, &call));
        }
        let overflow = inner.cache.get(inner, &call.overflow());
        CallRecorder::start_pending(
            overflow,
            Pending {
                inner: inner.clone(),
                key: crate::cache::OwnedKey::new(&call),
            },
        )
    }

    /// Starts a call this thread started before under `key`, the raw text
    /// its labels are read from (see [`crate::raw_key`]), if its handles
    /// were kept: the layers' way around building a [`Call`] for every
    /// call.
    #[inline]
    #[cfg(any(feature = "tower", feature = "volo"))]
    pub(crate) fn start_known(&self, side: Side, key: &[u8]) -> Option<CallRecorder> {
        crate::raw_key::find(self.inner.cache.id(), side, key).map(CallRecorder::start)
    }

    /// Keeps the handles `recorder` is settled on under `key`, for the next
    /// [`start_known`](Self::start_known) on this thread.
    #[cfg(any(feature = "tower", feature = "volo"))]
    pub(crate) fn remember(&self, side: Side, key: &[u8], recorder: &CallRecorder) {
        if let Some(handles) = recorder.settled() {
            crate::raw_key::remember(self.inner.cache.id(), side, key, handles);
        }
    }

    /// Whether `call` is left out: it records nothing.
    #[inline]
    pub(crate) fn skips(&self, call: &Call<'_>) -> bool {
        self.inner
            .skips
            .as_ref()
            .is_some_and(|skips| skips.call(call))
    }

    /// Whether an HTTP server request with this path is left out before
    /// routing (the path is a listed route template without parameters).
    #[inline]
    #[cfg_attr(not(any(feature = "tower", feature = "volo")), allow(dead_code))]
    pub(crate) fn skips_http_path(&self, path: &str) -> bool {
        self.inner
            .skips
            .as_ref()
            .is_some_and(|skips| skips.path(path))
    }

    pub(crate) fn handles(&self, call: Call<'_>) -> Arc<MethodHandles> {
        let inner = &self.inner;
        inner.cache.get(inner, &inner.normalize(call))
    }
}

/// Full method names trusted before any call: service → methods.
#[derive(Debug, Default)]
struct Recognized(HashMap<Box<str>, Vec<Box<str>>>);

impl Recognized {
    fn new(names: &[String]) -> Result<Self, Error> {
        let mut services: HashMap<Box<str>, Vec<Box<str>>> = HashMap::new();
        for name in names {
            let (service, method) = name
                .strip_prefix('/')
                .unwrap_or(name)
                .rsplit_once('/')
                .filter(|(service, method)| !service.is_empty() && !method.is_empty())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "recognized method {name:?} is not of the form Service/Method"
                    ))
                })?;
            services
                .entry(service.into())
                .or_default()
                .push(method.into());
        }
        Ok(Self(services))
    }

    fn contains(&self, service: &str, method: &str) -> bool {
        self.0
            .get(service)
            .is_some_and(|methods| methods.iter().any(|m| &**m == method))
    }
}

/// Builds [`RpcMetrics`].
#[must_use]
#[derive(Clone)]
pub struct RpcMetricsBuilder {
    registry: Option<Registry>,
    duration_buckets: Vec<f64>,
    size_buckets: Vec<f64>,
    max_methods: usize,
    conventions: Option<Conventions>,
    recognized: Vec<String>,
    skip_health_checks: bool,
    skip_http_routes: Vec<Box<str>>,
    exemplars: bool,
    #[cfg(feature = "otel")]
    meter: Option<opentelemetry::metrics::Meter>,
}

impl std::fmt::Debug for RpcMetricsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMetricsBuilder")
            .field("duration_buckets", &self.duration_buckets)
            .field("size_buckets", &self.size_buckets)
            .field("max_methods", &self.max_methods)
            .field("conventions", &self.conventions)
            .field("recognized_methods", &self.recognized)
            .field("skip_health_checks", &self.skip_health_checks)
            .field("skip_http_routes", &self.skip_http_routes)
            .field("exemplars", &self.exemplars)
            .finish_non_exhaustive()
    }
}

impl Default for RpcMetricsBuilder {
    fn default() -> Self {
        Self {
            registry: None,
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            size_buckets: DEFAULT_SIZE_BUCKETS.to_vec(),
            max_methods: 1000,
            conventions: None,
            recognized: Vec::new(),
            skip_health_checks: false,
            skip_http_routes: Vec::new(),
            // Without the feature no span can be read: keep no slots.
            exemplars: cfg!(feature = "exemplars"),
            #[cfg(feature = "otel")]
            meter: None,
        }
    }
}

impl RpcMetricsBuilder {
    /// Registers into an existing registry instead of a new one.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Duration buckets in seconds (default [`DEFAULT_DURATION_BUCKETS`]).
    pub fn duration_buckets(mut self, buckets: impl Into<Vec<f64>>) -> Self {
        self.duration_buckets = buckets.into();
        self
    }

    /// Size buckets in bytes (default [`DEFAULT_SIZE_BUCKETS`]).
    pub fn size_buckets(mut self, buckets: impl Into<Vec<f64>>) -> Self {
        self.size_buckets = buckets.into();
        self
    }

    /// Most distinct label sets (method, route, target...) per side: the
    /// server side and the client side each have this many. Calls beyond
    /// it are recorded under [`OTHER`](crate::OTHER), which bounds the
    /// series count whatever clients send.
    ///
    /// Memory grows with it and with the cores: each series keeps its
    /// counts once per core (rounded up to a power of two, at most 16) so
    /// that cores do not write each other's cache lines. With the default
    /// buckets a method's series take about 2.4 KiB per core; at 1,000
    /// methods per side on 16 cores, about 75 MiB.
    pub fn max_methods(mut self, max: usize) -> Self {
        self.max_methods = max.max(1);
        self
    }

    /// The naming scheme (default [`Conventions::from_env`]: the current
    /// semantic conventions unless `OTEL_SEMCONV_STABILITY_OPT_IN` says
    /// `rpc/old` or `rpc/dup`). See the crate documentation for the
    /// families of each.
    ///
    /// ```
    /// use rpc_ext_metrics::{Conventions, RpcMetrics};
    ///
    /// let metrics = RpcMetrics::builder().conventions(Conventions::Old).build().unwrap();
    /// assert_eq!(metrics.conventions(), Conventions::Old);
    /// ```
    pub fn conventions(mut self, conventions: Conventions) -> Self {
        self.conventions = Some(conventions);
        self
    }

    /// Full method names (`echo.Echo/Say`; Thrift `Service/method`) whose
    /// calls get their own series from the first call, whatever it ends
    /// with. Other names read from the wire get one only after a call to
    /// them succeeds ([`RpcMetrics::start_untrusted_call`]). They still
    /// count against [`max_methods`](Self::max_methods).
    ///
    /// ```
    /// use rpc_ext_metrics::{Call, Conventions, GrpcCode, RpcMetrics, RpcSystem, Side};
    ///
    /// let metrics = RpcMetrics::builder()
    ///     .conventions(Conventions::Current)
    ///     .recognized_methods(["echo.Echo/Say"])
    ///     .build()
    ///     .unwrap();
    /// let call = Call::rpc(Side::Server, RpcSystem::Grpc, "echo.Echo", "Say");
    /// metrics.start_untrusted_call(call).finish(GrpcCode::INVALID_ARGUMENT, None);
    /// let text = rpc_ext_metrics::encode_text(metrics.registry()).unwrap();
    /// assert!(text.contains(r#"rpc_method="echo.Echo/Say""#));
    /// ```
    pub fn recognized_methods<I>(mut self, methods: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.recognized.extend(methods.into_iter().map(Into::into));
        self
    }

    /// Leaves out calls to the standard gRPC health service
    /// (`grpc.health.v1.Health/*`, as
    /// [`semconv::is_grpc_health`](rpc_ext_core::semconv::is_grpc_health)
    /// tells them), on servers and clients, on every layer: such a call
    /// records nothing — no in-flight, no duration, no size, nothing in
    /// the OpenTelemetry mirror.
    ///
    /// Off by default: health checks are recorded, so the probes' rate and
    /// latency stay visible. (Spans are the other way round:
    /// `rpc-ext-tracing` leaves health checks out unless
    /// `RpcTracingBuilder::trace_health_checks(true)`.)
    ///
    /// ```
    /// use rpc_ext_metrics::{Call, Conventions, GrpcCode, RpcMetrics, RpcSystem, Side};
    ///
    /// let metrics = RpcMetrics::builder()
    ///     .conventions(Conventions::Current)
    ///     .skip_health_checks(true)
    ///     .build()
    ///     .unwrap();
    /// let probe = Call::rpc(Side::Server, RpcSystem::Grpc, "grpc.health.v1.Health", "Check");
    /// metrics.start_untrusted_call(probe).finish(GrpcCode::OK, Some(2));
    /// let call = Call::rpc(Side::Server, RpcSystem::Grpc, "echo.Echo", "Say");
    /// metrics.start_untrusted_call(call).finish(GrpcCode::OK, Some(2));
    ///
    /// let text = rpc_ext_metrics::encode_text(metrics.registry()).unwrap();
    /// assert!(!text.contains("grpc.health"));
    /// assert!(text.contains(r#"rpc_method="echo.Echo/Say""#));
    /// ```
    pub fn skip_health_checks(mut self, skip: bool) -> Self {
        self.skip_health_checks = skip;
        self
    }

    /// Leaves out HTTP server calls to these route templates (`/healthz`,
    /// `/metrics`): such a call records nothing — no in-flight, no
    /// duration, no size, nothing in the OpenTelemetry mirror. Clients and
    /// `_OTHER` (no route matched) are never left out. The same option as
    /// `rpc-ext-tracing`'s `RpcTracingBuilder::skip_http_routes`; none by
    /// default.
    ///
    /// A call is left out by its route template where the layer knows it
    /// when the call starts: a tower layer inside axum's `Router::layer`
    /// (feature `axum`), one given a
    /// [`RouteTemplate`](rpc_ext_core::RouteTemplate), or
    /// [`RpcMetrics::start_call`] given [`Call::route`]. A layer in front of
    /// the router knows no route then — Volo HTTP's `HttpMetricsLayer`, a
    /// tower layer outside axum's `Router::layer` — and, as the tracing
    /// side does, leaves out the requests whose path is one of the listed
    /// templates without parameters (no `{`, `*` or `:`), `/healthz` for
    /// `/healthz`. A template with parameters (`/debug/{name}`) cannot be
    /// matched against a path, so there:
    ///
    /// - Volo HTTP, which reads the route the router matched once it has
    ///   run, records no duration and no size for the call, but counted it
    ///   in flight while it ran (the gauge, by method and scheme only, is
    ///   back where it was when the call ends);
    /// - a tower layer outside axum's router never learns the route (it
    ///   records every HTTP call as `http_route="_OTHER"`), so it records
    ///   the call: add the layer with `Router::layer` to leave such routes
    ///   out.
    ///
    /// ```
    /// use rpc_ext_metrics::{Call, Conventions, Outcome, RpcMetrics, Side};
    ///
    /// let metrics = RpcMetrics::builder()
    ///     .conventions(Conventions::Current)
    ///     .skip_http_routes(["/healthz", "/metrics"])
    ///     .build()
    ///     .unwrap();
    /// let get = Call::http(Side::Server, &http::Method::GET);
    /// metrics.start_call(get.route("/healthz")).finish(Outcome::Http(200), None);
    /// metrics.start_call(get.route("/users/{id}")).finish(Outcome::Http(200), None);
    ///
    /// let text = rpc_ext_metrics::encode_text(metrics.registry()).unwrap();
    /// assert!(!text.contains("/healthz"));
    /// assert!(text.contains(r#"http_route="/users/{id}""#));
    /// ```
    pub fn skip_http_routes(mut self, routes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.skip_http_routes.extend(
            routes
                .into_iter()
                .map(|route| route.into().into_boxed_str()),
        );
        self
    }

    /// Whether the duration histograms keep exemplars: on by default, and
    /// always off without the `exemplars` feature (no span could be read).
    ///
    /// On, a call whose OpenTelemetry span is sampled when it starts (read
    /// from the current context, with the `exemplars` feature, a default
    /// one; see [the crate documentation](crate#exemplars) for the layer
    /// order that makes rpc-ext-tracing's span current there) may leave its
    /// trace id and span id beside the duration bucket it was counted in:
    /// each bucket of each series keeps the first such call after each
    /// scrape. The OpenMetrics exposition
    /// ([`encode_openmetrics`](crate::encode_openmetrics), and
    /// [`MetricsEndpoint`](crate::MetricsEndpoint) when Prometheus asks for
    /// it) carries them; the Prometheus text format has no exemplars and is
    /// unchanged. Off, calls do not read the context and keep nothing.
    ///
    /// ```
    /// use rpc_ext_metrics::{Call, Conventions, GrpcCode, RpcMetrics, RpcSystem, Side};
    ///
    /// let metrics = RpcMetrics::builder()
    ///     .conventions(Conventions::Current)
    ///     .exemplars(false)
    ///     .build()
    ///     .unwrap();
    /// metrics
    ///     .start_call(Call::rpc(Side::Server, RpcSystem::Grpc, "echo.Echo", "Say"))
    ///     .finish(GrpcCode::OK, None);
    /// let text = rpc_ext_metrics::encode_openmetrics(metrics.registry()).unwrap();
    /// assert!(!text.contains("trace_id"));
    /// ```
    pub fn exemplars(mut self, on: bool) -> Self {
        self.exemplars = on && cfg!(feature = "exemplars");
        self
    }

    /// Also records every call into OpenTelemetry instruments from `meter`
    /// (feature `otel`), with the same names and attributes as the
    /// Prometheus families of the chosen [`conventions`](Self::conventions):
    /// `rpc.{server,client}.call.duration` (s) with `rpc.system.name`,
    /// `rpc.method`, `rpc.response.status_code`, `error.type` and, client
    /// side, `server.address`, `server.port`; `http.{server,client}.request.duration`
    /// and `http.server.active_requests` for HTTP; `rpc.{server,client}.active_requests`
    /// and `rpc.{server,client}.{request,response}.size` (By). Attributes
    /// that would be empty are left out.
    ///
    /// With [`Conventions::Old`] the same instrument names carry the old
    /// attributes (`rpc.system`, `rpc.service`, the short `rpc.method`,
    /// `rpc.grpc.status_code`, `http.response.status_code` or
    /// `rpc.response.status_code`, `peer.service`), HTTP calls included.
    /// [`Conventions::Dup`] records the current ones only: both sets would
    /// go into the same instruments and count every call twice.
    #[cfg(feature = "otel")]
    pub fn otel_meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Creates the instruments and registers them. Fails if the registry
    /// already holds a family of the same name, or a recognized method is
    /// not `Service/Method`.
    pub fn build(self) -> Result<RpcMetrics, Error> {
        let conventions = self.conventions.unwrap_or_else(Conventions::from_env);
        let registry = self.registry.clone().unwrap_or_default();
        let recognized = Recognized::new(&self.recognized)?;
        if self.exemplars {
            // Taken now, before any call: exemplar times count from it.
            crate::exemplar::anchor();
        }
        let families = |side| {
            side_families(
                side,
                conventions,
                &self.duration_buckets,
                &self.size_buckets,
                self.exemplars,
            )
        };
        let (server, server_collectors) = families(Side::Server)?;
        let (client, client_collectors) = families(Side::Client)?;
        for collector in server_collectors.into_iter().chain(client_collectors) {
            registry.register(collector)?;
        }
        Ok(RpcMetrics {
            inner: Arc::new(Inner {
                registry,
                conventions,
                server,
                client,
                #[cfg(feature = "otel")]
                otel: self.meter.as_ref().map(|meter| {
                    [Side::Server, Side::Client].map(|side| {
                        crate::otel::OtelSide::new(
                            meter,
                            side,
                            conventions,
                            &self.duration_buckets,
                            &self.size_buckets,
                        )
                    })
                }),
                recognized,
                skips: Skips::new(self.skip_health_checks, &self.skip_http_routes),
                exemplars: self.exemplars,
                cache: MethodCache::new(self.max_methods),
            }),
        })
    }
}
