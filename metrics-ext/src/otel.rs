//! OpenTelemetry mirror of the instruments (feature `otel`): every call
//! recorded for Prometheus is also recorded into OpenTelemetry instruments
//! named per the RPC semantic conventions, for export through any meter
//! provider (OTLP, for instance).

use std::sync::Arc;

use opentelemetry::{
    metrics::{Histogram, Meter, UpDownCounter},
    KeyValue,
};

use crate::{RpcSystem, Side};

/// The OpenTelemetry instruments of one side.
#[derive(Clone)]
pub(crate) struct OtelFamilies {
    duration: Histogram<f64>,
    active: UpDownCounter<i64>,
    request_size: Histogram<u64>,
    response_size: Histogram<u64>,
}

impl OtelFamilies {
    pub(crate) fn new(
        meter: &Meter,
        side: Side,
        duration_buckets: &[f64],
        size_buckets: &[f64],
    ) -> Self {
        let prefix = match side {
            Side::Server => "rpc.server",
            Side::Client => "rpc.client",
        };
        Self {
            duration: meter
                .f64_histogram(format!("{prefix}.call.duration"))
                .with_unit("s")
                .with_description("Duration of RPCs, from the request to the end of the response.")
                .with_boundaries(duration_buckets.to_vec())
                .build(),
            active: meter
                .i64_up_down_counter(format!("{prefix}.active_requests"))
                .with_unit("{request}")
                .with_description("RPCs in progress.")
                .build(),
            request_size: meter
                .u64_histogram(format!("{prefix}.request.size"))
                .with_unit("By")
                .with_boundaries(size_buckets.to_vec())
                .build(),
            response_size: meter
                .u64_histogram(format!("{prefix}.response.size"))
                .with_unit("By")
                .with_boundaries(size_buckets.to_vec())
                .build(),
        }
    }
}

/// The OpenTelemetry side of one method's handles: attribute sets built
/// once, so recording allocates nothing in this crate.
pub(crate) struct OtelMethod {
    families: OtelFamilies,
    attributes: Arc<[KeyValue]>,
    system: RpcSystem,
}

impl OtelMethod {
    pub(crate) fn new(
        families: &OtelFamilies,
        system: RpcSystem,
        service: &str,
        method: &str,
        peer: Option<&str>,
    ) -> Self {
        let mut attributes = vec![
            KeyValue::new("rpc.system", system.as_str()),
            KeyValue::new("rpc.service", service.to_owned()),
            KeyValue::new("rpc.method", method.to_owned()),
        ];
        if let Some(peer) = peer {
            attributes.push(KeyValue::new("peer.service", peer.to_owned()));
        }
        Self {
            families: families.clone(),
            attributes: attributes.into(),
            system,
        }
    }

    pub(crate) fn started(&self) {
        self.families.active.add(1, &self.attributes);
    }

    pub(crate) fn ended(&self) {
        self.families.active.add(-1, &self.attributes);
    }

    pub(crate) fn sizes(&self, request: Option<u64>, response: Option<u64>) {
        if let Some(bytes) = request {
            self.families.request_size.record(bytes, &self.attributes);
        }
        if let Some(bytes) = response {
            self.families.response_size.record(bytes, &self.attributes);
        }
    }

    /// The attributes of a finished call with `status`.
    pub(crate) fn status_attributes(&self, status: &'static str) -> Arc<[KeyValue]> {
        let mut attributes = self.attributes.to_vec();
        attributes.push(match (self.system, status.parse::<i64>()) {
            (RpcSystem::Grpc, Ok(code)) => KeyValue::new("rpc.grpc.status_code", code),
            (RpcSystem::Http, Ok(code)) => KeyValue::new("http.response.status_code", code),
            _ => KeyValue::new("rpc.response.status_code", status),
        });
        attributes.into()
    }

    pub(crate) fn record(&self, attributes: &[KeyValue], seconds: f64) {
        self.families.duration.record(seconds, attributes);
    }
}
