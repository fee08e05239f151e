//! Connection and behaviour options shared by the ZooKeeper registry and
//! resolver.

use std::{marker::PhantomData, net::IpAddr, time::Duration};

use super::{path::normalize_prefix, session::SessionSource, ZooKeeperRegistry, ZooKeeperResolver};
use crate::{health::RegistryHealth, Error, Result};

/// Path under which services live when none is set: the etcd backend's
/// key prefix, so that both backends lay services out alike.
pub const DEFAULT_PREFIX: &str = "/registry-ext";
/// Session timeout asked for when none is set. A crashed instance leaves
/// resolvers about this long after its last contact with ZooKeeper, as an
/// etcd registration does after its default lease TTL.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a [`ZooKeeperRegistry`] or a [`ZooKeeperResolver`].
///
/// Start from [`ZooKeeperRegistry::builder`] or
/// [`ZooKeeperResolver::builder`] with a connect string (`host:port`
/// pairs separated by commas, optionally followed by a chroot:
/// `zk1:2181,zk2:2181/team-a`). Building does no I/O: the session is
/// opened by the first registration or subscription, and opened again
/// whenever it ended.
///
/// ```no_run
/// use std::time::Duration;
/// use rpc_ext_registry::zookeeper::ZooKeeperRegistry;
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = ZooKeeperRegistry::builder("10.0.0.1:2181,10.0.0.2:2181,10.0.0.3:2181/team-a")
///     .prefix("/services")
///     .session_timeout(Duration::from_secs(15))
///     .auth("user", "password")
///     .connect_timeout(Duration::from_secs(3))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use]
#[derive(Clone)]
pub struct ZooKeeperBuilder<T> {
    pub(super) connect_string: String,
    pub(super) prefix: String,
    pub(super) session_timeout: Duration,
    pub(super) auth: Option<(String, String)>,
    pub(super) connect_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) max_backoff: Duration,
    pub(super) advertise_ip: Option<IpAddr>,
    pub(super) health: Option<RegistryHealth>,
    target: PhantomData<fn() -> T>,
}

/// Shows every option but the password, which is only said to be set.
impl<T> std::fmt::Debug for ZooKeeperBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperBuilder")
            .field("connect_string", &self.connect_string)
            .field("prefix", &self.prefix)
            .field("session_timeout", &self.session_timeout)
            .field(
                "auth",
                &self.auth.as_ref().map(|(user, _)| (user, "<redacted>")),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("advertise_ip", &self.advertise_ip)
            .field("health", &self.health)
            .finish()
    }
}

impl<T> ZooKeeperBuilder<T> {
    pub(super) fn new(connect_string: impl Into<String>) -> Self {
        Self {
            connect_string: connect_string.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            auth: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            advertise_ip: None,
            health: None,
            target: PhantomData,
        }
    }

    /// Path under which services live (default [`DEFAULT_PREFIX`]); `/`
    /// puts services at the root (under the chroot, if any).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Session timeout to ask for (default [`DEFAULT_SESSION_TIMEOUT`]).
    /// The server grants a value within its own bounds (by default 2 to
    /// 20 of its ticks, 4 s to 40 s). A crashed registrant's instances
    /// leave resolvers about one session timeout after it stopped talking
    /// to ZooKeeper; a connection loss shorter than it changes nothing.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Authenticates the session with the `digest` scheme as `user`. Nodes
    /// the registry creates are then readable and writable only by
    /// sessions authenticated as the same user (see the
    /// [module documentation](super#authentication)).
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some((user.into(), password.into()));
        self
    }

    /// How long opening a session may take (default 3 s).
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
    /// use rpc_ext_registry::{
    ///     health::RegistryHealth,
    ///     zookeeper::{ZooKeeperRegistry, ZooKeeperResolver},
    /// };
    ///
    /// let health = RegistryHealth::new();
    /// let registry = ZooKeeperRegistry::builder("127.0.0.1:2181").health(health.clone());
    /// let resolver = ZooKeeperResolver::builder("127.0.0.1:2181").health(health.clone());
    /// // build both; `health.snapshot()` then reads every entry of both.
    /// # let _ = (registry, resolver);
    /// ```
    pub fn health(mut self, health: RegistryHealth) -> Self {
        self.health = Some(health);
        self
    }

    /// Checks the options and makes the session source they describe.
    pub(super) fn sessions(&self) -> Result<SessionSource> {
        if self.connect_string.trim().is_empty() {
            return Err(Error::Config("empty ZooKeeper connect string".into()));
        }
        if self.session_timeout < Duration::from_millis(100) {
            return Err(Error::Config(format!(
                "session timeout {:?} is too short (ZooKeeper grants at least two ticks)",
                self.session_timeout
            )));
        }
        Ok(SessionSource::new(
            self.connect_string.clone(),
            self.session_timeout,
            self.connect_timeout,
            self.auth
                .as_ref()
                .map(|(user, password)| format!("{user}:{password}").into_bytes()),
        ))
    }

    /// The prefix, checked and without its trailing `/`.
    pub(super) fn checked_prefix(&self) -> Result<String> {
        normalize_prefix(&self.prefix)
    }
}

impl ZooKeeperBuilder<ZooKeeperRegistry> {
    /// The IP to advertise for instances registered on `0.0.0.0` or `::`
    /// (default: `REGISTRY_EXT_ADVERTISE_IP`, else the first non-loopback address).
    pub fn advertise_ip(mut self, ip: IpAddr) -> Self {
        self.advertise_ip = Some(ip);
        self
    }

    /// Checks the options and returns the registry (no I/O: the session is
    /// opened by the first registration).
    pub async fn build(self) -> Result<ZooKeeperRegistry> {
        ZooKeeperRegistry::new(self)
    }
}

impl ZooKeeperBuilder<ZooKeeperResolver> {
    /// Checks the options and returns the resolver (no I/O: the session is
    /// opened by the first subscription).
    pub async fn build(self) -> Result<ZooKeeperResolver> {
        ZooKeeperResolver::new(self)
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        zookeeper::{ZooKeeperRegistry, ZooKeeperResolver},
        Error,
    };

    #[test]
    fn debug_does_not_show_the_password() {
        let registry = format!(
            "{:?}",
            ZooKeeperRegistry::builder("127.0.0.1:2181").auth("alice", "s3cr3t-password")
        );
        let resolver = format!(
            "{:?}",
            ZooKeeperResolver::builder("127.0.0.1:2181").auth("alice", "s3cr3t-password")
        );
        for shown in [registry, resolver] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("alice"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }

    #[tokio::test]
    async fn bad_options_fail_the_build_without_a_server() {
        let no_servers = ZooKeeperRegistry::builder(" ").build().await;
        assert!(
            matches!(no_servers, Err(Error::Config(_))),
            "{no_servers:?}"
        );
        let relative = ZooKeeperResolver::builder("127.0.0.1:2181")
            .prefix("services")
            .build()
            .await;
        assert!(matches!(relative, Err(Error::Config(_))), "{relative:?}");
        // Nothing listens on port 1: building still succeeds (no I/O).
        assert!(ZooKeeperRegistry::builder("127.0.0.1:1")
            .build()
            .await
            .is_ok());
    }
}
