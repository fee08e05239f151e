//! What differs between the Kubernetes API versions k8s-openapi offers, for
//! code that must compile against whichever one the final binary picks.
//!
//! `EndpointSlice::endpoints` is a `Vec` up to 1.35 and an `Option<Vec>`
//! from 1.36 on; both read and build through [`EndpointList`].

use k8s_openapi::api::discovery::v1::Endpoint;

/// `EndpointSlice::endpoints`, in either of its shapes.
pub(crate) trait EndpointList {
    /// The endpoints (none when the field is absent).
    fn endpoint_list(&self) -> &[Endpoint];
    /// The field holding `endpoints`.
    fn from_endpoints(endpoints: Vec<Endpoint>) -> Self;
}

impl EndpointList for Vec<Endpoint> {
    fn endpoint_list(&self) -> &[Endpoint] {
        self
    }

    fn from_endpoints(endpoints: Vec<Endpoint>) -> Self {
        endpoints
    }
}

impl EndpointList for Option<Vec<Endpoint>> {
    fn endpoint_list(&self) -> &[Endpoint] {
        self.as_deref().unwrap_or_default()
    }

    fn from_endpoints(endpoints: Vec<Endpoint>) -> Self {
        Some(endpoints)
    }
}
