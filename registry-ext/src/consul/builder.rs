//! Options shared by the Consul registry and resolver.

use std::{marker::PhantomData, net::IpAddr, time::Duration};

use super::{api::Api, ConsulRegistry, ConsulResolver};
use crate::{health::RegistryHealth, Error, Result};

/// Agent address used when neither the builder nor `CONSUL_HTTP_ADDR` set one.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";
/// TTL of the default health check.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The health check registered with each instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Check {
    /// A TTL check this crate keeps passing every third of `ttl` (default).
    Ttl {
        /// How long the agent waits for a pass before marking it critical.
        ttl: Duration,
    },
    /// The agent GETs this URL every `interval`; 2xx is passing.
    Http {
        /// The URL to probe.
        url: String,
        /// Probe interval.
        interval: Duration,
    },
    /// The agent calls the gRPC health service at `target` (`host:port` or
    /// `host:port/service`) every `interval`.
    Grpc {
        /// The gRPC health target.
        target: String,
        /// Probe interval.
        interval: Duration,
    },
    /// The agent opens a TCP connection to `target` every `interval`.
    Tcp {
        /// `host:port` to connect to.
        target: String,
        /// Probe interval.
        interval: Duration,
    },
}

/// Builds a [`ConsulRegistry`] or a [`ConsulResolver`]; start from their
/// `builder()`.
///
/// ```
/// use std::time::Duration;
/// use rpc_ext_registry::consul::{Check, ConsulRegistry};
///
/// let registry = ConsulRegistry::builder()
///     .address("http://127.0.0.1:8500")
///     .token("secret")
///     .namespace("team-a")
///     .check(Check::Ttl { ttl: Duration::from_secs(15) })
///     .deregister_critical_after(Duration::from_secs(60))
///     .build()
///     .unwrap();
/// # let _ = registry;
/// ```
#[must_use]
#[derive(Clone)]
pub struct ConsulBuilder<T> {
    pub(crate) address: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) datacenter: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) partition: Option<String>,
    pub(crate) request_timeout: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) check: Check,
    pub(crate) deregister_critical_after: Duration,
    pub(crate) advertise_ip: Option<IpAddr>,
    pub(crate) wait: Duration,
    pub(crate) tags: Vec<String>,
    pub(crate) health: Option<RegistryHealth>,
    target: PhantomData<fn() -> T>,
}

/// Shows every option but the ACL token, which is only said to be set.
impl<T> std::fmt::Debug for ConsulBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulBuilder")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("namespace", &self.namespace)
            .field("partition", &self.partition)
            .field("request_timeout", &self.request_timeout)
            .field("max_backoff", &self.max_backoff)
            .field("check", &self.check)
            .field("deregister_critical_after", &self.deregister_critical_after)
            .field("advertise_ip", &self.advertise_ip)
            .field("wait", &self.wait)
            .field("tags", &self.tags)
            .field("health", &self.health)
            .finish()
    }
}

impl<T> ConsulBuilder<T> {
    pub(crate) fn new() -> Self {
        Self {
            address: None,
            token: None,
            datacenter: None,
            namespace: None,
            partition: None,
            request_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            check: Check::Ttl { ttl: DEFAULT_TTL },
            deregister_critical_after: Duration::from_secs(60),
            advertise_ip: None,
            wait: Duration::from_secs(30),
            tags: Vec::new(),
            health: None,
            target: PhantomData,
        }
    }

    /// The agent's HTTP address (else `CONSUL_HTTP_ADDR`, else [`DEFAULT_ADDRESS`]).
    /// `https://` addresses use TLS with the system's roots.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// ACL token (else `CONSUL_HTTP_TOKEN`). The registry needs
    /// `service:write` on the services it registers; the resolver
    /// `service:read` on the services and `node:read` on their nodes. A
    /// refusal is [`Error::PermissionDenied`].
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Namespace (Consul Enterprise).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Admin partition (Consul Enterprise).
    pub fn partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// Timeout of one ordinary request (default 5 s); blocking queries get
    /// their wait time and its jitter (wait/16) on top.
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
    /// use rpc_ext_registry::{consul::{ConsulRegistry, ConsulResolver}, health::RegistryHealth};
    ///
    /// let health = RegistryHealth::new();
    /// let registry = ConsulRegistry::builder().health(health.clone()).build().unwrap();
    /// let resolver = ConsulResolver::builder().health(health.clone()).build().unwrap();
    /// assert!(health.snapshot().registrations.is_empty());
    /// # let _ = (registry, resolver);
    /// ```
    pub fn health(mut self, health: RegistryHealth) -> Self {
        self.health = Some(health);
        self
    }

    pub(crate) fn api(&self) -> Result<Api> {
        let address = self
            .address
            .clone()
            .or_else(|| std::env::var("CONSUL_HTTP_ADDR").ok())
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_owned());
        let address = if address.contains("://") {
            address
        } else {
            format!("http://{address}")
        };
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok())
            .filter(|t| !t.is_empty());
        Api::new(self, address, token)
    }
}

impl ConsulBuilder<ConsulRegistry> {
    /// The health check of each instance (default a 10 s TTL check).
    pub fn check(mut self, check: Check) -> Self {
        self.check = check;
        self
    }

    /// How long a critical instance stays before the agent removes it
    /// (`DeregisterCriticalServiceAfter`, default 60 s; Consul's minimum is 1 min).
    pub fn deregister_critical_after(mut self, after: Duration) -> Self {
        self.deregister_critical_after = after;
        self
    }

    /// The IP to advertise for instances registered on `0.0.0.0` or `::`.
    pub fn advertise_ip(mut self, ip: IpAddr) -> Self {
        self.advertise_ip = Some(ip);
        self
    }

    /// Creates the registry (no request is made yet).
    pub fn build(self) -> Result<ConsulRegistry> {
        if let Check::Ttl { ttl } = &self.check {
            if *ttl < Duration::from_secs(1) {
                return Err(Error::Config(format!("TTL {ttl:?} is below one second")));
            }
        }
        Ok(ConsulRegistry::new(self.api()?, self))
    }
}

impl ConsulBuilder<ConsulResolver> {
    /// Datacenter to resolve in (default: the agent's).
    pub fn datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }

    /// Only instances carrying every one of these Consul tags: `key=value`
    /// for the tags of instances registered by this crate. Consul compares
    /// tags without regard to case (`zone=a` also selects `Zone=A`).
    pub fn tags<I: Into<String>>(mut self, tags: impl IntoIterator<Item = I>) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// How long one blocking query may wait for a change (default 30 s),
    /// kept within 1 s and 10 minutes (the server's limit): the server
    /// reads a zero wait as its default of 5 minutes, so `wait(0)` and
    /// sub-second waits are sent as 1 s. The server adds up to 1/16 of the
    /// wait in jitter; the request timeout covers it.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Creates the resolver (no request is made yet).
    pub fn build(self) -> Result<ConsulResolver> {
        Ok(ConsulResolver::new(self.api()?, self))
    }
}

#[cfg(test)]
mod tests {
    use crate::consul::{ConsulRegistry, ConsulResolver};

    #[test]
    fn debug_does_not_show_the_token() {
        let registry = format!("{:?}", ConsulRegistry::builder().token("s3cr3t-acl-token"));
        let resolver = format!(
            "{:?}",
            ConsulResolver::builder()
                .address("http://consul:8500")
                .token("s3cr3t-acl-token")
        );
        for shown in [registry, resolver] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        assert!(format!("{:?}", ConsulResolver::builder()).contains("token: None"));
    }
}
