//! OpenTelemetry mirror of the instruments (feature `otel`): every call
//! recorded for Prometheus is also recorded into OpenTelemetry instruments
//! with the same names and the same attributes ([`Specs`]), for export
//! through any meter provider (OTLP, for instance).
//!
//! Current and Dup record the current instruments; Old records the old
//! attributes into the same instrument names (what this crate exported
//! before). Dup does not record the old attributes too: both sets would go
//! into the same instruments (`rpc.server.call.duration`) and count every
//! call twice.

use std::sync::Arc;

use opentelemetry::{
    metrics::{Histogram, Meter, UpDownCounter},
    KeyValue,
};
use rpc_ext_core::semconv::Conventions;

use crate::{
    families::{Spec, Specs},
    labels::{KeyValues, Label, OutcomeValues},
    RpcSystem, Side,
};

/// The OpenTelemetry instruments of one side for one kind of call.
#[derive(Clone, Default)]
pub(crate) struct OtelFamilies {
    duration: Option<(Histogram<f64>, &'static [Label])>,
    active: Option<(UpDownCounter<i64>, &'static [Label])>,
    request_size: Option<(Histogram<u64>, &'static [Label])>,
    response_size: Option<(Histogram<u64>, &'static [Label])>,
}

/// The instruments of one side: RPC calls and HTTP calls.
#[derive(Clone)]
pub(crate) struct OtelSide {
    rpc: OtelFamilies,
    http: OtelFamilies,
}

impl OtelSide {
    pub(crate) fn new(
        meter: &Meter,
        side: Side,
        conventions: Conventions,
        duration_buckets: &[f64],
        size_buckets: &[f64],
    ) -> Self {
        let families =
            |specs: Specs| OtelFamilies::new(meter, specs, duration_buckets, size_buckets);
        if conventions.current() {
            Self {
                rpc: families(Specs::current(side, RpcSystem::Grpc)),
                http: families(Specs::current(side, RpcSystem::Http)),
            }
        } else {
            let old = families(Specs::old(side));
            Self {
                rpc: old.clone(),
                http: old,
            }
        }
    }

    pub(crate) fn of(&self, system: RpcSystem) -> &OtelFamilies {
        match system {
            RpcSystem::Http => &self.http,
            RpcSystem::Grpc | RpcSystem::Thrift => &self.rpc,
        }
    }
}

impl OtelFamilies {
    fn new(meter: &Meter, specs: Specs, duration_buckets: &[f64], size_buckets: &[f64]) -> Self {
        let sizes = |spec: Option<Spec>| {
            spec.map(|spec| {
                let histogram = meter
                    .u64_histogram(spec.instrument)
                    .with_unit(spec.unit)
                    .with_description(spec.help)
                    .with_boundaries(size_buckets.to_vec())
                    .build();
                (histogram, spec.labels)
            })
        };
        Self {
            duration: specs.duration.map(|spec| {
                let histogram = meter
                    .f64_histogram(spec.instrument)
                    .with_unit(spec.unit)
                    .with_description(spec.help)
                    .with_boundaries(duration_buckets.to_vec())
                    .build();
                (histogram, spec.labels)
            }),
            active: specs.active.map(|spec| {
                let counter = meter
                    .i64_up_down_counter(spec.instrument)
                    .with_unit(spec.unit)
                    .with_description(spec.help)
                    .build();
                (counter, spec.labels)
            }),
            request_size: sizes(specs.request_size),
            response_size: sizes(specs.response_size),
        }
    }
}

/// The OpenTelemetry side of one method's handles: attribute sets built
/// once, so recording allocates nothing in this crate.
pub(crate) struct OtelMethod {
    duration: Option<(Histogram<f64>, &'static [Label])>,
    active: Option<(UpDownCounter<i64>, Arc<[KeyValue]>)>,
    request_size: Option<(Histogram<u64>, Arc<[KeyValue]>)>,
    response_size: Option<(Histogram<u64>, Arc<[KeyValue]>)>,
}

impl OtelMethod {
    pub(crate) fn new(families: &OtelFamilies, values: &KeyValues<'_>) -> Self {
        fn with_attributes<I: Clone>(
            instrument: &Option<(I, &'static [Label])>,
            values: &KeyValues<'_>,
        ) -> Option<(I, Arc<[KeyValue]>)> {
            instrument
                .as_ref()
                .map(|(i, labels)| (i.clone(), values.attributes(labels, None).into()))
        }
        Self {
            duration: families.duration.clone(),
            active: with_attributes(&families.active, values),
            request_size: with_attributes(&families.request_size, values),
            response_size: with_attributes(&families.response_size, values),
        }
    }

    pub(crate) fn started(&self) {
        if let Some((active, attributes)) = &self.active {
            active.add(1, attributes);
        }
    }

    pub(crate) fn ended(&self) {
        if let Some((active, attributes)) = &self.active {
            active.add(-1, attributes);
        }
    }

    pub(crate) fn sizes(&self, request: Option<u64>, response: Option<u64>) {
        if let (Some((histogram, attributes)), Some(bytes)) = (&self.request_size, request) {
            histogram.record(bytes, attributes);
        }
        if let (Some((histogram, attributes)), Some(bytes)) = (&self.response_size, response) {
            histogram.record(bytes, attributes);
        }
    }

    /// The duration attributes of a call with `outcome`.
    pub(crate) fn outcome_attributes(
        &self,
        values: &KeyValues<'_>,
        outcome: &OutcomeValues,
    ) -> Option<Arc<[KeyValue]>> {
        let (_, labels) = self.duration.as_ref()?;
        Some(values.attributes(labels, Some(outcome)).into())
    }

    pub(crate) fn record(&self, attributes: &[KeyValue], seconds: f64) {
        if let Some((duration, _)) = &self.duration {
            duration.record(seconds, attributes);
        }
    }
}
