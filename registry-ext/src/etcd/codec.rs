//! The JSON value stored under each instance key (the layout the ZooKeeper
//! backend stores too: both encode with `crate::stored_instance`).

use crate::Instance;

/// The value layout version written by this crate.
pub const VALUE_VERSION: u32 = crate::stored_instance::VALUE_VERSION;

/// Encodes an instance as the value stored in etcd.
///
/// ```
/// use rpc_ext_registry::{etcd::{encode_instance, VALUE_VERSION}, Instance};
///
/// let value = encode_instance(&Instance::new("echo", "10.0.0.7:8080".parse().unwrap()));
/// let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
/// assert_eq!(json["version"], VALUE_VERSION);
/// assert_eq!(json["address"], "10.0.0.7:8080");
/// ```
#[must_use]
pub fn encode_instance(instance: &Instance) -> Vec<u8> {
    crate::stored_instance::encode(instance)
}

/// Decodes a stored value; `key` only names the value in the error.
///
/// Only with the `fuzzing` feature: the resolver decodes through the same
/// `crate::stored_instance::decode`.
#[cfg(feature = "fuzzing")]
pub fn decode_instance(key: &str, value: &[u8]) -> Result<Instance, crate::Error> {
    crate::stored_instance::decode(key, value)
}
