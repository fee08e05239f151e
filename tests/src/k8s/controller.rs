//! The objects a cluster's controllers write, built the way they build them,
//! so that tests feed the resolver what a real cluster would: a Service, and
//! the EndpointSlices the endpointslice controller derives from it and its
//! pods.

use serde_json::{json, Value};

/// A pod behind a Service, as far as its endpoint is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pod {
    /// Running and passing its readiness probe.
    Ready,
    /// Running, readiness probe failing (starting, or overloaded).
    NotReady,
    /// Being deleted (it has a `deletionTimestamp`: a rollout or scale-down
    /// replaced it), still passing its readiness probe while it drains.
    TerminatingServing,
    /// Being deleted and no longer passing its readiness probe.
    TerminatingNotServing,
}

/// The endpoint the endpointslice controller writes for a pod at `ip` of a
/// Service without `publishNotReadyAddresses`: `serving` is the pod's
/// readiness, `terminating` whether it is being deleted, and `ready` is
/// serving and not terminating (so a draining pod is never `ready`).
pub fn pod_endpoint(ip: &str, pod: Pod) -> Value {
    let serving = matches!(pod, Pod::Ready | Pod::TerminatingServing);
    let terminating = matches!(pod, Pod::TerminatingServing | Pod::TerminatingNotServing);
    json!({
        "addresses": [ip],
        "conditions": {"ready": serving && !terminating, "serving": serving, "terminating": terminating},
        "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("pod-{ip}")},
        "nodeName": "node-1",
        "zone": "zone-a",
    })
}

/// A Service `name` with `ports`: `(port name or "", port, targetPort)`.
pub fn service(name: &str, ports: &[(&str, u16, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|&(port_name, port, target)| {
            let mut entry = json!({"port": port, "targetPort": target, "protocol": "TCP"});
            // An unnamed port has no `name` (only single-port Services may
            // have one).
            if !port_name.is_empty() {
                entry["name"] = json!(port_name);
            }
            entry
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": ports, "type": "ClusterIP"},
    })
}

/// The EndpointSlice `slice` the endpointslice controller writes for
/// `service` (a [`service`] value) with these endpoints: labelled with the
/// service name, one slice port per Service port carrying the Service port's
/// *name* (`""` when unnamed) and the *target* port number — the Service's
/// own port number appears nowhere in the slice.
pub fn slice_of(slice: &str, service: &Value, endpoints: Vec<Value>) -> Value {
    let name = service["metadata"]["name"].clone();
    let ports: Vec<Value> = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|port| {
            json!({
                "name": port["name"].as_str().unwrap_or_default(),
                "port": port["targetPort"].clone(),
                "protocol": port["protocol"].clone(),
            })
        })
        .collect();
    json!({
        "metadata": {"name": slice, "labels": {
            "kubernetes.io/service-name": name,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        }},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}
