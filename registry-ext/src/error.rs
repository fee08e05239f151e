//! The error type of every registry and resolver.

/// A boxed error from a backend client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong while registering, deregistering or resolving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend could not be reached or refused the request.
    #[error("{backend} request failed: {source}")]
    Backend {
        /// Which backend (`etcd`, `consul`, `k8s`, `memory`).
        backend: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The instance cannot be registered as given.
    #[error("invalid instance: {0}")]
    InvalidInstance(String),
    /// A value stored in the backend could not be decoded.
    #[error("cannot decode instance at {key}: {reason}")]
    Decode {
        /// Where the value was found.
        key: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The builder was given an unusable option.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The first list of a service failed; the resolver keeps retrying.
    #[error("cannot resolve {service}: {source}")]
    Resolve {
        /// The service asked for.
        service: String,
        /// The backend failure.
        #[source]
        source: std::sync::Arc<Error>,
    },
    /// The backend refused the request for lack of permission: the
    /// credentials are unknown to it, or their policy does not allow the
    /// operation (Consul ACLs: HTTP 403 "Permission denied" or "ACL not
    /// found", or a health answer filtered by ACLs). Retrying does not help
    /// until the credentials or their policy change.
    ///
    /// Kubernetes: an RBAC `403 Forbidden`; `operation` names the missing
    /// permission as `<verb> <resource> in namespace "<ns>"` (`watch
    /// endpointslices.discovery.k8s.io in namespace "prod"`), and
    /// `deploy/kubernetes/rbac.yaml` has the Roles that grant it.
    #[error("{backend} denied {operation}: {reason}")]
    PermissionDenied {
        /// Which backend.
        backend: &'static str,
        /// What was refused (`register`, `TTL pass`, `health query`...).
        operation: String,
        /// The backend's answer.
        reason: String,
    },
    /// The registry or resolver was shut down.
    #[error("the registry task has stopped")]
    Closed,
    /// The backend did not answer in time.
    #[error("{backend} did not answer within {timeout:?}")]
    Timeout {
        /// Which backend.
        backend: &'static str,
        /// The deadline that passed.
        timeout: std::time::Duration,
    },
}

impl Error {
    /// A failed request to `backend`, as backends report their client's
    /// errors.
    ///
    /// ```
    /// let error = rpc_ext_registry::Error::backend("zookeeper", "connection refused");
    /// assert_eq!(error.to_string(), "zookeeper request failed: connection refused");
    /// ```
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            backend,
            source: source.into(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
