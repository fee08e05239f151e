//! The instance type shared by every backend.

use std::{net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::Tags;

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
/// assert_eq!(&*instance.service, "echo");
/// assert_eq!(instance.weight, 20);
/// assert_eq!(instance.tags.get("zone"), Some("a"));
/// ```
///
/// A resolver holds one per instance it shows, so the representation is
/// compact: the service name is shared (the resolvers here give every
/// instance of a service the same `Arc`), and [`Tags`] are packed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Instance {
    /// Logical service name (what clients resolve). Non-empty; each backend
    /// refuses what it cannot store, with
    /// [`Error::InvalidInstance`](crate::Error::InvalidInstance) before any
    /// request: etcd a `/` (it separates the key's parts), Consul an empty,
    /// `.` or `..` part between `/`s, Kubernetes anything but an RFC 1035
    /// label. Shared: cloning it copies no text.
    pub service: Arc<str>,
    /// Address clients connect to.
    pub address: SocketAddr,
    /// Relative load-balancing weight; `0` takes the instance out of rotation.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Free-form metadata (zone, version, cluster...).
    #[serde(default)]
    pub tags: Tags,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl Instance {
    /// An instance of `service` at `address` with the default weight and no
    /// tags. `service` is a `&str` or a `String` (copied into a new
    /// `Arc<str>`; a `&String` goes as `.as_str()`), or an `Arc<str>`,
    /// shared:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use rpc_ext_registry::Instance;
    ///
    /// let echo: Arc<str> = "echo".into();
    /// let a = Instance::new(echo.clone(), "10.0.0.1:8080".parse().unwrap());
    /// let b = Instance::new(echo.clone(), "10.0.0.2:8080".parse().unwrap());
    /// assert!(Arc::ptr_eq(&a.service, &b.service));
    /// ```
    #[must_use]
    pub fn new(service: impl Into<Arc<str>>, address: SocketAddr) -> Self {
        Self {
            service: service.into(),
            address,
            weight: DEFAULT_WEIGHT,
            tags: Tags::new(),
        }
    }

    /// Sets the load-balancing weight.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets one tag (replacing its value if set).
    #[must_use]
    pub fn with_tag(mut self, key: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.tags.insert(key, value);
        self
    }

    /// What every backend needs: a name and a routable address. What a
    /// name may contain beyond that is each backend's rule (etcd keys, Consul
    /// URL paths, Kubernetes labels), checked by that backend.
    ///
    /// A backend calls it in `register`, after
    /// [`advertise_address`](crate::advertise_address):
    ///
    /// ```
    /// use rpc_ext_registry::Instance;
    ///
    /// assert!(Instance::new("echo", "10.0.0.7:8080".parse().unwrap()).validate().is_ok());
    /// assert!(Instance::new("echo", "0.0.0.0:8080".parse().unwrap()).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), crate::Error> {
        if self.service.is_empty() {
            return Err(crate::Error::InvalidInstance(
                "service name must be non-empty".to_owned(),
            ));
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

/// FNV-1a of `text`: a hash fixed here rather than the standard library's
/// (whose algorithm may change between Rust versions), so that every build
/// and version of this crate derives the same backend names from an
/// instance, and a successor process finds its predecessor's entry.
#[cfg(any(feature = "consul", feature = "k8s"))]
pub(crate) fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A random 128-bit registration id (32 lowercase hex digits), telling one
/// registration of an instance from a later one of the same instance (a
/// restarted process), so that deregistering the first cannot remove the
/// second.
///
/// Drawn from the standard library's randomly keyed hasher (the process-wide
/// random seed, bumped per `RandomState`), mixed with the time, the process
/// id and a counter, so that no extra random-number dependency is needed.
///
/// Public in [`kit`](crate::kit): a backend whose keeper deletes only what it
/// wrote stores one in its entry.
///
/// ```
/// let (a, b) = (rpc_ext_registry::kit::registration_id(), rpc_ext_registry::kit::registration_id());
/// assert_eq!(a.len(), 32);
/// assert_ne!(a, b);
/// ```
#[must_use]
pub fn registration_id() -> String {
    use std::{
        hash::BuildHasher,
        sync::atomic::{AtomicU64, Ordering},
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now();
    let half = |salt: u8| {
        std::collections::hash_map::RandomState::new().hash_one((
            salt,
            count,
            now,
            std::process::id(),
        ))
    };
    format!("{:016x}{:016x}", half(0), half(1))
}

#[cfg(all(test, any(feature = "consul", feature = "k8s")))]
mod tests {
    #[test]
    fn registration_ids_are_distinct_hex() {
        let a = super::registration_id();
        let b = super::registration_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn the_stable_hash_is_fnv_1a() {
        // The published FNV-1a 64 test vectors: the hash must never change,
        // or a new version would not find the entries an older one wrote.
        assert_eq!(super::stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::stable_hash("foobar"), 0x8594_4171_f739_67e8);
    }
}
