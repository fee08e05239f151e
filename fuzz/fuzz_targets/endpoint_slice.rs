//! Kubernetes objects: EndpointSlice JSON as the API server sends it, and
//! the `k8s://` targets users write.
//!
//! Properties: nothing panics; only endpoints kube-proxy would use (ready and
//! not terminating, or — when none is — terminating and serving) with an IP
//! address and a non-zero port become instances, each address once.

#![no_main]

use std::collections::HashSet;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;
use rpc_ext_registry::k8s::{usable_instances, Target};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(first_line) = text.lines().next() {
            let _ = Target::parse(first_line);
        }
    }
    let Ok(slice) = serde_json::from_slice::<EndpointSlice>(data) else {
        return;
    };
    // A named port, and the unnamed port of a single-port Service.
    for port_name in ["grpc", ""] {
        let instances = usable_instances("k8s://fuzz.default:grpc", port_name, &slice);
        let usable = slice
            .endpoints
            .iter()
            .flatten()
            .filter(|e| {
                let c = e.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(true);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                (ready && !terminating) || (serving && terminating)
            })
            .map(|e| e.addresses.len())
            .sum::<usize>();
        assert!(instances.len() <= usable);
        assert!(instances.iter().all(|i| i.address.port() != 0));
        let distinct: HashSet<_> = instances.iter().map(|i| i.address).collect();
        assert_eq!(distinct.len(), instances.len());
    }
});
