//! The instance type shared by every backend.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

/// Weight given to an instance when none is set.
pub const DEFAULT_WEIGHT: u32 = 10;

/// One network endpoint of a service, as registered and as resolved.
///
/// ```
/// use rpc_ext_registry::Instance;
///
/// let instance = Instance::new("echo", "127.0.0.1:8080".parse().unwrap())
///     .with_weight(20)
///     .with_tag("zone", "a");
/// assert_eq!(instance.weight, 20);
/// assert_eq!(instance.tags["zone"], "a");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Instance {
    /// Logical service name (what clients resolve).
    pub service: String,
    /// Address clients connect to.
    pub address: SocketAddr,
    /// Relative load-balancing weight; `0` takes the instance out of rotation.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Free-form metadata (zone, version, cluster...).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl Instance {
    /// An instance of `service` at `address` with the default weight and no tags.
    #[must_use]
    pub fn new(service: impl Into<String>, address: SocketAddr) -> Self {
        Self {
            service: service.into(),
            address,
            weight: DEFAULT_WEIGHT,
            tags: BTreeMap::new(),
        }
    }

    /// Sets the load-balancing weight.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Adds one tag.
    #[must_use]
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        if self.service.is_empty() || self.service.contains('/') {
            return Err(crate::Error::InvalidInstance(format!(
                "service name {:?} must be non-empty and contain no '/'",
                self.service
            )));
        }
        if self.address.ip().is_unspecified() || self.address.port() == 0 {
            return Err(crate::Error::InvalidInstance(format!(
                "address {} is not routable: resolve it with rpc_ext_registry::advertise_address first",
                self.address
            )));
        }
        Ok(())
    }
}
