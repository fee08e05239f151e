//! motore layers (feature `volo`): [`MetricsLayer`] for Volo gRPC and Volo
//! Thrift, servers and clients; [`HttpMetricsLayer`] for Volo HTTP servers
//! and clients.

mod address;
mod http;
mod rpc;

pub use http::{HttpMetricsLayer, HttpMetricsService};
pub use rpc::{MetricsLayer, MetricsService, RpcOutcome};
