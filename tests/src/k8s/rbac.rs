//! The stand-in's authorization: a Role of (verb, resource) rules, and the
//! `403 Forbidden` Status the API server's RBAC authorizer answers with.

use std::collections::BTreeSet;

use serde_json::{json, Value};

/// The user the stand-in reports in its 403 messages, as a pod's service
/// account appears to the API server.
pub const USER: &str = "system:serviceaccount:default:registry-ext";

/// What the client may do: `None` allows everything (a cluster admin),
/// `Some` only the listed `(verb, resource)` pairs, where resource is the
/// plural with its API group (`endpointslices.discovery.k8s.io`, `services`).
pub(super) type Role = Option<BTreeSet<(String, String)>>;

/// One request to authorize, as the API server's request-info filter sees it.
pub(super) struct Request<'a> {
    pub verb: &'a str,
    /// The plural resource (`endpointslices`).
    pub resource: &'a str,
    /// The API group (`discovery.k8s.io`; `""` for the core group).
    pub group: &'a str,
    pub namespace: &'a str,
    /// The object's name, for requests on a single object.
    pub name: Option<&'a str>,
}

impl Request<'_> {
    fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    /// `Ok` if `role` allows the request, else the 403 Status body.
    pub(super) fn authorize(&self, role: &Role) -> Result<(), Value> {
        let Some(rules) = role else { return Ok(()) };
        let resource = self.qualified_resource();
        if rules.contains(&(self.verb.to_owned(), resource.clone())) {
            return Ok(());
        }
        // The wording of the RBAC authorizer's denial, as `kubectl` shows it.
        let subject = match self.name {
            Some(name) => format!("{resource} {name:?}"),
            None => resource.clone(),
        };
        let message = format!(
            "{subject} is forbidden: User \"{USER}\" cannot {verb} resource \"{plural}\" \
             in API group \"{group}\" in the namespace \"{namespace}\"",
            verb = self.verb,
            plural = self.resource,
            group = self.group,
            namespace = self.namespace,
        );
        let mut details = json!({"group": self.group, "kind": self.resource});
        if let Some(name) = self.name {
            details["name"] = json!(name);
        }
        Err(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": message, "reason": "Forbidden", "details": details, "code": 403}),
        )
    }
}
