//! The preamble every endpoint shares. A real agent applies the same steps
//! to every request in the same order (the request's delay or injected
//! failure first, then its token), so they live here once rather than at
//! the top of each handler, where one could drift from the others.

use std::{convert::Infallible, sync::MutexGuard};

use axum::{
    extract::FromRequestParts,
    http::{request::Parts, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

use super::{
    acl::{self, Caller},
    faults,
    state::{lock, Agent, Shared},
};

/// What a handler answers: `Err` is a refusal that `?` can return from
/// anywhere in the handler.
pub(super) type Answer = Result<Response, Refusal>;

/// An answer instead of the one asked for (an error, an injected fault).
/// Boxed: a `Response` is large, and it travels in every `Result` here.
pub(super) struct Refusal(Box<Response>);

impl Refusal {
    pub(super) fn new(answer: impl IntoResponse) -> Self {
        Self(Box::new(answer.into_response()))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A plain-text refusal, the way the agent reports errors.
pub(super) fn text(status: StatusCode, body: impl Into<String>) -> Refusal {
    Refusal::new((status, body.into()))
}

/// 400 with the agent's reason.
pub(super) fn bad_request(reason: impl Into<String>) -> Refusal {
    text(StatusCode::BAD_REQUEST, reason)
}

/// A request to the agent: its state, headers and query string.
///
/// Extracting it does nothing else, so it may come before extractors that
/// can reject the request (`Path`, `Json`) without changing what a rejected
/// request does to the agent; the handler then runs [`Call::admit`] or its
/// parts.
pub(super) struct Call {
    agent: Shared,
    headers: HeaderMap,
    query: Vec<(String, String)>,
}

impl FromRequestParts<Shared> for Call {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, agent: &Shared) -> Result<Self, Infallible> {
        let query = form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
        Ok(Self {
            agent: agent.clone(),
            headers: parts.headers.clone(),
            query,
        })
    }
}

impl Call {
    /// The usual start of a handler: the fault modes, then the caller, with
    /// the agent left locked for the rest of the request.
    pub(super) async fn admit(&self) -> Result<(MutexGuard<'_, Agent>, Caller), Refusal> {
        self.faults().await?;
        let mut agent = self.lock();
        let caller = self.caller(&mut agent)?;
        Ok((agent, caller))
    }

    /// The fault modes (a delay, an injected 500); for handlers that must
    /// check something between them and the token.
    pub(super) async fn faults(&self) -> Result<(), Refusal> {
        faults::inject(&self.agent).await
    }

    /// Who is asking; an unknown token is 403 `ACL not found`.
    pub(super) fn caller(&self, agent: &mut Agent) -> Result<Caller, Refusal> {
        acl::resolve(agent, &self.headers, self.query("token"))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Agent> {
        lock(&self.agent)
    }

    /// The first value of query parameter `key`.
    pub(super) fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of query parameter `key`, in order (`tag` may repeat).
    pub(super) fn query_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The agent itself, for what outlives one lock (blocking queries).
    pub(super) fn shared(&self) -> &Shared {
        &self.agent
    }
}
