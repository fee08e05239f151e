//! The options of a [`MeshAware`] wrapper.

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Arc, time::Duration};

use rpc_ext_core::mesh::{Mesh, MeshMode};

use super::{
    follower::Timing,
    target::{namespace_from, Naming, DEFAULT_CLUSTER_DOMAIN, SERVICE_ACCOUNT_NAMESPACE},
    MeshAware, MeshSide, BACKEND,
};
use crate::{health::RegistryHealth, kit::Subscriptions};

/// How often mesh mode looks a service's name up again, unless set.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

/// The shortest refresh period, retry cap and lookup timeout taken:
/// shorter ones would only load the DNS server (a lookup cut short is
/// waited for anyway before the next one starts).
const MIN_PERIOD: Duration = Duration::from_millis(100);

type Env = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Builds a [`MeshAware`]; start from [`MeshAware::builder`].
///
/// ```
/// use std::time::Duration;
/// use rpc_ext_registry::{mesh::{MeshAware, MeshMode}, MemoryRegistry};
///
/// let resolver = MeshAware::builder(MemoryRegistry::new())
///     .mode(MeshMode::On)
///     .namespace("prod")
///     .cluster_domain("cluster.local")
///     .port(50051)
///     .named_port("grpc", 50051)
///     .route("billing", "k8s://billing.payments:8443")
///     .route("ledger", "ledger.example.com:443")
///     .refresh(Duration::from_secs(60))
///     .build();
/// assert!(resolver.mesh().enabled);
/// ```
#[must_use]
pub struct MeshAwareBuilder<B> {
    backend: B,
    mode: MeshMode,
    env: Option<Env>,
    namespace: Option<String>,
    cluster_domain: String,
    port: Option<u16>,
    named_ports: BTreeMap<String, u16>,
    routes: BTreeMap<String, String>,
    refresh: Duration,
    max_backoff: Duration,
    lookup_timeout: Duration,
    advertise_ip: Option<IpAddr>,
    health: Option<RegistryHealth>,
}

impl<B> std::fmt::Debug for MeshAwareBuilder<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshAwareBuilder")
            .field("mode", &self.mode)
            .field("env", &self.env.as_ref().map(|_| "<set>"))
            .field("namespace", &self.namespace)
            .field("cluster_domain", &self.cluster_domain)
            .field("port", &self.port)
            .field("named_ports", &self.named_ports)
            .field("routes", &self.routes)
            .field("refresh", &self.refresh)
            .field("max_backoff", &self.max_backoff)
            .field("lookup_timeout", &self.lookup_timeout)
            .field("advertise_ip", &self.advertise_ip)
            .finish_non_exhaustive()
    }
}

impl<B> MeshAwareBuilder<B> {
    pub(super) fn new(backend: B) -> Self {
        Self {
            backend,
            mode: MeshMode::Auto,
            env: None,
            namespace: None,
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_owned(),
            port: None,
            named_ports: BTreeMap::new(),
            routes: BTreeMap::new(),
            refresh: DEFAULT_REFRESH,
            max_backoff: Duration::from_secs(5),
            lookup_timeout: Duration::from_secs(5),
            advertise_ip: None,
            health: None,
        }
    }

    /// Mesh mode on, off, or decided by `RPC_EXT_MESH` and detection
    /// ([`MeshMode::Auto`], the default); see [`rpc_ext_core::mesh`].
    ///
    /// This wrapper decides on its own, as rpc-ext-tracing's
    /// `RpcTracingBuilder` does (it forwards `x-request-id` in mesh mode):
    /// with `RPC_EXT_MESH` or detection deciding, both agree, but a mode set
    /// here does not set the tracing builder's (nor the reverse). Set
    /// `RPC_EXT_MESH`, or pass the same mode to both.
    pub fn mode(mut self, mode: MeshMode) -> Self {
        self.mode = mode;
        self
    }

    /// Reads `RPC_EXT_MESH`, `RPC_EXT_POD_ANNOTATIONS` and `POD_NAMESPACE`
    /// through `env` instead of the process environment: for tests, and
    /// for programs with a configuration of their own.
    ///
    /// ```
    /// use rpc_ext_registry::{mesh::MeshAware, MemoryRegistry};
    ///
    /// let registry = MeshAware::builder(MemoryRegistry::new())
    ///     .env(|name| (name == "RPC_EXT_MESH").then(|| "on".to_owned()))
    ///     .build();
    /// assert_eq!(registry.mesh().reason, "RPC_EXT_MESH");
    /// ```
    pub fn env(mut self, env: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.env = Some(Box::new(env));
        self
    }

    /// The namespace of the Services that names without a namespace stand
    /// for, `echo` or `k8s://echo:grpc` (default: `POD_NAMESPACE`, else the
    /// pod's service-account namespace file, else `default`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The cluster's DNS domain (default `cluster.local`; a trailing dot is
    /// dropped).
    pub fn cluster_domain(mut self, domain: impl Into<String>) -> Self {
        let domain = domain.into();
        self.cluster_domain = domain.strip_suffix('.').unwrap_or(&domain).to_owned();
        self
    }

    /// The port of names given without a number: with no port, or with a
    /// port name that [`named_port`](Self::named_port) does not map
    /// (default: none, and such a name is an
    /// [`Error::Config`](crate::Error::Config) when resolved).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The number of the port named `name` in names such as
    /// `k8s://echo.prod:grpc`: the Service port of that name (mesh mode
    /// reads no Service, so it cannot look the name up). Names it does not
    /// map take [`port`](Self::port).
    ///
    /// ```
    /// use rpc_ext_registry::{mesh::{MeshAware, MeshMode}, MemoryRegistry};
    ///
    /// // "k8s://echo.prod:grpc" resolves to echo.prod.svc.cluster.local:50051
    /// let resolver = MeshAware::builder(MemoryRegistry::new())
    ///     .mode(MeshMode::On)
    ///     .named_port("grpc", 50051)
    ///     .build();
    /// # let _ = resolver;
    /// ```
    pub fn named_port(mut self, name: impl Into<String>, port: u16) -> Self {
        self.named_ports.insert(name.into(), port);
        self
    }

    /// Sends `service` to `target` instead of what the name itself says:
    /// a `k8s://name[.namespace][:port]` target, or `host` or `host:port`,
    /// the host used as it is (looked up in DNS; with a trailing dot, as a
    /// fully qualified name). The last route of a service wins.
    pub fn route(mut self, service: impl Into<String>, target: impl Into<String>) -> Self {
        self.routes.insert(service.into(), target.into());
        self
    }

    /// How often a followed name is looked up again (default
    /// [`DEFAULT_REFRESH`], at least 100 ms).
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every;
        self
    }

    /// Longest wait between lookups after failures (default 5 s).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// How long one DNS lookup may take (default 5 s, at least 100 ms); a
    /// slower one is an [`Error::Timeout`](crate::Error::Timeout). The
    /// system resolver cannot be interrupted: the lookup goes on, and the
    /// next attempt waits for it rather than starting another.
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// The IP to show for instances registered on an unspecified address
    /// in mesh mode (default: as
    /// [`advertise_address`](crate::advertise_address) picks).
    pub fn advertise_ip(mut self, ip: IpAddr) -> Self {
        self.advertise_ip = Some(ip);
        self
    }

    /// Reports mesh mode's registrations and subscriptions into `health`
    /// (default: a handle of the wrapper's own, see
    /// [`MeshAware::health`]).
    pub fn health(mut self, health: RegistryHealth) -> Self {
        self.health = Some(health);
        self
    }

    /// Decides mesh mode once ([`Mesh::resolve_with`]) and logs the
    /// decision and its reason.
    pub fn build(self) -> MeshAware<B> {
        let env = |name: &str| match &self.env {
            Some(env) => env(name),
            None => std::env::var(name).ok(),
        };
        let mesh = Mesh::resolve_with(self.mode, env);
        let health = self.health.clone().unwrap_or_default();
        if !mesh.enabled {
            tracing::info!(
                reason = mesh.reason,
                "mesh mode off: registering and resolving through the backend"
            );
            return MeshAware {
                backend: self.backend,
                mesh,
                health,
                side: None,
            };
        }
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| namespace_from(&env, Path::new(SERVICE_ACCOUNT_NAMESPACE)));
        tracing::info!(
            reason = mesh.reason,
            %namespace,
            cluster_domain = %self.cluster_domain,
            "mesh mode on: the sidecar discovers; nothing is registered, names resolve to Service DNS names"
        );
        let side = MeshSide {
            naming: Naming {
                namespace,
                cluster_domain: self.cluster_domain,
                default_port: self.port,
                named_ports: self.named_ports,
                routes: self.routes,
            },
            timing: Timing {
                refresh: self.refresh.max(MIN_PERIOD),
                max_backoff: self.max_backoff.max(MIN_PERIOD),
                lookup_timeout: self.lookup_timeout.max(MIN_PERIOD),
            },
            advertise_ip: self.advertise_ip,
            subscriptions: Subscriptions::new(BACKEND, health.clone()),
            health: health.clone(),
        };
        MeshAware {
            backend: self.backend,
            mesh,
            health,
            side: Some(Arc::new(side)),
        }
    }
}
