//! The JSON value that the key-value backends (etcd, ZooKeeper) store for
//! each instance: one layout, so that a service moved from one backend to
//! the other keeps its entries readable, and one decoder for the fuzz
//! targets to exercise.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

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
}

fn default_weight() -> u32 {
    crate::DEFAULT_WEIGHT
}

/// `{"version":1,"service":..,"address":..,"weight":..,"tags":{..}}`.
pub(crate) fn encode(instance: &Instance) -> Vec<u8> {
    let stored = StoredInstance {
        version: VALUE_VERSION,
        service: instance.service.clone(),
        address: instance.address,
        weight: instance.weight,
        tags: instance.tags.clone(),
    };
    // A struct of strings, numbers and a string map always serializes.
    serde_json::to_vec(&stored).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_values_decode_to_the_same_instance() {
        let instance = Instance::new("echo", "10.0.0.7:8080".parse().unwrap())
            .with_weight(3)
            .with_tag("zone", "a");
        let value = encode(&instance);
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

    #[test]
    fn missing_weight_and_tags_take_defaults() {
        let value = br#"{"version":1,"service":"a","address":"1.2.3.4:5"}"#;
        let instance = decode("k", value).unwrap();
        assert_eq!(instance.weight, crate::DEFAULT_WEIGHT);
        assert!(instance.tags.is_empty());
    }
}
