//! motore layers (feature `volo`), named by the system they trace:
//! [`GrpcTracingLayer`] for Volo gRPC and
//! [`ThriftTracingLayer`] for Volo Thrift, each for servers and clients, and
//! [`HttpTracingLayer`] for Volo HTTP servers and clients.
//!
//! A Volo gRPC client's streaming reply is traced to its end only when the
//! application wraps it in an [`ObservedStream`] (re-exported here from
//! `rpc_ext_core::volo_grpc`):
//! `let replies = ObservedStream::new(client.count(request).await?);`.

mod grpc;
mod http;
mod thrift;

pub use grpc::{GrpcTracingLayer, GrpcTracingService};
pub use http::{HttpTracingLayer, HttpTracingService};
pub use rpc_ext_core::thrift::ThriftErrorKind;
pub use rpc_ext_core::volo_grpc::ObservedStream;
pub use thrift::{MetaInfoExtractor, MetaInfoInjector, ThriftTracingLayer, ThriftTracingService};

fn ip(address: Option<volo::net::Address>) -> Option<std::net::SocketAddr> {
    match address {
        Some(volo::net::Address::Ip(addr)) => Some(addr),
        _ => None,
    }
}

/// A Volo client's `server.address`/`server.port`: the callee's static
/// address when it has one at the start of the call, else the service name
/// it is discovered by (no port: that is up to discovery).
fn client_target<'a>(
    info: crate::CallInfo<'a>,
    callee: &'a volo::context::Endpoint,
) -> crate::CallInfo<'a> {
    match ip(callee.address()) {
        Some(addr) => info.with_server(crate::Host::Ip(addr.ip()), Some(addr.port())),
        None => match callee.service_name_ref() {
            "" => info,
            name => info.with_server(crate::Host::Name(name), None),
        },
    }
}
