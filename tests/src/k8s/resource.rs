//! The kinds of object the stand-in stores, and what differs between them
//! as the API server's registry strategies define it.

/// One resource type served with list, watch, get, create, replace,
/// server-side apply and delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Resource {
    /// The plural in URLs and RBAC rules (`endpointslices`).
    pub plural: &'static str,
    /// The API group (`discovery.k8s.io`).
    pub group: &'static str,
    /// The object's `kind`.
    pub kind: &'static str,
    /// A PUT of an object that does not exist creates it (the strategy's
    /// `AllowCreateOnUpdate`): true for Leases, false for EndpointSlices.
    pub create_on_update: bool,
    /// A PUT without `metadata.resourceVersion` overwrites whatever is
    /// stored (`AllowUnconditionalUpdate`): true for EndpointSlices, false
    /// for Leases, whose updates must name the version they replace.
    pub unconditional_update: bool,
}

pub(super) const SLICES: Resource = Resource {
    plural: "endpointslices",
    group: "discovery.k8s.io",
    kind: "EndpointSlice",
    create_on_update: false,
    unconditional_update: true,
};

pub(super) const LEASES: Resource = Resource {
    plural: "leases",
    group: "coordination.k8s.io",
    kind: "Lease",
    create_on_update: true,
    unconditional_update: false,
};

impl Resource {
    /// `discovery.k8s.io/v1`.
    pub fn api_version(self) -> String {
        format!("{}/v1", self.group)
    }

    /// The collection's route: `/apis/<group>/v1/namespaces/{ns}/<plural>`.
    pub fn collection_route(self) -> String {
        format!("/apis/{}/v1/namespaces/{{ns}}/{}", self.group, self.plural)
    }

    /// `endpointslices.discovery.k8s.io`, as messages name it.
    pub fn qualified(self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    /// `EndpointSlice.discovery.k8s.io`, as validation errors name it.
    pub fn kind_qualified(self) -> String {
        format!("{}.{}", self.kind, self.group)
    }
}
