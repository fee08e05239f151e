//! The JSON value that the key-value backends (etcd, ZooKeeper) store for
//! each instance: one layout, so that a service moved from one backend to
//! the other keeps its entries readable, and one decoder for the fuzz
//! targets to exercise.

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{Error, Instance, Tags};

/// The value layout version written by this crate.
pub(crate) const VALUE_VERSION: u32 = 1;

/// A value as written: borrowed from the instance, fields in this order.
#[derive(Serialize)]
struct StoredInstance<'a> {
    version: u32,
    service: &'a str,
    address: SocketAddr,
    weight: u32,
    tags: &'a Tags,
    /// Who wrote the value, for a backend whose writers hand an entry over
    /// to one another (ZooKeeper: the id of the registry that wrote it).
    /// Left out when unset. Never read into an [`Instance`]: decoding
    /// ignores it, as it ignores any field it does not know, so readers
    /// that predate it read values carrying it.
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
}

/// A value as read; the service name borrowed from the value where it
/// can be, to be compared with the name the resolver already holds.
#[derive(Deserialize)]
struct ReadInstance<'a> {
    version: u32,
    #[serde(borrow)]
    service: Cow<'a, str>,
    address: SocketAddr,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    tags: Tags,
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
    encode_with_owner(instance, Some(owner))
}

fn encode_with_owner(instance: &Instance, owner: Option<&str>) -> Vec<u8> {
    let stored = StoredInstance {
        version: VALUE_VERSION,
        service: &instance.service,
        address: instance.address,
        weight: instance.weight,
        tags: &instance.tags,
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
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode(key: &str, value: &[u8]) -> Result<Instance, Error> {
    decode_sharing(key, value, None)
}

/// Decodes a stored value, giving it the `service` name `shared` (its
/// `Arc`, not a copy) if that is the name the value holds; `key` only
/// names the value in the error.
fn decode_sharing(key: &str, value: &[u8], shared: Option<&Arc<str>>) -> Result<Instance, Error> {
    let decode_error = |reason: String| Error::Decode {
        key: key.to_owned(),
        reason,
    };
    let stored: ReadInstance<'_> =
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
    let service = match shared {
        Some(shared) if **shared == *stored.service => shared.clone(),
        _ => stored.service.into(),
    };
    Ok(Instance {
        service,
        address: stored.address,
        weight: stored.weight,
        tags: stored.tags,
    })
}

/// Decodes a stored value read from `backend` (its key or path `key`)
/// under the entries of `service` (shared with the instance when the value
/// names it, as it should), or warns and returns `None`: resolvers skip a
/// malformed value and show the service's other instances.
pub(crate) fn decode_or_warn(
    backend: &str,
    service: &Arc<str>,
    key: &str,
    value: &[u8],
) -> Option<Arc<Instance>> {
    match decode_sharing(key, value, Some(service)) {
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
    fn the_stored_layout_is_the_one_written_before() {
        // Byte for byte what earlier versions wrote (and read): tags as a
        // JSON object in key order, `owner` last and only when set.
        let instance = Instance::new("svc-0000", "10.0.0.1:8080".parse().unwrap())
            .with_tag("zone", "zone-0")
            .with_tag("version", "1.4.2");
        let written = r#"{"version":1,"service":"svc-0000","address":"10.0.0.1:8080","weight":10,"tags":{"version":"1.4.2","zone":"zone-0"}}"#;
        assert_eq!(
            String::from_utf8(encode_with_owner(&instance, None)).unwrap(),
            written
        );
        assert_eq!(
            String::from_utf8(encode_with_owner(&instance, Some("registry-a"))).unwrap(),
            written.replace("}}", r#"},"owner":"registry-a"}"#)
        );
        assert_eq!(decode("k", written.as_bytes()).unwrap(), instance);
    }

    #[test]
    fn a_value_naming_the_followed_service_shares_its_name() {
        let followed: Arc<str> = "echo".into();
        let value = br#"{"version":1,"service":"echo","address":"10.0.0.7:8080"}"#;
        let instance = decode_sharing("k", value, Some(&followed)).unwrap();
        assert!(Arc::ptr_eq(&instance.service, &followed));
        // Escaped in the value (decoded into a copy first): still shared.
        let escaped = br#"{"version":1,"service":"\u0065cho","address":"10.0.0.7:8080"}"#;
        let instance = decode_sharing("k", escaped, Some(&followed)).unwrap();
        assert!(Arc::ptr_eq(&instance.service, &followed));
        // Another name (a value written by hand under the wrong key) is its own.
        let other = br#"{"version":1,"service":"other","address":"10.0.0.7:8080"}"#;
        let instance = decode_sharing("k", other, Some(&followed)).unwrap();
        assert_eq!(&*instance.service, "other");
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
