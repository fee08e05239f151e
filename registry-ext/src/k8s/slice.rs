//! Which endpoints of a Service's EndpointSlices are used, as kube-proxy
//! chooses them.
//!
//! Each slice yields its [`Candidate`]s at the wanted port; [`select`] then
//! picks across all slices of the Service: the ready endpoints, or — only
//! when no endpoint anywhere is ready — the ones that are terminating but
//! still serving (a pod draining during a rollout, whose replacement is not
//! ready yet: without this fallback a one-replica Deployment would resolve
//! to nothing for the length of every rollout). An address listed by several
//! slices (the controller moving an endpoint from one to another) is used
//! once.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use tracing::warn;

use super::api_versions::EndpointList;
use crate::{Instance, Tags};

/// How usable an endpoint is, from its conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// `ready` and not `terminating`: used whenever any is present.
    Ready,
    /// `terminating` but still `serving`: used only when no endpoint of the
    /// Service is ready.
    Draining,
}

impl Tier {
    /// The tier of an endpoint, `None` if it is not used at all (not ready
    /// and not draining, or terminating and no longer serving).
    ///
    /// Absent conditions read as the API documents them: unknown readiness
    /// and unknown serving as true, unknown terminating as false. A ready
    /// endpoint that is also terminating (the controller writes that only
    /// for Services with `publishNotReadyAddresses`) counts as draining, so
    /// endpoints that are not going away are preferred to it.
    fn of(endpoint: &Endpoint) -> Option<Self> {
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        match (terminating, ready, serving) {
            (false, true, _) => Some(Self::Ready),
            (true, _, true) => Some(Self::Draining),
            _ => None,
        }
    }
}

/// An endpoint address of one slice at the wanted port, with its tier.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    instance: Arc<Instance>,
    tier: Tier,
}

/// The endpoints of `slice` at the slice port named `port_name` (`""` for
/// the unnamed port of a single-port Service), named `service`.
///
/// A slice without that port, or whose port number is absent or out of
/// range, yields nothing; an address that is not an IP (an FQDN slice) is
/// skipped with a warning. Zone, node and hostname become tags.
pub(crate) fn candidates(
    service: &Arc<str>,
    port_name: &str,
    slice: &EndpointSlice,
) -> Vec<Candidate> {
    let name = slice.metadata.name.as_deref().unwrap_or_default();
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    let Some(port) = port else {
        return Vec::new();
    };
    let mut candidates = Vec::new();
    for endpoint in slice.endpoints.endpoint_list() {
        let Some(tier) = Tier::of(endpoint) else {
            continue;
        };
        let tags: Tags = [
            ("zone", &endpoint.zone),
            ("node", &endpoint.node_name),
            ("hostname", &endpoint.hostname),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value.as_deref()?)))
        .collect();
        for address in &endpoint.addresses {
            match address.parse::<IpAddr>() {
                Ok(ip) => candidates.push(Candidate {
                    instance: Arc::new(Instance {
                        service: service.clone(),
                        address: SocketAddr::new(ip, port),
                        weight: crate::DEFAULT_WEIGHT,
                        tags: tags.clone(),
                    }),
                    tier,
                }),
                Err(_) => warn!(slice = %name, address, "skipping a non-IP endpoint address"),
            }
        }
    }
    candidates
}

/// The instances to use among the candidates of all slices of a Service:
/// the ready ones, else the draining ones; each address once (the first
/// slice listing it wins).
pub(crate) fn select<'a>(
    slices: impl IntoIterator<Item = &'a [Candidate]> + Clone,
) -> Vec<Arc<Instance>> {
    let any_ready = slices
        .clone()
        .into_iter()
        .flatten()
        .any(|c| c.tier == Tier::Ready);
    let wanted = if any_ready {
        Tier::Ready
    } else {
        Tier::Draining
    };
    let mut seen = HashSet::new();
    slices
        .into_iter()
        .flatten()
        .filter(|c| c.tier == wanted && seen.insert(c.instance.address))
        .map(|c| c.instance.clone())
        .collect()
}

/// The instances the resolver uses if `slice` were the only slice of the
/// Service, at the slice port named `port_name`: its candidates, then the
/// selection across slices. Reachable from outside the crate only with the `fuzzing`
/// feature, so that the fuzz targets run exactly what the resolver runs on
/// the API server's objects.
#[cfg(any(test, feature = "fuzzing"))]
#[must_use]
pub fn usable_instances(service: &str, port_name: &str, slice: &EndpointSlice) -> Vec<Instance> {
    let candidates = candidates(&service.into(), port_name, slice);
    select([candidates.as_slice()])
        .into_iter()
        .map(Arc::unwrap_or_clone)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(json: &str) -> EndpointSlice {
        serde_json::from_str(json).unwrap()
    }

    fn addresses(instances: &[Instance]) -> Vec<String> {
        instances.iter().map(|i| i.address.to_string()).collect()
    }

    #[test]
    fn keeps_ready_endpoints_at_the_named_port() {
        let slice = slice(
            r#"{
                "metadata": {"name": "echo-abc"},
                "addressType": "IPv4",
                "ports": [{"name": "grpc", "port": 50051}],
                "endpoints": [
                    {"addresses": ["10.1.0.7"], "conditions": {"ready": true}, "zone": "a"},
                    {"addresses": ["10.1.0.8"], "conditions": {"ready": false}},
                    {"addresses": ["10.1.0.9"], "conditions": {"ready": false, "serving": true, "terminating": true}}
                ]
            }"#,
        );
        let instances = usable_instances("k8s://echo.default:grpc", "grpc", &slice);
        assert_eq!(addresses(&instances), ["10.1.0.7:50051"]);
        assert_eq!(instances[0].tags.get("zone"), Some("a"));
        assert!(usable_instances("k8s://echo.default:http", "http", &slice).is_empty());
    }

    #[test]
    fn falls_back_to_draining_endpoints_only_when_none_is_ready() {
        let slice = slice(
            r#"{
                "metadata": {"name": "echo-abc"},
                "addressType": "IPv4",
                "ports": [{"name": "", "port": 8080}],
                "endpoints": [
                    {"addresses": ["10.1.0.7"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                    {"addresses": ["10.1.0.8"], "conditions": {"ready": false, "serving": false, "terminating": true}},
                    {"addresses": ["10.1.0.9"], "conditions": {"ready": false, "serving": false, "terminating": false}},
                    {"addresses": ["10.1.0.7"], "conditions": {"terminating": true}}
                ]
            }"#,
        );
        // The unnamed port of a single-port Service is named "".
        let instances = usable_instances("s", "", &slice);
        assert_eq!(addresses(&instances), ["10.1.0.7:8080"]);
    }
}
