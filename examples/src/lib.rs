//! The Echo service, generated for Volo and for tonic, with a server
//! implementation for each. Shared by the examples and the integration tests.

#![allow(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/volo_gen.rs"));

/// Volo Thrift code generated from `idl/echo.thrift`.
pub mod thrift {
    #![allow(clippy::all, unused, warnings)]
    include!(concat!(env!("OUT_DIR"), "/volo_thrift_gen.rs"));
}

/// tonic code generated from `proto/echo.proto`.
pub mod tonic_gen {
    #![allow(clippy::all, unused, warnings)]
    tonic::include_proto!("echo");
}

pub mod servers;
mod streaming;
