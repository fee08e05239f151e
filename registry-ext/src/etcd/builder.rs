//! Connection and behaviour options shared by the etcd registry and resolver.

use std::{marker::PhantomData, net::IpAddr, sync::Arc, time::Duration};

use etcd_client::{Client, ConnectOptions};

use super::{EtcdRegistry, EtcdResolver};
use crate::{health::RegistryHealth, Error, Result};

/// Key prefix used when none is set.
pub const DEFAULT_PREFIX: &str = "/registry-ext";
/// Lease time-to-live used when none is set.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// How long a resolver keeps the last known instances after etcd lost its
/// data, when none is set: one default lease TTL.
pub const DEFAULT_DATA_LOSS_GRACE: Duration = DEFAULT_TTL;

/// Builds an [`EtcdRegistry`] or an [`EtcdResolver`].
///
/// Start from [`EtcdRegistry::builder`] or [`EtcdResolver::builder`]. The
/// connection is lazy: building succeeds while etcd is down (unless
/// credentials must be checked), and every request retries with backoff.
///
/// ```no_run
/// use std::time::Duration;
/// use rpc_ext_registry::etcd::EtcdRegistry;
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = EtcdRegistry::builder(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
///     .prefix("/services")
///     .ttl(Duration::from_secs(15))
///     .auth("user", "password")
///     .connect_timeout(Duration::from_secs(3))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use]
#[derive(Clone)]
pub struct EtcdBuilder<T> {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) ttl: Duration,
    pub(crate) auth: Option<(String, String)>,
    #[cfg(feature = "etcd-tls")]
    pub(crate) tls: Option<etcd_client::TlsOptions>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) advertise_ip: Option<IpAddr>,
    pub(crate) data_loss_grace: Duration,
    pub(crate) health: Option<RegistryHealth>,
    target: PhantomData<fn() -> T>,
}

/// Shows every option but the password, which is only said to be set, and
/// the TLS settings (they may hold a private key), only said to be present.
impl<T> std::fmt::Debug for EtcdBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("EtcdBuilder");
        debug
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field(
                "auth",
                &self.auth.as_ref().map(|(user, _)| (user, "<redacted>")),
            );
        #[cfg(feature = "etcd-tls")]
        debug.field("tls", &self.tls.as_ref().map(|_| "<set>"));
        debug
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("advertise_ip", &self.advertise_ip)
            .field("data_loss_grace", &self.data_loss_grace)
            .field("health", &self.health)
            .finish()
    }
}

impl<T> EtcdBuilder<T> {
    pub(crate) fn new<E: AsRef<str>>(endpoints: impl IntoIterator<Item = E>) -> Self {
        Self {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.as_ref().to_owned())
                .collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            ttl: DEFAULT_TTL,
            auth: None,
            #[cfg(feature = "etcd-tls")]
            tls: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            advertise_ip: None,
            data_loss_grace: DEFAULT_DATA_LOSS_GRACE,
            health: None,
            target: PhantomData,
        }
    }

    /// Key prefix under which services live (default [`DEFAULT_PREFIX`]).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// User name and password for etcd authentication.
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some((user.into(), password.into()));
        self
    }

    /// TLS settings (feature `etcd-tls`); endpoints then use `https://`.
    #[cfg(feature = "etcd-tls")]
    pub fn tls(mut self, tls: etcd_client::TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long one connection attempt may take (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one request may take (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Longest wait between retries after failures (default 5 s).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// Reports the health of the registrations or subscriptions into
    /// `health` (default: a handle of this registry's or resolver's own,
    /// see its `health()`), so that several can be read at once.
    ///
    /// ```
    /// use rpc_ext_registry::{etcd::{EtcdRegistry, EtcdResolver}, health::RegistryHealth};
    ///
    /// let health = RegistryHealth::new();
    /// let registry = EtcdRegistry::builder(["http://127.0.0.1:2379"]).health(health.clone());
    /// let resolver = EtcdResolver::builder(["http://127.0.0.1:2379"]).health(health.clone());
    /// // build both; `health.snapshot()` then reads every entry of both.
    /// # let _ = (registry, resolver);
    /// ```
    pub fn health(mut self, health: RegistryHealth) -> Self {
        self.health = Some(health);
        self
    }

    fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(Error::Config("no etcd endpoints given".into()));
        }
        if self.ttl < Duration::from_secs(1) {
            return Err(Error::Config(format!(
                "TTL {:?} is below etcd's one-second granularity",
                self.ttl
            )));
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Client> {
        self.validate()?;
        // HTTP/2 pings find a dead member even when no request is in flight
        // (a watch or keep-alive stream can otherwise hang on a lost peer).
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            // A member cut off from the leader answers at once instead of
            // holding the request until its own timeout.
            .with_require_leader(true);
        if let Some((user, password)) = &self.auth {
            options = options.with_user(user.clone(), password.clone());
        }
        #[cfg(feature = "etcd-tls")]
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        Client::connect(&self.endpoints, Some(options))
            .await
            .map_err(super::etcd_error)
    }

    pub(crate) fn prefix_arc(&self) -> Arc<str> {
        self.prefix.trim_end_matches('/').into()
    }
}

impl EtcdBuilder<EtcdRegistry> {
    /// Lease time-to-live (default 10 s, at least 1 s). A crashed instance
    /// disappears from resolvers at most this long after its last keep-alive.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The IP to advertise for instances registered on `0.0.0.0` or `::`
    /// (default: `REGISTRY_EXT_ADVERTISE_IP`, else the first non-loopback address).
    pub fn advertise_ip(mut self, ip: IpAddr) -> Self {
        self.advertise_ip = Some(ip);
        self
    }

    /// Connects and returns the registry.
    pub async fn build(self) -> Result<EtcdRegistry> {
        let client = self.connect().await?;
        Ok(EtcdRegistry::new(client, self))
    }
}

impl EtcdBuilder<EtcdResolver> {
    /// How long the last known instances stay after etcd lost its data
    /// (default [`DEFAULT_DATA_LOSS_GRACE`], 10 s: one default lease TTL).
    ///
    /// Data loss (etcd's revision going backwards, or another cluster id
    /// answering) makes the resolver list the service again. Registries
    /// write their registrations again once they notice their lease is gone,
    /// which takes up to a keep-alive interval; meanwhile the new listing is
    /// empty although the instances are healthy. Rather than publish that
    /// empty set, the resolver keeps the last known instances until some
    /// instance is back (the new set is then published at once) or this
    /// long has passed (then an empty set is published, if it still is).
    /// Set it to about the registries' lease TTL; `Duration::ZERO` publishes
    /// the empty listing at once. Deletions seen outside data loss are
    /// always published at once.
    pub fn data_loss_grace(mut self, grace: Duration) -> Self {
        self.data_loss_grace = grace;
        self
    }

    /// Connects and returns the resolver.
    pub async fn build(self) -> Result<EtcdResolver> {
        let client = self.connect().await?;
        Ok(EtcdResolver::new(client, self))
    }
}

#[cfg(test)]
mod tests {
    use crate::etcd::{EtcdRegistry, EtcdResolver};

    #[test]
    fn debug_does_not_show_the_password() {
        let registry = format!(
            "{:?}",
            EtcdRegistry::builder(["http://127.0.0.1:2379"]).auth("alice", "s3cr3t-password")
        );
        let resolver = format!(
            "{:?}",
            EtcdResolver::builder(["http://127.0.0.1:2379"]).auth("alice", "s3cr3t-password")
        );
        for shown in [registry, resolver] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("alice"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }
}
