//! Starts real servers for tests and stops them when the test ends.
//!
//! Every server runs on free loopback ports with its own temporary data
//! directory, and is killed when its guard drops, so nothing outlives a test.

pub mod backends;
pub mod bench_report;
pub mod consul;
pub mod directory_registry;
mod etcd;
pub mod k8s;
pub mod otlp;
mod process;
mod prometheus;
pub mod proxy;
pub mod sidecar;
mod traced_echo;
mod zookeeper;

pub use etcd::{EtcdCluster, EtcdServer};
pub use process::{free_port, free_ports, require_binary, ChildGuard};
pub use prometheus::PrometheusServer;
pub use proxy::FaultProxy;
pub use sidecar::Sidecar;
pub use traced_echo::{traced_tonic_echo, TonicEchoClient};
pub use zookeeper::{
    ZooKeeperEnsemble, ZooKeeperServer, ZOOKEEPER_MIN_SESSION_TIMEOUT, ZOOKEEPER_TICK,
};

use std::time::Duration;

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `tracing` output of the code under test to the test's captured output.
/// Honors `RUST_LOG` (default: warnings).
pub fn init_test_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
