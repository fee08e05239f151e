//! Consul agent answers: the body of `GET /v1/health/service/<name>` and the
//! `X-Consul-Index` header.
//!
//! Properties: nothing panics; junk is a typed `Error::Decode`; every
//! instance kept has a routable port.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rpc_ext_registry::{
    consul::{decode_health, decode_index},
    Error,
};

fuzz_target!(|data: &[u8]| {
    match decode_health("fuzz", data) {
        Ok(instances) => assert!(instances.iter().all(|i| i.address.port() != 0)),
        Err(Error::Decode { .. }) => {}
        Err(other) => panic!("junk must be a decode error, got {other:?}"),
    }
    match decode_index("fuzz", Some(data)) {
        Ok(_) | Err(Error::Decode { .. }) => {}
        Err(other) => panic!("junk must be a decode error, got {other:?}"),
    }
});
