//! The families the registry health is exported as: their names, help,
//! labels, and the samples a merged snapshot gives each.

use std::collections::HashMap;

use prometheus::{
    core::Desc,
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};
use rpc_ext_registry::health::{RegistrationHealth, RegistrationState, SubscriptionHealth};

/// One family: what a scrape shows under its name.
#[derive(Debug, Clone, Copy)]
pub(super) struct Family {
    pub(super) name: &'static str,
    pub(super) help: &'static str,
    pub(super) kind: MetricType,
    pub(super) labels: &'static [&'static str],
}

const REGISTRATION: &[&str] = &["backend", "service", "address"];
const SUBSCRIPTION: &[&str] = &["backend", "service"];

pub(super) const REGISTRATION_STATE: Family = Family {
    name: "rpc_registry_registration_state",
    help: "1 for the state the registration is in (registered: the backend holds it; \
           reregistering: the backend lost it and it is being written again), 0 for the others.",
    kind: MetricType::GAUGE,
    labels: &["backend", "service", "address", "state"],
};
pub(super) const REGISTRATION_TIME_IN_STATE: Family = Family {
    name: "rpc_registry_registration_time_in_state_seconds",
    help: "Time since the registration entered its current state.",
    kind: MetricType::GAUGE,
    labels: REGISTRATION,
};
pub(super) const REGISTRATION_RENEWALS: Family = Family {
    name: "rpc_registry_registration_renewals_total",
    help: "Renewals the backend confirmed (result=ok); failed or refused renewals, losses found \
           by renewing and failed re-writes (result=failed).",
    kind: MetricType::COUNTER,
    labels: &["backend", "service", "address", "result"],
};
pub(super) const REGISTRATION_REREGISTRATIONS: Family = Family {
    name: "rpc_registry_registration_reregistrations_total",
    help: "Times the registration was written again after the backend lost it.",
    kind: MetricType::COUNTER,
    labels: REGISTRATION,
};
pub(super) const SUBSCRIPTION_INSTANCES: Family = Family {
    name: "rpc_registry_subscription_instances",
    help: "Instances the resolver's subscribers are shown now.",
    kind: MetricType::GAUGE,
    labels: SUBSCRIPTION,
};
pub(super) const SUBSCRIPTION_SERVING_STALE: Family = Family {
    name: "rpc_registry_subscription_serving_stale",
    help: "1 while the backend is failing and subscribers are kept on the last known set.",
    kind: MetricType::GAUGE,
    labels: SUBSCRIPTION,
};
pub(super) const SUBSCRIPTION_LAST_UPDATE_AGE: Family = Family {
    name: "rpc_registry_subscription_last_update_age_seconds",
    help: "Time since the backend last confirmed the set (absent before the first answer; grows \
           on a quiet etcd or Kubernetes watch while all is well).",
    kind: MetricType::GAUGE,
    labels: SUBSCRIPTION,
};
pub(super) const SUBSCRIPTION_WATCH_RESTARTS: Family = Family {
    name: "rpc_registry_subscription_watch_restarts_total",
    help: "Times the resolver started following the service over (a broken watch, a failed query).",
    kind: MetricType::COUNTER,
    labels: SUBSCRIPTION,
};
pub(super) const SUBSCRIPTION_ERRORS: Family = Family {
    name: "rpc_registry_subscription_errors_total",
    help: "Failures reported to the resolver's subscribers.",
    kind: MetricType::COUNTER,
    labels: SUBSCRIPTION,
};

/// Every family, in the order they are collected.
pub(super) const ALL: [Family; 9] = [
    REGISTRATION_STATE,
    REGISTRATION_TIME_IN_STATE,
    REGISTRATION_RENEWALS,
    REGISTRATION_REREGISTRATIONS,
    SUBSCRIPTION_INSTANCES,
    SUBSCRIPTION_SERVING_STALE,
    SUBSCRIPTION_LAST_UPDATE_AGE,
    SUBSCRIPTION_WATCH_RESTARTS,
    SUBSCRIPTION_ERRORS,
];

/// The states every registration has a `state` series for.
const STATES: [RegistrationState; 2] = [
    RegistrationState::Registered,
    RegistrationState::Reregistering,
];

impl Family {
    /// The descriptor a registry checks names and labels against.
    pub(super) fn desc(&self) -> Desc {
        let labels = self.labels.iter().map(|l| (*l).to_owned()).collect();
        // The names and labels are constants that make a valid descriptor
        // (a unit test builds every one): this cannot fail.
        Desc::new(self.name.into(), self.help.into(), labels, HashMap::new())
            .unwrap_or_else(|e| unreachable!("static family definition {}: {e}", self.name))
    }

    fn with(&self, metrics: Vec<Metric>) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(self.name.into());
        family.set_help(self.help.into());
        family.set_field_type(self.kind);
        family.set_metric(metrics);
        family
    }

    /// A sample with `values` for this family's labels, in order.
    fn sample(&self, values: &[&str], value: f64) -> Metric {
        let mut metric = Metric::from_label(
            self.labels
                .iter()
                .zip(values)
                .map(|(name, value)| {
                    let mut pair = LabelPair::default();
                    pair.set_name((*name).into());
                    pair.set_value((*value).into());
                    pair
                })
                .collect(),
        );
        if self.kind == MetricType::COUNTER {
            let mut counter = Counter::default();
            counter.set_value(value);
            metric.set_counter(counter);
        } else {
            let mut gauge = Gauge::default();
            gauge.set_value(value);
            metric.set_gauge(gauge);
        }
        metric
    }
}

/// The registration families, one sample set per (merged) entry.
pub(super) fn registrations(entries: &[RegistrationHealth]) -> Vec<MetricFamily> {
    let (mut state, mut time_in_state, mut renewals, mut reregistrations) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for entry in entries {
        let address = entry.address.to_string();
        let labels = [entry.backend, &*entry.service, &address];
        let with = |extra| and(labels, extra);
        for known in STATES {
            let value = if known == entry.state { 1.0 } else { 0.0 };
            state.push(REGISTRATION_STATE.sample(&with(known.as_str()), value));
        }
        if !STATES.contains(&entry.state) {
            // A state newer than this list still shows as the current one.
            state.push(REGISTRATION_STATE.sample(&with(entry.state.as_str()), 1.0));
        }
        time_in_state
            .push(REGISTRATION_TIME_IN_STATE.sample(&labels, entry.in_state_for.as_secs_f64()));
        renewals.push(REGISTRATION_RENEWALS.sample(&with("ok"), entry.renewals_ok as f64));
        renewals.push(REGISTRATION_RENEWALS.sample(&with("failed"), entry.renewals_failed as f64));
        reregistrations
            .push(REGISTRATION_REREGISTRATIONS.sample(&labels, entry.reregistrations as f64));
    }
    non_empty([
        REGISTRATION_STATE.with(state),
        REGISTRATION_TIME_IN_STATE.with(time_in_state),
        REGISTRATION_RENEWALS.with(renewals),
        REGISTRATION_REREGISTRATIONS.with(reregistrations),
    ])
}

/// `labels` and one more value.
fn and<'a>([backend, service, address]: [&'a str; 3], extra: &'a str) -> [&'a str; 4] {
    [backend, service, address, extra]
}

/// The subscription families, one sample set per (merged) entry; no age
/// sample for an entry that never received a set.
pub(super) fn subscriptions(entries: &[SubscriptionHealth]) -> Vec<MetricFamily> {
    let (mut instances, mut stale, mut age, mut restarts, mut errors) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for entry in entries {
        let labels = [entry.backend, &*entry.service];
        instances.push(SUBSCRIPTION_INSTANCES.sample(&labels, entry.instances as f64));
        let serving_stale = if entry.serving_stale { 1.0 } else { 0.0 };
        stale.push(SUBSCRIPTION_SERVING_STALE.sample(&labels, serving_stale));
        if let Some(last_update_age) = entry.last_update_age {
            age.push(SUBSCRIPTION_LAST_UPDATE_AGE.sample(&labels, last_update_age.as_secs_f64()));
        }
        restarts.push(SUBSCRIPTION_WATCH_RESTARTS.sample(&labels, entry.watch_restarts as f64));
        errors.push(SUBSCRIPTION_ERRORS.sample(&labels, entry.errors as f64));
    }
    non_empty([
        SUBSCRIPTION_INSTANCES.with(instances),
        SUBSCRIPTION_SERVING_STALE.with(stale),
        SUBSCRIPTION_LAST_UPDATE_AGE.with(age),
        SUBSCRIPTION_WATCH_RESTARTS.with(restarts),
        SUBSCRIPTION_ERRORS.with(errors),
    ])
}

/// Families with at least one sample: the text encoders refuse an empty
/// one (a registry drops them itself, a direct `collect()` caller may not).
fn non_empty<const N: usize>(families: [MetricFamily; N]) -> Vec<MetricFamily> {
    families
        .into_iter()
        .filter(|family| !family.get_metric().is_empty())
        .collect()
}
