//! Prometheus RPC metrics for Volo and tower/tonic services.
//!
//! One [`RpcMetrics`] per process holds the instruments; framework layers
//! record every call into it, and one [`MetricsEndpoint`] exposes it:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `rpc_server_duration_seconds` | histogram | `rpc_system`, `rpc_service`, `rpc_method`, `status_code` |
//! | `rpc_server_requests_total` | counter | same |
//! | `rpc_server_active_requests` | gauge | `rpc_system`, `rpc_service`, `rpc_method` |
//! | `rpc_server_request_size_bytes`, `rpc_server_response_size_bytes` | histogram | same |
//! | `rpc_client_*` | as above | plus `peer_service` |
//!
//! `status_code` is the real code: the gRPC code (`"0"`..`"16"`), the HTTP
//! status, or the Thrift outcome ([`status::thrift`]). Calls to methods the
//! server does not know, and methods beyond the builder's cap, are recorded
//! under [`OTHER`], so clients cannot grow the series count.
//!
//! ```
//! use rpc_ext_metrics::{MetricsEndpoint, RpcMetrics};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), rpc_ext_metrics::Error> {
//! let metrics = RpcMetrics::builder().build()?;
//! // tower: ServiceBuilder::new().layer(rpc_ext_metrics::tower::MetricsLayer::server(&metrics))
//! // Volo:  Server::new().layer_front(rpc_ext_metrics::volo::MetricsLayer::server(&metrics))
//! let endpoint = MetricsEndpoint::serve("127.0.0.1:0".parse().unwrap(), metrics.registry().clone()).await?;
//! # drop(endpoint); Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod cache;
mod endpoint;
mod error;
mod metrics;
#[cfg(feature = "otel")]
mod otel;
mod recorder;
pub mod status;

#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "volo")]
pub mod volo;

pub use endpoint::{encode_openmetrics, encode_text, MetricsEndpoint, MetricsEndpointBuilder};
pub use error::Error;
pub use metrics::{RpcMetrics, RpcMetricsBuilder, DEFAULT_DURATION_BUCKETS, DEFAULT_SIZE_BUCKETS};
pub use prometheus;
pub use recorder::CallRecorder;
pub use rpc_ext_core::{thrift, GrpcCode, RpcSystem, Side, OTHER};
