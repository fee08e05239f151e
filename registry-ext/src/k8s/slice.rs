//! Reading the ready endpoints of an EndpointSlice.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::warn;

use super::PortSpec;
use crate::Instance;

/// The instances an EndpointSlice offers at `port`, named `service`.
///
/// Only ready endpoints count, and never terminating ones (unknown readiness
/// counts as ready, as the API says). Zone, node and hostname become tags.
/// A slice without the port yields nothing; an address that is not an IP
/// (an FQDN slice) is skipped with a warning. Reachable from outside the
/// crate only with the `fuzzing` feature, so that the fuzz targets run
/// exactly what the resolver runs on the API server's objects.
#[must_use]
pub fn ready_instances(service: &str, port: &PortSpec, slice: &EndpointSlice) -> Vec<Instance> {
    let name = slice.metadata.name.as_deref().unwrap_or_default();
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = match port {
        PortSpec::Name(wanted) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(wanted.as_str()))
            .and_then(|p| p.port),
        PortSpec::Number(number) => Some(
            ports
                .iter()
                .find_map(|p| p.port.filter(|port| *port == i32::from(*number)))
                .unwrap_or(i32::from(*number)),
        ),
    };
    let Some(port) = port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) else {
        return Vec::new();
    };
    let mut instances = Vec::new();
    for endpoint in slice.endpoints.as_deref().unwrap_or_default() {
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        if !ready || terminating {
            continue;
        }
        let mut tags = BTreeMap::new();
        if let Some(zone) = &endpoint.zone {
            tags.insert("zone".to_owned(), zone.clone());
        }
        if let Some(node) = &endpoint.node_name {
            tags.insert("node".to_owned(), node.clone());
        }
        if let Some(hostname) = &endpoint.hostname {
            tags.insert("hostname".to_owned(), hostname.clone());
        }
        for address in &endpoint.addresses {
            match address.parse::<IpAddr>() {
                Ok(ip) => instances.push(Instance {
                    service: service.to_owned(),
                    address: SocketAddr::new(ip, port),
                    weight: crate::DEFAULT_WEIGHT,
                    tags: tags.clone(),
                }),
                Err(_) => warn!(slice = %name, address, "skipping a non-IP endpoint address"),
            }
        }
    }
    instances
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_ready_endpoints_at_the_named_port() {
        let slice: EndpointSlice = serde_json::from_str(
            r#"{
                "metadata": {"name": "echo-abc"},
                "addressType": "IPv4",
                "ports": [{"name": "grpc", "port": 50051}],
                "endpoints": [
                    {"addresses": ["10.1.0.7"], "conditions": {"ready": true}, "zone": "a"},
                    {"addresses": ["10.1.0.8"], "conditions": {"ready": false}}
                ]
            }"#,
        )
        .unwrap();
        let instances = ready_instances(
            "k8s://echo.default:grpc",
            &PortSpec::Name("grpc".into()),
            &slice,
        );
        assert_eq!(instances.len(), 1);
        assert_eq!(instances[0].address, "10.1.0.7:50051".parse().unwrap());
        assert_eq!(instances[0].tags["zone"], "a");
    }
}
