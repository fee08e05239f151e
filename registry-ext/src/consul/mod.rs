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
