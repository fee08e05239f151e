//! Kubernetes objects: EndpointSlice JSON as the API server sends it, and
//! the `k8s://` targets users write.
//!
//! Properties: nothing panics; only ready, non-terminating endpoints with an
//! IP address and a non-zero port become instances.

#![no_main]

use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;
use rpc_ext_registry::k8s::{ready_instances, PortSpec, Target};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(first_line) = text.lines().next() {
            let _ = Target::parse(first_line);
        }
    }
    let Ok(slice) = serde_json::from_slice::<EndpointSlice>(data) else {
        return;
    };
    for port in [PortSpec::Name("grpc".into()), PortSpec::Number(8080)] {
        let instances = ready_instances("k8s://fuzz.default:grpc", &port, &slice);
        let ready = slice
            .endpoints
            .iter()
            .flatten()
            .filter(|e| {
                let c = e.conditions.as_ref();
                c.and_then(|c| c.ready).unwrap_or(true)
                    && !c.and_then(|c| c.terminating).unwrap_or(false)
            })
            .map(|e| e.addresses.len())
            .sum::<usize>();
        assert!(instances.len() <= ready);
        assert!(instances.iter().all(|i| i.address.port() != 0));
    }
});
