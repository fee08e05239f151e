//! ACLs with default policy deny, as far as the registry and resolver meet
//! them: which token a request carries, what it may do, and the exact 403
//! texts, since the client tells "ACL not found" from "Permission denied".

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode};

use super::{
    call::{text, Refusal},
    state::Agent,
};

/// What an ACL token may do. The stand-in has no name prefixes: a grant
/// covers every service (`service_prefix ""`) or the node (`node_prefix ""`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AclPolicy {
    /// `service:read` (implied by `service_write`).
    pub service_read: bool,
    /// `service:write`.
    pub service_write: bool,
    /// `node:read`.
    pub node_read: bool,
}

impl AclPolicy {
    /// What a service needs to register itself and be resolved.
    pub const WRITE: Self = Self {
        service_read: true,
        service_write: true,
        node_read: true,
    };
    /// What a resolver needs: `service:read` and `node:read`.
    pub const READ: Self = Self {
        service_read: true,
        service_write: false,
        node_read: true,
    };

    pub(super) fn reads_services(self) -> bool {
        self.service_read || self.service_write
    }
}

/// The accessor ID of Consul's anonymous token.
const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";

/// The tokens, once ACLs are on.
#[derive(Debug, Default)]
pub(super) struct Acl {
    /// Secret → (accessor ID, policy).
    pub(super) tokens: HashMap<String, (String, AclPolicy)>,
    created: usize,
}

impl Acl {
    /// Creates token `secret` with `policy`, or changes its policy (its
    /// accessor ID stays, as when a real token's policies are edited).
    pub(super) fn set_token(&mut self, secret: &str, policy: AclPolicy) {
        self.created += 1;
        let accessor = format!("{:08x}-0000-4000-8000-{:012x}", self.created, self.created);
        self.tokens
            .entry(secret.to_owned())
            .and_modify(|(_, p)| *p = policy)
            .or_insert((accessor, policy));
    }
}

/// A permission a handler asks for, named as Consul names it in a refusal.
#[derive(Debug, Clone, Copy)]
pub(super) enum Permission {
    ServiceRead,
    ServiceWrite,
}

impl Permission {
    fn name(self) -> &'static str {
        match self {
            Permission::ServiceRead => "service:read",
            Permission::ServiceWrite => "service:write",
        }
    }

    fn granted_by(self, policy: AclPolicy) -> bool {
        match self {
            Permission::ServiceRead => policy.reads_services(),
            Permission::ServiceWrite => policy.service_write,
        }
    }
}

/// Who is asking, once the token is resolved.
pub(super) struct Caller {
    /// The anonymous token: the server masks the filtered-results header
    /// for it.
    pub(super) anonymous: bool,
    accessor: String,
    pub(super) policy: AclPolicy,
}

impl Caller {
    /// `Ok` if the token grants `permission` on service `on`; else the
    /// agent's 403, counted as denied.
    pub(super) fn require(
        &self,
        agent: &mut Agent,
        permission: Permission,
        on: &str,
    ) -> Result<(), Refusal> {
        if permission.granted_by(self.policy) {
            return Ok(());
        }
        agent.counters.denied += 1;
        Err(text(
            StatusCode::FORBIDDEN,
            format!(
                "Permission denied: token with AccessorID '{}' lacks permission '{}' on {on:?}",
                self.accessor,
                permission.name()
            ),
        ))
    }
}

/// The request's token as the agent reads it: `?token=`, then
/// `X-Consul-Token`, then `Authorization: Bearer`; empty means anonymous.
fn request_token(headers: &HeaderMap, query_token: Option<&str>) -> String {
    if let Some(token) = query_token.filter(|t| !t.is_empty()) {
        return token.to_owned();
    }
    if let Some(token) = headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
    {
        return token.to_owned();
    }
    headers
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(str::to_owned)
        .unwrap_or_default()
}

/// Resolves the request's token; an unknown one is 403 `ACL not found`.
/// With ACLs off every request may do everything.
pub(super) fn resolve(
    agent: &mut Agent,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Caller, Refusal> {
    let Some(acl) = &agent.acl else {
        return Ok(Caller {
            anonymous: false,
            accessor: String::new(),
            policy: AclPolicy::WRITE,
        });
    };
    let secret = request_token(headers, query_token);
    if secret.is_empty() {
        return Ok(Caller {
            anonymous: true,
            accessor: ANONYMOUS_ACCESSOR.to_owned(),
            policy: AclPolicy::default(),
        });
    }
    match acl.tokens.get(&secret) {
        Some((accessor, policy)) => Ok(Caller {
            anonymous: false,
            accessor: accessor.clone(),
            policy: *policy,
        }),
        None => {
            agent.counters.denied += 1;
            Err(text(StatusCode::FORBIDDEN, "ACL not found"))
        }
    }
}
