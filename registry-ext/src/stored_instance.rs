//! The JSON value that the key-value backends (etcd, ZooKeeper) store for
//! each instance: one layout, so that a service moved from one backend to
//! the other keeps its entries readable, and one decoder for the fuzz
//! targets to exercise.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{Error, Instance};

/// The value layout version written by this crate.
pub(crate) const VALUE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StoredInstance {
    version: u32,
    service: String,
    address: SocketAddr,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// Who wrote the value, for a backend whose writers hand an entry over
    /// to one another (ZooKeeper: the id of the registry that wrote it).
    /// Left out when unset. Never read into an [`Instance`]: decoding
    /// ignores it, as it ignores any field it does not know, so readers
    /// that predate it read values carrying it.
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    owner: Option<String>,
}

fn default_weight() -> u32 {
    crate::DEFAULT_WEIGHT
}

/// `{"version":1,"service":..,"address":..,"weight":..,"tags":{..}}`.
#[cfg(feature = "etcd")]
pub(crate) fn encode(instance: &Instance) -> Vec<u8> {
    encode_with_owner(instance, None)
}

/// The value of [`encode`] with `"owner":<owner>` added.
#[cfg(feature = "zookeeper")]
pub(crate) fn encode_owned(instance: &Instance, owner: &str) -> Vec<u8> {
    encode_with_owner(instance, Some(owner.to_owned()))
}

fn encode_with_owner(instance: &Instance, owner: Option<String>) -> Vec<u8> {
    let stored = StoredInstance {
        version: VALUE_VERSION,
        service: instance.service.clone(),
        address: instance.address,
        weight: instance.weight,
        tags: instance.tags.clone(),
        owner,
    };
    // A struct of strings, numbers and a string map always serializes.
    serde_json::to_vec(&stored).unwrap_or_default()
}

/// The `owner` a stored value carries: `None` if it has none, or is not a
/// JSON object with a string `owner` (junk, a value written by hand).
#[cfg(feature = "zookeeper")]
pub(crate) fn owner(value: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Owned {
        #[serde(default)]
        owner: Option<String>,
    }
    serde_json::from_slice::<Owned>(value).ok()?.owner
}

/// Decodes a stored value; `key` only names the value in the error.
pub(crate) fn decode(key: &str, value: &[u8]) -> Result<Instance, Error> {
    let decode_error = |reason: String| Error::Decode {
        key: key.to_owned(),
        reason,
    };
    let stored: StoredInstance =
        serde_json::from_slice(value).map_err(|e| decode_error(e.to_string()))?;
    if stored.version != VALUE_VERSION {
        return Err(decode_error(format!(
            "value version {} is not supported (expected {VALUE_VERSION})",
            stored.version
        )));
    }
    if stored.address.port() == 0 || stored.address.ip().is_unspecified() {
        return Err(decode_error(format!(
            "address {} is not routable",
            stored.address
        )));
    }
    Ok(Instance {
        service: stored.service,
        address: stored.address,
        weight: stored.weight,
        tags: stored.tags,
    })
}

/// Decodes a stored value read from `backend` (its key or path `key`),
/// or warns and returns `None`: resolvers skip a malformed value and show
/// the service's other instances.
pub(crate) fn decode_or_warn(backend: &str, key: &str, value: &[u8]) -> Option<Arc<Instance>> {
    match decode(key, value) {
        Ok(instance) => Some(Arc::new(instance)),
        Err(error) => {
            warn!(backend, %error, "skipping malformed stored instance");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_values_decode_to_the_same_instance() {
        let instance = Instance::new("echo", "10.0.0.7:8080".parse().unwrap())
            .with_weight(3)
            .with_tag("zone", "a");
        let value = encode_with_owner(&instance, None);
        assert_eq!(
            decode("/registry-ext/echo/10.0.0.7:8080", &value).unwrap(),
            instance
        );
    }

    #[test]
    fn rejects_junk_without_panicking() {
        let cases: [&[u8]; 7] = [
            b"",
            b"not json",
            b"{}",
            br#"{"version":2,"service":"a","address":"1.2.3.4:5"}"#,
            br#"{"version":1,"service":"a","address":"nowhere"}"#,
            br#"{"version":1,"service":"a","address":"0.0.0.0:80"}"#,
            &[0xff, 0xfe, 0x00],
        ];
        for value in cases {
            assert!(matches!(decode("k", value), Err(Error::Decode { .. })));
        }
    }

    #[cfg(feature = "zookeeper")]
    #[test]
    fn an_owner_is_written_read_back_and_ignored_by_decoding() {
        let instance = Instance::new("echo", "10.0.0.7:8080".parse().unwrap());
        let value = encode_owned(&instance, "registry-a");
        assert_eq!(owner(&value).as_deref(), Some("registry-a"));
        assert_eq!(decode("k", &value).unwrap(), instance);
        // Any owner, or none, decodes the same: readers never fail on it.
        let odd = br#"{"version":1,"service":"echo","address":"10.0.0.7:8080","owner":{"x":1}}"#;
        assert_eq!(decode("k", odd).unwrap(), instance);
        assert_eq!(owner(odd), None);
        for unowned in [&b"not json"[..], b"[1]", b"{}", br#"{"owner":null}"#] {
            assert_eq!(owner(unowned), None, "{unowned:?}");
        }
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn values_without_an_owner_leave_the_field_out() {
        let value = encode(&Instance::new("echo", "10.0.0.7:8080".parse().unwrap()));
        let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert!(json.get("owner").is_none(), "{json}");
    }

    #[test]
    fn missing_weight_and_tags_take_defaults() {
        let value = br#"{"version":1,"service":"a","address":"1.2.3.4:5"}"#;
        let instance = decode("k", value).unwrap();
        assert_eq!(instance.weight, crate::DEFAULT_WEIGHT);
        assert!(instance.tags.is_empty());
    }
}
