//! motore layers (feature `volo`), named by the system they trace:
//! [`GrpcTracingLayer`] for Volo gRPC and
//! [`ThriftTracingLayer`] for Volo Thrift, each for servers and clients, and
//! [`HttpTracingLayer`] for Volo HTTP servers.

mod grpc;
mod http;
mod thrift;

pub use grpc::{GrpcTracingLayer, GrpcTracingService};
pub use http::{HttpTracingLayer, HttpTracingService};
pub use rpc_ext_core::thrift::ThriftErrorKind;
pub use thrift::{MetaInfoExtractor, MetaInfoInjector, ThriftTracingLayer, ThriftTracingService};

fn ip(address: Option<volo::net::Address>) -> Option<std::net::SocketAddr> {
    match address {
        Some(volo::net::Address::Ip(addr)) => Some(addr),
        _ => None,
    }
}
