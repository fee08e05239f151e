//! Which families a side records into, per [`Conventions`], and what they
//! are called. The current families are named from the OpenTelemetry
//! instrument names ([`rpc_ext_core::semconv::metric`]) the way the
//! OpenTelemetry-to-Prometheus translation names them
//! ([`prometheus_family`]); the OpenTelemetry mirror uses the same
//! instrument names and the same [`Label`] lists.

use std::sync::Arc;

use prometheus::{core::Collector, HistogramOpts, IntCounterVec, Opts};
use rpc_ext_core::semconv::{metric, Conventions};

use crate::{
    exemplar::{FamilyExemplars, WithExemplars},
    labels::{prometheus_names, Label},
    striped::{StripedGaugeVec, StripedHistogramVec},
    Error, RpcSystem, Side,
};
use Label::*;

/// An instrument: its OpenTelemetry name and unit, and its labels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) instrument: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) help: &'static str,
    pub(crate) labels: &'static [Label],
}

const RPC_SERVER_CALL: &[Label] = &[SystemName, Method, ResponseStatusCode, ErrorType];
const RPC_CLIENT_CALL: &[Label] = &[
    SystemName,
    Method,
    ResponseStatusCode,
    ErrorType,
    ServerAddress,
    ServerPort,
];
const RPC_PER_METHOD: &[Label] = &[SystemName, Method];
const HTTP_SERVER_REQUEST: &[Label] = &[
    HttpRequestMethod,
    HttpRoute,
    HttpResponseStatusCode,
    UrlScheme,
    ErrorType,
];
const HTTP_SERVER_PER_METHOD: &[Label] = &[HttpRequestMethod, UrlScheme];
const HTTP_CLIENT_REQUEST: &[Label] = &[
    HttpRequestMethod,
    ServerAddress,
    ServerPort,
    HttpResponseStatusCode,
    ErrorType,
];
const OLD_SERVER_CALL: &[Label] = &[OldSystem, OldService, OldMethod, OldStatusCode];
const OLD_CLIENT_CALL: &[Label] = &[
    OldSystem,
    OldService,
    OldMethod,
    OldPeerService,
    OldStatusCode,
];
const OLD_SERVER_PER_METHOD: &[Label] = &[OldSystem, OldService, OldMethod];
const OLD_CLIENT_PER_METHOD: &[Label] = &[OldSystem, OldService, OldMethod, OldPeerService];

const DURATION_HELP: &str = "Duration of RPCs, from the request to the end of the response.";
const ACTIVE_HELP: &str = "RPCs in progress.";
const REQUEST_SIZE_HELP: &str = "Size of request messages, where known.";
const RESPONSE_SIZE_HELP: &str = "Size of response messages, where known.";

/// The instruments of one side for one kind of call (RPC or HTTP) in one
/// naming scheme; `None` where the scheme has no such instrument.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Specs {
    pub(crate) duration: Option<Spec>,
    pub(crate) active: Option<Spec>,
    pub(crate) request_size: Option<Spec>,
    pub(crate) response_size: Option<Spec>,
}

impl Specs {
    /// The current names: RPC instruments for gRPC and Thrift, the HTTP
    /// conventions' for HTTP.
    pub(crate) fn current(side: Side, system: RpcSystem) -> Self {
        let spec = |instrument, unit, help, labels| {
            Some(Spec {
                instrument,
                unit,
                help,
                labels,
            })
        };
        match (side, system) {
            (Side::Server, RpcSystem::Http) => Self {
                duration: spec(
                    metric::HTTP_SERVER_REQUEST_DURATION,
                    "s",
                    "Duration of HTTP server requests.",
                    HTTP_SERVER_REQUEST,
                ),
                active: spec(
                    metric::HTTP_SERVER_ACTIVE_REQUESTS,
                    "{request}",
                    "HTTP server requests in progress.",
                    HTTP_SERVER_PER_METHOD,
                ),
                ..Self::default()
            },
            (Side::Client, RpcSystem::Http) => Self {
                duration: spec(
                    metric::HTTP_CLIENT_REQUEST_DURATION,
                    "s",
                    "Duration of HTTP client requests.",
                    HTTP_CLIENT_REQUEST,
                ),
                ..Self::default()
            },
            (Side::Server, _) => Self {
                duration: spec(
                    metric::RPC_SERVER_CALL_DURATION,
                    "s",
                    DURATION_HELP,
                    RPC_SERVER_CALL,
                ),
                active: spec(
                    metric::RPC_SERVER_ACTIVE_REQUESTS,
                    "{request}",
                    ACTIVE_HELP,
                    RPC_PER_METHOD,
                ),
                request_size: spec(
                    metric::RPC_SERVER_REQUEST_SIZE,
                    "By",
                    REQUEST_SIZE_HELP,
                    RPC_PER_METHOD,
                ),
                response_size: spec(
                    metric::RPC_SERVER_RESPONSE_SIZE,
                    "By",
                    RESPONSE_SIZE_HELP,
                    RPC_PER_METHOD,
                ),
            },
            (Side::Client, _) => Self {
                duration: spec(
                    metric::RPC_CLIENT_CALL_DURATION,
                    "s",
                    DURATION_HELP,
                    RPC_CLIENT_CALL,
                ),
                active: spec(
                    metric::RPC_CLIENT_ACTIVE_REQUESTS,
                    "{request}",
                    ACTIVE_HELP,
                    RPC_PER_METHOD,
                ),
                request_size: spec(
                    metric::RPC_CLIENT_REQUEST_SIZE,
                    "By",
                    REQUEST_SIZE_HELP,
                    RPC_PER_METHOD,
                ),
                response_size: spec(
                    metric::RPC_CLIENT_RESPONSE_SIZE,
                    "By",
                    RESPONSE_SIZE_HELP,
                    RPC_PER_METHOD,
                ),
            },
        }
    }

    /// The names before v1.38, for every kind of call (HTTP too, with
    /// `rpc_system="http"`): the OpenTelemetry instruments of the current
    /// names with the old labels.
    pub(crate) fn old(side: Side) -> Self {
        let (per_call, per_method) = match side {
            Side::Server => (OLD_SERVER_CALL, OLD_SERVER_PER_METHOD),
            Side::Client => (OLD_CLIENT_CALL, OLD_CLIENT_PER_METHOD),
        };
        let current = Self::current(side, RpcSystem::Grpc);
        let relabel = |spec: Option<Spec>, labels| spec.map(|spec| Spec { labels, ..spec });
        Self {
            duration: relabel(current.duration, per_call),
            active: relabel(current.active, per_method),
            request_size: relabel(current.request_size, per_method),
            response_size: relabel(current.response_size, per_method),
        }
    }
}

/// The Prometheus name the OpenTelemetry-to-Prometheus translation gives an
/// instrument: dots become underscores, and the unit a suffix (`s` →
/// `_seconds`, `By` → `_bytes`, annotations such as `{request}` none).
pub(crate) fn prometheus_family(instrument: &str, unit: &str) -> String {
    let mut name: String = instrument
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    match unit {
        "s" => name.push_str("_seconds"),
        "By" => name.push_str("_bytes"),
        _ => {}
    }
    name
}

/// A Prometheus family and the labels of its values.
#[derive(Clone)]
pub(crate) struct Family<V> {
    pub(crate) vec: V,
    pub(crate) labels: &'static [Label],
    /// Where the exemplars of its series go: duration families, unless
    /// exemplars are off.
    pub(crate) exemplars: Option<Arc<FamilyExemplars>>,
}

/// The Prometheus families one kind of call (RPC or HTTP) of one side
/// records into.
#[derive(Clone, Default)]
pub(crate) struct Families {
    /// The current names' duration histogram.
    pub(crate) duration: Option<Family<StripedHistogramVec>>,
    /// The old names' duration histogram and call counter.
    pub(crate) old_duration: Option<Family<StripedHistogramVec>>,
    pub(crate) old_calls: Option<Family<IntCounterVec>>,
    pub(crate) active: Option<Family<StripedGaugeVec>>,
    pub(crate) request_size: Option<Family<StripedHistogramVec>>,
    pub(crate) response_size: Option<Family<StripedHistogramVec>>,
}

/// The families of one side.
#[derive(Clone)]
pub(crate) struct SideFamilies {
    pub(crate) rpc: Families,
    pub(crate) http: Families,
}

impl SideFamilies {
    pub(crate) fn of(&self, system: RpcSystem) -> &Families {
        match system {
            RpcSystem::Http => &self.http,
            RpcSystem::Grpc | RpcSystem::Thrift => &self.rpc,
        }
    }
}

/// Creates the families of `side` under `conventions`, and the collectors
/// to register (each family once). With `exemplars`, the duration
/// families keep exemplars.
///
/// Dup registers both schemes' durations (their names differ), but only
/// the current in-flight and size families: the old ones have the same
/// names with other labels, which one registry cannot hold.
pub(crate) fn side_families(
    side: Side,
    conventions: Conventions,
    duration_buckets: &[f64],
    size_buckets: &[f64],
    exemplars: bool,
) -> Result<(SideFamilies, Vec<Box<dyn Collector>>), Error> {
    let mut made = Made::default();
    let (mut rpc, mut http) = (Families::default(), Families::default());
    if conventions.current() {
        for (families, system) in [(&mut rpc, RpcSystem::Grpc), (&mut http, RpcSystem::Http)] {
            let specs = Specs::current(side, system);
            families.duration = made.histogram(specs.duration, duration_buckets, exemplars)?;
            families.active = made.gauge(specs.active)?;
            families.request_size = made.histogram(specs.request_size, size_buckets, false)?;
            families.response_size = made.histogram(specs.response_size, size_buckets, false)?;
        }
    } else {
        // HTTP calls were RPC calls (`rpc_system="http"`) in the old names.
        let specs = Specs::old(side);
        rpc.active = made.gauge(specs.active)?;
        rpc.request_size = made.histogram(specs.request_size, size_buckets, false)?;
        rpc.response_size = made.histogram(specs.response_size, size_buckets, false)?;
        http = rpc.clone();
    }
    if conventions.old() {
        let prefix = match side {
            Side::Server => "rpc_server",
            Side::Client => "rpc_client",
        };
        let labels = match side {
            Side::Server => OLD_SERVER_CALL,
            Side::Client => OLD_CLIENT_CALL,
        };
        let old_duration = made.register_histogram(
            format!("{prefix}_duration_seconds"),
            DURATION_HELP,
            labels,
            duration_buckets,
            exemplars,
        )?;
        let old_calls = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_requests_total"),
                "RPCs completed, by status code.",
            ),
            &as_strs(&prometheus_names(labels)),
        )?;
        made.collectors.push(Box::new(old_calls.clone()));
        for families in [&mut rpc, &mut http] {
            families.old_duration = Some(old_duration.clone());
            families.old_calls = Some(Family {
                vec: old_calls.clone(),
                labels,
                exemplars: None,
            });
        }
    }
    Ok((SideFamilies { rpc, http }, made.collectors))
}

/// The families made so far, to register.
#[derive(Default)]
struct Made {
    collectors: Vec<Box<dyn Collector>>,
}

impl Made {
    fn histogram(
        &mut self,
        spec: Option<Spec>,
        buckets: &[f64],
        exemplars: bool,
    ) -> Result<Option<Family<StripedHistogramVec>>, Error> {
        let Some(spec) = spec else { return Ok(None) };
        self.register_histogram(
            prometheus_family(spec.instrument, spec.unit),
            spec.help,
            spec.labels,
            buckets,
            exemplars,
        )
        .map(Some)
    }

    /// A histogram family, keeping exemplars if asked.
    fn register_histogram(
        &mut self,
        name: String,
        help: &str,
        labels: &'static [Label],
        buckets: &[f64],
        exemplars: bool,
    ) -> Result<Family<StripedHistogramVec>, Error> {
        let names = prometheus_names(labels);
        let vec = StripedHistogramVec::new(
            HistogramOpts::new(name.clone(), help).buckets(buckets.to_vec()),
            &as_strs(&names),
        )?;
        // The bounds as counted (defaults for an empty list, no `+Inf`),
        // so that each exemplar sits on its own bucket's line.
        let exemplars =
            exemplars.then(|| Arc::new(FamilyExemplars::new(name, names, vec.bounds())));
        self.collectors.push(match &exemplars {
            Some(exemplars) => Box::new(WithExemplars {
                vec: vec.clone(),
                exemplars: exemplars.clone(),
            }),
            None => Box::new(vec.clone()),
        });
        Ok(Family {
            vec,
            labels,
            exemplars,
        })
    }

    fn gauge(&mut self, spec: Option<Spec>) -> Result<Option<Family<StripedGaugeVec>>, Error> {
        let Some(spec) = spec else { return Ok(None) };
        let vec = StripedGaugeVec::new(
            Opts::new(prometheus_family(spec.instrument, spec.unit), spec.help),
            &as_strs(&prometheus_names(spec.labels)),
        )?;
        self.collectors.push(Box::new(vec.clone()));
        Ok(Some(Family {
            vec,
            labels: spec.labels,
            exemplars: None,
        }))
    }
}

fn as_strs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_otel_translation_of_the_instruments() {
        let family = |spec: Option<Spec>| spec.map(|s| prometheus_family(s.instrument, s.unit));
        let server = Specs::current(Side::Server, RpcSystem::Grpc);
        assert_eq!(
            family(server.duration).as_deref(),
            Some("rpc_server_call_duration_seconds")
        );
        assert_eq!(
            family(server.active).as_deref(),
            Some("rpc_server_active_requests")
        );
        assert_eq!(
            family(server.request_size).as_deref(),
            Some("rpc_server_request_size_bytes")
        );
        let http = Specs::current(Side::Client, RpcSystem::Http);
        assert_eq!(
            family(http.duration).as_deref(),
            Some("http_client_request_duration_seconds")
        );
        assert!(http.active.is_none() && http.request_size.is_none());
    }
}
