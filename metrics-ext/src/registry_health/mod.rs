//! The health of rpc-ext-registry's registrations and subscriptions
//! ([`RegistryHealth`]) as Prometheus series, read at each scrape.

mod families;
mod merge;
#[cfg(test)]
mod tests;

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
};
use rpc_ext_registry::health::RegistryHealth;

/// Exposes a [`RegistryHealth`] handle: register it into the registry your
/// `/metrics` endpoint serves, and every scrape reads the handle's entries.
///
/// | family | type | labels | value |
/// |---|---|---|---|
/// | `rpc_registry_registration_state` | gauge | `backend`, `service`, `address`, `state` | 1 for the state the registration is in, 0 for the other (`registered`, `reregistering`) |
/// | `rpc_registry_registration_time_in_state_seconds` | gauge | `backend`, `service`, `address` | time since it entered that state |
/// | `rpc_registry_registration_renewals_total` | counter | `backend`, `service`, `address`, `result` | renewals the backend confirmed (`result="ok"`); failed or refused renewals, losses found by renewing, failed re-writes (`result="failed"`) |
/// | `rpc_registry_registration_reregistrations_total` | counter | `backend`, `service`, `address` | writes after the backend lost it |
/// | `rpc_registry_subscription_instances` | gauge | `backend`, `service` | instances the resolver's subscribers are shown |
/// | `rpc_registry_subscription_serving_stale` | gauge | `backend`, `service` | 1 while the backend fails and subscribers keep the last known set |
/// | `rpc_registry_subscription_last_update_age_seconds` | gauge | `backend`, `service` | time since the backend last confirmed the set; absent before the first answer |
/// | `rpc_registry_subscription_watch_restarts_total` | counter | `backend`, `service` | times the resolver started following the service over |
/// | `rpc_registry_subscription_errors_total` | counter | `backend`, `service` | failures reported to subscribers |
///
/// `backend` is `etcd`, `consul`, `k8s` or `memory`; `service` and
/// `address` are what this process registered or follows, so the series
/// are bounded by what it does, never by what a backend sends. A
/// registration's series go when it is deregistered or dropped, a
/// subscription's when the resolver stops following the service. An entry
/// made again (a new registration of the same instance, a follower started
/// again) starts its counters from zero: Prometheus sees a counter reset,
/// which `rate` and `increase` handle.
///
/// Two entries with the same labels (one instance registered twice, one
/// service followed by two resolvers reporting into one handle) are
/// exported as one: counters added, the worse state (with the longer time
/// in it), the fewer instances, stale if either is, the older update.
///
/// The [`RegistryHealth`] field docs say exactly what each backend counts.
///
/// ```
/// use rpc_ext_metrics::{RegistryHealthCollector, RpcMetrics};
/// use rpc_ext_registry::{Instance, MemoryRegistry, Registry, Resolver};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = MemoryRegistry::new(); // or etcd, Consul, Kubernetes: their `health()`
/// let _echo = registry
///     .register(Instance::new("echo", "127.0.0.1:50051".parse()?))
///     .await?;
/// let _watch = registry.subscribe("echo").await?;
///
/// let metrics = RpcMetrics::builder().build()?;
/// metrics
///     .registry()
///     .register(Box::new(RegistryHealthCollector::new(registry.health())))?;
/// // MetricsEndpoint::serve(addr, metrics.registry().clone()) now serves
/// // them next to the RPC series.
/// let text = rpc_ext_metrics::encode_text(metrics.registry())?;
/// assert!(text.contains(
///     r#"rpc_registry_registration_state{backend="memory",service="echo",address="127.0.0.1:50051",state="registered"} 1"#
/// ));
/// assert!(text.contains(
///     r#"rpc_registry_registration_renewals_total{backend="memory",service="echo",address="127.0.0.1:50051",result="failed"} 0"#
/// ));
/// assert!(text.contains(r#"rpc_registry_subscription_instances{backend="memory",service="echo"} 1"#));
/// assert!(text.contains(r#"rpc_registry_subscription_serving_stale{backend="memory",service="echo"} 0"#));
/// # Ok(()) }
/// ```
///
/// Several registries and resolvers are exported by one collector when
/// they share a handle (their builders' `health(..)`); registering two
/// collectors into one registry fails, since their families clash.
#[derive(Debug)]
pub struct RegistryHealthCollector {
    health: RegistryHealth,
    descs: Vec<Desc>,
}

impl RegistryHealthCollector {
    /// Exposes every entry of `health` (and of its clones).
    #[must_use]
    pub fn new(health: RegistryHealth) -> Self {
        Self {
            health,
            descs: families::ALL.iter().map(families::Family::desc).collect(),
        }
    }
}

impl Collector for RegistryHealthCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshot = self.health.snapshot();
        let mut collected = families::registrations(&merge::registrations(snapshot.registrations));
        collected.extend(families::subscriptions(&merge::subscriptions(
            snapshot.subscriptions,
        )));
        collected
    }
}
