//! etcd v3 backend (feature `etcd`).
//!
//! # Key layout
//!
//! Each instance is one key, attached to a lease owned by its registration:
//!
//! ```text
//! <prefix>/<service>/<ip>:<port>  =>  {"version":1,"service":"echo","address":"10.0.0.7:8080","weight":10,"tags":{}}
//! ```
//!
//! The default prefix is [`DEFAULT_PREFIX`]. The value is JSON with a
//! `version` field so that the layout can evolve; values of unknown versions
//! or that do not parse are skipped with a warning by the resolver.
//!
//! # Example
//!
//! ```no_run
//! use registry_ext::{etcd::{EtcdRegistry, EtcdResolver}, Instance, Registry, Resolver};
//!
//! # #[tokio::main] async fn main() -> registry_ext::Result<()> {
//! let registry = EtcdRegistry::builder(["http://127.0.0.1:2379"]).build().await?;
//! let registration = registry
//!     .register(Instance::new("echo", "0.0.0.0:50051".parse().unwrap()))
//!     .await?;
//!
//! let resolver = EtcdResolver::builder(["http://127.0.0.1:2379"]).build().await?;
//! let instances = resolver.resolve("echo").await?;
//! println!("{instances:?}");
//!
//! registration.deregister().await?;
//! # Ok(()) }
//! ```

mod builder;
mod codec;
mod registry;
mod resolver;

pub use builder::{EtcdBuilder, DEFAULT_PREFIX, DEFAULT_TTL};
pub use codec::{decode_instance, encode_instance, VALUE_VERSION};
pub use registry::EtcdRegistry;
pub use resolver::EtcdResolver;

pub(crate) const BACKEND: &str = "etcd";

fn etcd_error(error: etcd_client::Error) -> crate::Error {
    crate::Error::backend(BACKEND, error)
}

/// Runs one etcd request with a deadline, so a hung member cannot hang the caller.
async fn with_timeout<T>(
    timeout: std::time::Duration,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> crate::Result<T> {
    match tokio::time::timeout(timeout, request).await {
        Ok(result) => result.map_err(etcd_error),
        Err(_) => Err(crate::Error::Timeout {
            backend: BACKEND,
            timeout,
        }),
    }
}

/// `<prefix>/<service>/`: the range that holds every instance of `service`.
fn service_prefix(prefix: &str, service: &str) -> String {
    format!("{}/{service}/", prefix.trim_end_matches('/'))
}
