//! The Prometheus instruments every layer records into.

use std::sync::Arc;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::{cache::MethodCache, recorder::CallRecorder, Error};

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

pub use rpc_ext_core::{RpcSystem, Side, OTHER};

/// The metric families of one side.
#[derive(Clone)]
pub(crate) struct Families {
    pub(crate) duration: HistogramVec,
    pub(crate) calls: IntCounterVec,
    pub(crate) in_flight: IntGaugeVec,
    pub(crate) request_size: HistogramVec,
    pub(crate) response_size: HistogramVec,
    #[cfg(feature = "otel")]
    pub(crate) otel: Option<crate::otel::OtelFamilies>,
}

impl Families {
    fn new(side: Side, builder: &RpcMetricsBuilder) -> Result<Self, Error> {
        let (prefix, per_call, per_method): (&str, &[&str], &[&str]) = match side {
            Side::Server => (
                "rpc_server",
                &["rpc_system", "rpc_service", "rpc_method", "status_code"],
                &["rpc_system", "rpc_service", "rpc_method"],
            ),
            Side::Client => (
                "rpc_client",
                &[
                    "rpc_system",
                    "rpc_service",
                    "rpc_method",
                    "peer_service",
                    "status_code",
                ],
                &["rpc_system", "rpc_service", "rpc_method", "peer_service"],
            ),
        };
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(format!("{prefix}_{name}"), help).buckets(buckets.to_vec()),
                labels,
            )
        };
        Ok(Self {
            duration: histogram(
                "duration_seconds",
                "Duration of RPCs, from the request to the end of the response.",
                &builder.duration_buckets,
                per_call,
            )?,
            calls: IntCounterVec::new(
                Opts::new(
                    format!("{prefix}_requests_total"),
                    "RPCs completed, by status code.",
                ),
                per_call,
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new(format!("{prefix}_active_requests"), "RPCs in progress."),
                per_method,
            )?,
            request_size: histogram(
                "request_size_bytes",
                "Size of request messages, where known.",
                &builder.size_buckets,
                per_method,
            )?,
            response_size: histogram(
                "response_size_bytes",
                "Size of response messages, where known.",
                &builder.size_buckets,
                per_method,
            )?,
            #[cfg(feature = "otel")]
            otel: builder.meter.as_ref().map(|meter| {
                crate::otel::OtelFamilies::new(
                    meter,
                    side,
                    &builder.duration_buckets,
                    &builder.size_buckets,
                )
            }),
        })
    }

    fn register(&self, registry: &Registry) -> Result<(), Error> {
        registry.register(Box::new(self.duration.clone()))?;
        registry.register(Box::new(self.calls.clone()))?;
        registry.register(Box::new(self.in_flight.clone()))?;
        registry.register(Box::new(self.request_size.clone()))?;
        registry.register(Box::new(self.response_size.clone()))?;
        Ok(())
    }
}

/// RPC metrics for one process: create it once, hand clones to every layer,
/// and expose its [`registry`](Self::registry) on one endpoint.
///
/// ```
/// use rpc_ext_metrics::{RpcMetrics, RpcSystem, Side};
///
/// let metrics = RpcMetrics::builder().build().unwrap();
/// let call = metrics.start_call(Side::Server, RpcSystem::Grpc, "echo.Echo", "Say", "");
/// call.finish("0", Some(42));
///
/// let text = rpc_ext_metrics::encode_text(metrics.registry()).unwrap();
/// assert!(text.contains(r#"rpc_server_requests_total{rpc_method="Say",rpc_service="echo.Echo",rpc_system="grpc",status_code="0"} 1"#));
/// ```
#[derive(Clone)]
pub struct RpcMetrics {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    registry: Registry,
    pub(crate) server: Families,
    pub(crate) client: Families,
    pub(crate) cache: MethodCache,
}

impl std::fmt::Debug for RpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMetrics")
            .field("methods", &self.inner.cache.len())
            .finish_non_exhaustive()
    }
}

impl RpcMetrics {
    /// Starts a builder with the default buckets, a new registry and a cap
    /// of 1,000 method label sets per side.
    pub fn builder() -> RpcMetricsBuilder {
        RpcMetricsBuilder::default()
    }

    /// The registry holding the instruments (the user's, if one was given).
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Starts recording one call. The returned recorder counts the call as in
    /// flight until it is finished or dropped (a drop records a cancellation).
    ///
    /// Framework layers call this; use it directly to instrument another
    /// framework. `peer_service` is only used on the client side.
    pub fn start_call(
        &self,
        side: Side,
        system: RpcSystem,
        service: &str,
        method: &str,
        peer_service: &str,
    ) -> CallRecorder {
        let handles =
            self.inner
                .cache
                .get(&self.inner, side, system, service, method, peer_service);
        CallRecorder::start(handles, cancelled_status(system))
    }

    /// Like [`start_call`](Self::start_call) for labels read from the wire
    /// (a gRPC request path): a method seen for the first time becomes a
    /// series only when the call did not end in UNIMPLEMENTED, so junk paths
    /// never create series. Until then the call is in flight under
    /// [`OTHER`].
    pub fn start_untrusted_call(
        &self,
        side: Side,
        system: RpcSystem,
        service: &str,
        method: &str,
        peer_service: &str,
    ) -> CallRecorder {
        let cache = &self.inner.cache;
        if let Some(handles) = cache.find(side, system, service, method, peer_service) {
            return CallRecorder::start(handles, cancelled_status(system));
        }
        let overflow = cache.get(&self.inner, side, system, OTHER, OTHER, OTHER);
        CallRecorder::start_pending(
            overflow,
            cancelled_status(system),
            crate::recorder::Pending {
                inner: self.inner.clone(),
                side,
                system,
                service: service.into(),
                method: method.into(),
                peer: peer_service.into(),
            },
        )
    }
}

fn cancelled_status(system: RpcSystem) -> &'static str {
    match system {
        RpcSystem::Grpc => rpc_ext_core::GrpcCode::CANCELLED.as_label(),
        RpcSystem::Http => crate::status::HTTP_CANCELLED,
        RpcSystem::Thrift => rpc_ext_core::thrift::CANCELLED,
    }
}

/// Builds [`RpcMetrics`].
#[must_use]
#[derive(Clone)]
pub struct RpcMetricsBuilder {
    registry: Option<Registry>,
    pub(crate) duration_buckets: Vec<f64>,
    pub(crate) size_buckets: Vec<f64>,
    max_methods: usize,
    #[cfg(feature = "otel")]
    meter: Option<opentelemetry::metrics::Meter>,
}

impl std::fmt::Debug for RpcMetricsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcMetricsBuilder")
            .field("duration_buckets", &self.duration_buckets)
            .field("size_buckets", &self.size_buckets)
            .field("max_methods", &self.max_methods)
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

    /// Most distinct (service, method, peer) label sets per side; calls to
    /// further methods are recorded under [`OTHER`]. Bounds the
    /// series count whatever clients send.
    pub fn max_methods(mut self, max: usize) -> Self {
        self.max_methods = max.max(1);
        self
    }

    /// Also records every call into OpenTelemetry instruments from `meter`
    /// (feature `otel`): `rpc.{server,client}.call.duration` (s),
    /// `rpc.{server,client}.active_requests`, `rpc.{server,client}.{request,response}.size`
    /// (By), with `rpc.system`, `rpc.service`, `rpc.method`, the status
    /// (`rpc.grpc.status_code`, `http.response.status_code` or
    /// `rpc.response.status_code`) and, client side, `peer.service`.
    #[cfg(feature = "otel")]
    pub fn otel_meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Creates the instruments and registers them.
    pub fn build(self) -> Result<RpcMetrics, Error> {
        let registry = self.registry.clone().unwrap_or_default();
        let server = Families::new(Side::Server, &self)?;
        let client = Families::new(Side::Client, &self)?;
        server.register(&registry)?;
        client.register(&registry)?;
        Ok(RpcMetrics {
            inner: Arc::new(Inner {
                registry,
                server,
                client,
                cache: MethodCache::new(self.max_methods),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_text;

    fn series(metrics: &RpcMetrics, family: &str) -> usize {
        encode_text(metrics.registry())
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(family) && !l.starts_with('#'))
            .count()
    }

    #[test]
    fn junk_methods_never_become_series() {
        let metrics = RpcMetrics::builder().build().unwrap();
        for i in 0..10_000 {
            let method = format!("Junk{i}");
            metrics
                .start_untrusted_call(Side::Server, RpcSystem::Grpc, "junk.Svc", &method, "")
                .finish(rpc_ext_core::GrpcCode::UNIMPLEMENTED.as_label(), None);
        }
        metrics
            .start_untrusted_call(Side::Server, RpcSystem::Grpc, "echo.Echo", "Say", "")
            .finish("0", None);
        // One series for the overflow bucket, one for the real method.
        assert_eq!(series(&metrics, "rpc_server_requests_total"), 2);
        let text = encode_text(metrics.registry()).unwrap();
        assert!(text.contains(r#"rpc_server_requests_total{rpc_method="_other",rpc_service="_other",rpc_system="grpc",status_code="12"} 10000"#), "{text}");
    }

    #[test]
    fn the_cap_bounds_trusted_labels_too() {
        let metrics = RpcMetrics::builder().max_methods(10).build().unwrap();
        for i in 0..100 {
            metrics
                .start_call(
                    Side::Client,
                    RpcSystem::Http,
                    &format!("/r{i}"),
                    "GET",
                    "peer",
                )
                .finish("200", Some(10));
        }
        assert_eq!(series(&metrics, "rpc_client_requests_total"), 11);
    }

    #[test]
    fn dropped_calls_count_as_cancelled_and_leave_flight() {
        let metrics = RpcMetrics::builder().build().unwrap();
        let call = metrics.start_call(Side::Server, RpcSystem::Grpc, "s", "m", "");
        assert!(encode_text(metrics.registry()).unwrap().contains(
            r#"rpc_server_active_requests{rpc_method="m",rpc_service="s",rpc_system="grpc"} 1"#
        ));
        drop(call);
        let text = encode_text(metrics.registry()).unwrap();
        assert!(text.contains(
            r#"rpc_server_active_requests{rpc_method="m",rpc_service="s",rpc_system="grpc"} 0"#
        ));
        assert!(text.contains(r#"status_code="1"} 1"#), "{text}");
    }
}
