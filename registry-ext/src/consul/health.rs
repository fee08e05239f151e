//! Reading Consul's health answers: the `X-Consul-Index` header and the
//! body of `GET /v1/health/service/<name>`.
//!
//! `decode_health` is public so that tools and fuzzers can run exactly what
//! the resolver runs on an agent's answer; `decode_index` and `INDEX_HEADER`
//! are reachable from outside the crate only with the `fuzzing` feature.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use serde::Deserialize;

use super::{
    api::Weights,
    meta::{decode_tags, REGISTRATION_META, WEIGHT_META},
};
use crate::{Error, Instance, Result};

/// The header carrying the index a blocking query waits on.
pub const INDEX_HEADER: &str = "X-Consul-Index";

/// Reads an `X-Consul-Index` value; `what` names the query in the error.
pub fn decode_index(what: &str, value: Option<&[u8]>) -> Result<u64> {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| Error::Decode {
            key: what.to_owned(),
            reason: format!("missing or malformed {INDEX_HEADER}"),
        })
}

/// Decodes a health answer into instances. A body that is not the documented
/// JSON array is an [`Error::Decode`]; an entry without an IP address and a
/// port is skipped with a warning, the others are kept. Tags come from the
/// service `Meta`, with the keys the registry had to encode for Consul
/// (`__app_2Ekubernetes_2Eio_2Fname`) decoded (`app.kubernetes.io/name`).
///
/// ```
/// use rpc_ext_registry::consul::decode_health;
///
/// let body = br#"[{"Node": {"Address": "10.0.0.1"},
///                  "Service": {"ID": "echo-1", "Service": "echo", "Address": "", "Port": 8080,
///                              "Meta": {"weight": "5", "zone": "a",
///                                       "__app_2Ekubernetes_2Eio_2Fname": "echo"}}}]"#;
/// let instances = decode_health("echo", body).unwrap();
/// assert_eq!(instances[0].address, "10.0.0.1:8080".parse().unwrap());
/// assert_eq!(instances[0].weight, 5);
/// assert_eq!(instances[0].tags.get("app.kubernetes.io/name"), Some("echo"));
/// assert!(decode_health("echo", b"<html>").is_err());
/// ```
pub fn decode_health(what: &str, body: &[u8]) -> Result<Vec<Instance>> {
    decode_health_sharing(what, body, None)
}

/// [`decode_health`], giving the instances named `shared` that `Arc` as
/// their service name rather than a copy each.
pub(crate) fn decode_health_sharing(
    what: &str,
    body: &[u8],
    shared: Option<&Arc<str>>,
) -> Result<Vec<Instance>> {
    let entries: Vec<HealthEntry> = serde_json::from_slice(body).map_err(|e| Error::Decode {
        key: what.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(entries
        .into_iter()
        .filter_map(|entry| instance_of(entry, shared))
        .collect())
}

/// One entry of `GET /v1/health/service/<name>`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: HealthNode,
    service: HealthService,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    weights: Option<Weights>,
}

fn instance_of(entry: HealthEntry, shared: Option<&Arc<str>>) -> Option<Instance> {
    let service = entry.service;
    // An empty service address means "the node's address".
    let host = if service.address.is_empty() {
        &entry.node.address
    } else {
        &service.address
    };
    let address = match host.parse::<std::net::IpAddr>() {
        Ok(ip) if service.port != 0 => SocketAddr::new(ip, service.port),
        _ => {
            tracing::warn!(id = %service.id, host, port = service.port, "skipping Consul instance without an IP address and port");
            return None;
        }
    };
    let mut meta = service.meta.unwrap_or_default();
    meta.remove(REGISTRATION_META);
    let weight = meta
        .remove(WEIGHT_META)
        .and_then(|w| w.parse().ok())
        .or(service.weights.map(|w| w.passing))
        .unwrap_or(crate::DEFAULT_WEIGHT);
    let name = match shared {
        Some(shared) if **shared == *service.service => shared.clone(),
        _ => service.service.into(),
    };
    Some(Instance {
        service: name,
        address,
        weight,
        // Tag keys Consul refuses in Meta were encoded at registration.
        tags: decode_tags(meta),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_index_and_rejects_junk() {
        assert_eq!(
            decode_index("health", Some(b" 42 ".as_slice())).unwrap(),
            42
        );
        assert!(decode_index("health", Some(b"-1".as_slice())).is_err());
        assert!(decode_index("health", None).is_err());
    }
}
