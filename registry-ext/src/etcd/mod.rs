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
//! use rpc_ext_registry::{etcd::{EtcdRegistry, EtcdResolver}, Instance, Registry, Resolver};
//!
//! # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
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

pub use builder::{EtcdBuilder, DEFAULT_DATA_LOSS_GRACE, DEFAULT_PREFIX, DEFAULT_TTL};
pub use codec::{encode_instance, VALUE_VERSION};
// For the fuzz targets only (see the `fuzzing` feature).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use codec::decode_instance;
pub use registry::EtcdRegistry;
pub use resolver::EtcdResolver;

pub(crate) const BACKEND: &str = "etcd";

fn etcd_error(error: etcd_client::Error) -> crate::Error {
    crate::Error::backend(BACKEND, error)
}

/// Runs an idempotent etcd request until it succeeds, fails for good, or
/// `timeout` passes.
///
/// Retrying is what makes several members useful: the client balances
/// requests over one connection per member, and when a member dies the
/// requests already routed to its connection fail ("operation was canceled:
/// connection closed", Unavailable, ...) before the balancer drops it. Sent
/// again after a short backoff, they land on a surviving member. Only
/// [transient](is_transient) failures are retried; etcd's own refusals (a bad
/// key, a missing permission, an unknown lease) are returned at once.
///
/// Every call site is safe to repeat: puts and the guarded delete write the
/// same thing again, and a lease granted by an attempt whose answer was lost
/// expires by itself after its TTL.
async fn with_retry<T, F, Fut>(timeout: std::time::Duration, mut request: F) -> crate::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    use std::time::Duration;
    use tokio::time::Instant;

    let deadline = Instant::now() + timeout;
    // Short and capped low: the point is to get past a dead connection
    // within one request timeout, not to wait out a long outage (the
    // registry's and resolver's own loops do that with `max_backoff`).
    let mut backoff =
        crate::kit::Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    loop {
        // One attempt may not eat the whole budget: a member that hangs
        // (partitioned, still electing) must leave time to try another.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = remaining.min(timeout / 3).max(Duration::from_millis(100));
        match tokio::time::timeout(attempt, request()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) if is_transient(&error) => {
                let delay = backoff.next_delay();
                if Instant::now() + delay >= deadline {
                    return Err(etcd_error(error));
                }
                tracing::debug!(%error, ?delay, "etcd request failed; retrying");
                tokio::time::sleep(delay).await;
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

/// Whether the request failed on its way (connection, member) rather than
/// being refused by etcd, so that another try, possibly on another member,
/// may succeed.
fn is_transient(error: &etcd_client::Error) -> bool {
    use std::error::Error as _;
    use tonic::Code;
    match error {
        // Connecting to or talking over a connection failed.
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // etcd-client's report of a watch or keep-alive stream that closed
        // before etcd's first answer: the connection went away under it.
        etcd_client::Error::WatchError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            // tonic keeps the local failure it made a status from as its
            // source (hyper's "operation was canceled: connection closed"
            // becomes Cancelled, a stream reset by a closing member
            // Internal); statuses etcd sent have none.
            status.source().is_some()
                // etcd's transient refusals (no leader, leader changed,
                // request timed out, member stopping) and what a dropped
                // connection yields when tonic cannot tell more.
                || matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::Cancelled
                        | Code::Unknown
                        | Code::DeadlineExceeded
                        | Code::Aborted
                )
        }
        _ => false,
    }
}

/// `<prefix>/<service>/`: the range that holds every instance of `service`.
fn service_prefix(prefix: &str, service: &str) -> String {
    format!("{}/{service}/", prefix.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        time::Duration,
    };

    use tonic::{Code, Status};

    use super::*;

    fn status(code: Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(Status::new(code, message))
    }

    #[test]
    fn retries_transport_failures_but_not_etcd_refusals() {
        let mut local = Status::internal("h2 protocol error: stream reset");
        local.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        let transient = [
            status(Code::Cancelled, "operation was canceled: connection closed"),
            status(Code::Unavailable, "tcp connect error: Connection refused"),
            status(Code::Unavailable, "etcdserver: no leader"),
            status(Code::Unknown, "transport error"),
            etcd_client::Error::GRpcStatus(local),
            etcd_client::Error::IoError(std::io::ErrorKind::BrokenPipe.into()),
            etcd_client::Error::WatchError("failed to create lease keeper".into()),
        ];
        for error in &transient {
            assert!(is_transient(error), "{error}");
        }
        let refused = [
            status(Code::InvalidArgument, "etcdserver: key is not provided"),
            status(Code::PermissionDenied, "etcdserver: permission denied"),
            status(Code::Unauthenticated, "etcdserver: invalid auth token"),
            status(Code::NotFound, "etcdserver: requested lease not found"),
            status(Code::Internal, "etcdserver: corrupt cluster"),
            etcd_client::Error::LeaseKeepAliveError("lease not found".into()),
            etcd_client::Error::InvalidArgs("bad".into()),
        ];
        for error in &refused {
            assert!(!is_transient(error), "{error}");
        }
    }

    /// A connection that closes under a request (a member killed) fails it
    /// with an error classified as transient.
    #[tokio::test]
    async fn a_connection_closed_mid_request_is_transient() {
        use tokio::io::AsyncReadExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                // Take the start of the request, then die without answering.
                let _ = socket.read(&mut [0; 1024]).await;
            }
        });
        let mut client = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        let error = tokio::time::timeout(Duration::from_secs(10), client.get("key", None))
            .await
            .expect("the failure is reported")
            .expect_err("nothing answers");
        assert!(is_transient(&error), "{error:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_only_within_the_budget() {
        let attempts = AtomicUsize::new(0);
        let value = with_retry(Duration::from_secs(5), || {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0..=2 => Err(status(Code::Cancelled, "connection closed")),
                    _ => Ok(n),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);

        attempts.store(0, Ordering::SeqCst);
        let refused = with_retry(Duration::from_secs(5), || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<(), _>(status(
                    Code::PermissionDenied,
                    "etcdserver: permission denied",
                ))
            }
        })
        .await;
        assert!(matches!(refused, Err(crate::Error::Backend { .. })));
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "a refusal is not retried"
        );

        let started = tokio::time::Instant::now();
        let down = with_retry(Duration::from_secs(2), || async {
            Err::<(), _>(status(Code::Unavailable, "connection refused"))
        })
        .await;
        assert!(down.is_err());
        assert!(
            started.elapsed() <= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
