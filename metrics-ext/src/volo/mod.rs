//! motore layers (feature `volo`): [`MetricsLayer`] for Volo gRPC and Volo
//! Thrift, servers and clients; [`HttpMetricsLayer`] for Volo HTTP servers
//! and clients.
//!
//! A Volo gRPC client's streaming reply is recorded at its end only when
//! the application wraps it in an [`ObservedStream`] (re-exported here
//! from `rpc_ext_core::volo_grpc`):
//! `let replies = ObservedStream::new(client.count(request).await?);`.

mod address;
mod http;
mod rpc;

pub use http::{HttpMetricsLayer, HttpMetricsService};
pub use rpc::{MetricsLayer, MetricsService, RpcOutcome};
pub use rpc_ext_core::volo_grpc::ObservedStream;
