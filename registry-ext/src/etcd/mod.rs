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

/// Runs an idempotent etcd request until it succeeds, fails for good, or
/// `timeout` passes. Retrying matters with several members: the client sends
/// each request to one of them, so a request that hit a dead member must be
/// sent again to reach a live one.
async fn with_retry<T, F, Fut>(timeout: std::time::Duration, mut request: F) -> crate::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    use std::time::Duration;
    use tokio::time::Instant;

    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(20);
    loop {
        // One attempt may not eat the whole budget: a member that hangs
        // (partitioned, still electing) must leave time to try another.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = remaining.min(timeout / 3).max(Duration::from_millis(100));
        match tokio::time::timeout(attempt, request()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) if is_transient(&error) && Instant::now() + delay < deadline => {
                tracing::debug!(%error, ?delay, "etcd request failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Ok(Err(error)) => return Err(etcd_error(error)),
            Err(_) if Instant::now() < deadline => {
                tracing::debug!(?attempt, "etcd request timed out; retrying");
            }
            Err(_) => {
                return Err(crate::Error::Timeout {
                    backend: BACKEND,
                    timeout,
                })
            }
        }
    }
}

/// Errors that another try (possibly on another member) may not hit.
fn is_transient(error: &etcd_client::Error) -> bool {
    use tonic::Code;
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Aborted
        ),
        _ => false,
    }
}

/// `<prefix>/<service>/`: the range that holds every instance of `service`.
fn service_prefix(prefix: &str, service: &str) -> String {
    format!("{}/{service}/", prefix.trim_end_matches('/'))
}
