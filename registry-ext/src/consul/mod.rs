//! Consul backend (feature `consul`).
//!
//! Registration goes through the local agent (`PUT /v1/agent/service/register`)
//! with a health check — a TTL check kept passing in the background by
//! default, or an HTTP, gRPC or TCP check run by the agent — and
//! `DeregisterCriticalServiceAfter`, so a crashed instance is reaped. When
//! the agent forgets the service (restart, 404 on the TTL update) it is
//! registered again with backoff. Resolution reads
//! `GET /v1/health/service/<name>?passing=true` with blocking queries
//! (`index`, `wait`), following the documented index rules.
//!
//! What real agents do that shapes the client:
//!
//! - **Service Meta is validated** (keys `^[a-zA-Z0-9_-]+$`, at most 128
//!   characters, not `consul-…`; values at most 512; at most 64 pairs).
//!   Tags are stored in `Meta`; a tag key Consul refuses
//!   (`app.kubernetes.io/name`, `zone:a`) is stored encoded
//!   (`__app_2Ekubernetes_2Eio_2Fname`) and decoded by the resolver, and a
//!   tag that cannot be stored even so is refused with
//!   [`Error::InvalidInstance`](crate::Error::InvalidInstance) before any
//!   request.
//! - **ACLs**: a 403 ("ACL not found", "Permission denied") is
//!   [`Error::PermissionDenied`](crate::Error::PermissionDenied). The
//!   registry's keeper logs it as an ACL error and tries again once per
//!   period (TTL/3, or 10 s for agent-run checks), not with the fast backoff
//!   used while the agent is unreachable. A health answer filtered by ACLs
//!   (`X-Consul-Results-Filtered-By-ACLs`) is reported as that error in
//!   [`ServiceSnapshot::last_error`](crate::ServiceSnapshot::last_error),
//!   the last known instances kept, never published as the set. The
//!   server sends that header only to requests with a token: anonymous
//!   requests cannot tell a filtered answer from an empty one.
//! - **Blocking queries** wait until the index passes the one sent, up to
//!   `wait` plus `wait/16` of jitter; `wait=0` means the server's 5
//!   minutes. The resolver keeps `wait` within 1 s and 10 min and waits for
//!   the answer longer than the server may hold it.
//! - **Health**: `passing` drops an instance when any of its checks is not
//!   passing, node checks (`serfHealth`, node maintenance) and service
//!   maintenance included, and `warning` too. Re-registering a service ID
//!   keeps the status its check had, so after registering with a TTL check
//!   the registry passes it at once. `tag` filters ignore case.
//!
//! The HTTP API is called with `reqwest`: the Consul client crates on
//! crates.io either cover only the catalog API (no agent registration, no
//! TTL checks) or are unmaintained and panic on a malformed `X-Consul-Index`.
//!
//! ```no_run
//! use rpc_ext_registry::{consul::{ConsulRegistry, ConsulResolver}, Instance, Registry, Resolver};
//!
//! # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
//! // Address and token default to CONSUL_HTTP_ADDR and CONSUL_HTTP_TOKEN.
//! let registry = ConsulRegistry::builder().build()?;
//! let registration = registry
//!     .register(Instance::new("echo", "0.0.0.0:50051".parse().unwrap()).with_tag("zone", "a"))
//!     .await?;
//! let resolver = ConsulResolver::builder().build()?;
//! println!("{:?}", resolver.resolve("echo").await?);
//! registration.deregister().await?;
//! # Ok(()) }
//! ```

mod api;
mod builder;
mod health;
mod meta;
mod registry;
mod resolver;

pub use builder::{Check, ConsulBuilder, DEFAULT_ADDRESS, DEFAULT_TTL};
pub use health::decode_health;
// For the fuzz targets only (see the `fuzzing` feature).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use health::{decode_index, INDEX_HEADER};
pub use registry::ConsulRegistry;
pub use resolver::ConsulResolver;

pub(crate) const BACKEND: &str = "consul";
