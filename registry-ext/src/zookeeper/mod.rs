//! ZooKeeper backend (feature `zookeeper`), for ZooKeeper 3.6 or later.
//!
//! # Node layout
//!
//! Each instance is one ephemeral znode, owned by the registry's session:
//!
//! ```text
//! <prefix>/<service>/<ip>:<port>  =>  {"version":1,"service":"echo","address":"10.0.0.7:8080","weight":10,"tags":{},"owner":"<32 hex digits>"}
//! ```
//!
//! The default prefix is [`DEFAULT_PREFIX`], the etcd backend's, and the
//! value is the JSON the etcd backend stores, plus `owner`: the id of the
//! registry that wrote it (see [`ZooKeeperRegistry`]'s ownership rules),
//! which resolvers ignore. The prefix and service nodes are persistent
//! nodes, created as needed and never deleted. A value that
//! does not decode is skipped with a warning by the resolver.
//!
//! # Sessions
//!
//! A registry holds one ZooKeeper session for all its registrations, and a
//! resolver one for all its services. The session survives a connection
//! loss shorter than the session timeout: the client reconnects (to any
//! server of the connect string) and nothing changes. After 7/5 of the
//! timeout without a server the client gives the session up; the next
//! request first resumes it, since servers that were down all along still
//! hold it, and its nodes with it. Once ZooKeeper has expired the session,
//! its ephemeral nodes are gone: the registry opens a new session, and each
//! registration creates its node again. A resolver does the same, and
//! lists its services again.
//!
//! # Connect string, chroot
//!
//! Builders take a ZooKeeper connect string: `host:port` pairs separated by
//! commas, optionally followed by a chroot (`zk1:2181,zk2:2181/team-a`).
//! With a chroot every path above lives under it. The registry creates the
//! chroot node if it is missing; a resolver finds no instance until then.
//!
//! # Authentication
//!
//! With [`ZooKeeperBuilder::auth`], the session authenticates with the
//! `digest` scheme. The nodes the registry creates (parents and instances)
//! then carry the ACL `auth::` with every permission: only sessions
//! authenticated as the same user may read, list or change them. Registries
//! and resolvers of one deployment therefore share credentials. Without
//! `auth`, nodes are open to anyone (`world:anyone`), as ZooKeeper's own
//! tools create them.
//!
//! # Example
//!
//! ```no_run
//! use rpc_ext_registry::{
//!     zookeeper::{ZooKeeperRegistry, ZooKeeperResolver},
//!     Instance, Registry, Resolver,
//! };
//!
//! # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
//! let registry = ZooKeeperRegistry::builder("127.0.0.1:2181").build().await?;
//! let registration = registry
//!     .register(Instance::new("echo", "0.0.0.0:50051".parse().unwrap()))
//!     .await?;
//!
//! let resolver = ZooKeeperResolver::builder("127.0.0.1:2181").build().await?;
//! let instances = resolver.resolve("echo").await?;
//! println!("{instances:?}");
//!
//! registration.deregister().await?;
//! # Ok(()) }
//! ```

mod builder;
mod keeper;
mod path;
mod registry;
mod resolver;
mod session;
mod writers;

pub use builder::{ZooKeeperBuilder, DEFAULT_PREFIX, DEFAULT_SESSION_TIMEOUT};
pub use registry::ZooKeeperRegistry;
pub use resolver::ZooKeeperResolver;

use std::{future::Future, time::Duration};

use zookeeper_client as zk;

use crate::Error;

pub(crate) const BACKEND: &str = "zookeeper";

/// A ZooKeeper request that failed, with what was asked: the source of
/// [`Error::Backend`] for this backend.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {path}: {source}")]
struct RequestError {
    operation: &'static str,
    path: String,
    #[source]
    source: zk::Error,
}

/// This crate's error for a failed `operation` on `path`: a refusal for
/// lack of permission (ACL, failed authentication), or a backend failure.
fn zk_error(operation: &'static str, path: &str, source: zk::Error) -> Error {
    match source {
        zk::Error::NoAuth | zk::Error::AuthFailed => Error::PermissionDenied {
            backend: BACKEND,
            operation: format!("{operation} {path}"),
            reason: source.to_string(),
        },
        source => Error::backend(
            BACKEND,
            RequestError {
                operation,
                path: path.to_owned(),
                source,
            },
        ),
    }
}

/// Runs one request with a deadline: the client queues requests while it
/// reconnects, which may take up to the session timeout.
async fn within<T>(
    timeout: Duration,
    request: impl Future<Output = Result<T, zk::Error>>,
) -> Result<Result<T, zk::Error>, Error> {
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| Error::Timeout {
            backend: BACKEND,
            timeout,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_permission_errors_and_keep_the_request() {
        let denied = zk_error("create", "/registry-ext/echo", zk::Error::NoAuth);
        assert!(
            matches!(&denied, Error::PermissionDenied { backend: "zookeeper", operation, .. } if operation == "create /registry-ext/echo"),
            "{denied:?}"
        );
        let failed = zk_error("list", "/registry-ext/echo", zk::Error::ConnectionLoss);
        assert_eq!(
            failed.to_string(),
            "zookeeper request failed: list /registry-ext/echo: connection to server has lost"
        );
    }
}
