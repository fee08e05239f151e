//! A stand-in for the Consul agent HTTP API, for machines without Consul.
//!
//! It follows the behaviour of a real agent (Consul's agent and server
//! sources) for the endpoints the registry and resolver use:
//! `PUT /v1/agent/service/register` (with an embedded check),
//! `PUT /v1/agent/service/deregister/:id`, `PUT /v1/agent/check/{pass,warn,fail}/:id`,
//! `GET /v1/agent/service/:id`, `PUT /v1/agent/service/maintenance/:id`,
//! `PUT /v1/agent/maintenance` and `GET /v1/health/service/:name`:
//!
//! - **Registration** validates `Meta` as `structs.ValidateServiceMetadata`
//!   does (keys `^[a-zA-Z0-9_-]+$`, at most 128 characters, not starting
//!   with `consul-`; at most 64 pairs; values at most 512 characters) and
//!   `Weights` (1 to 65535), answering 400 `Invalid Service Meta: …` /
//!   `Invalid Weights: …`. Registering a service ID again keeps the status
//!   of its existing check (the agent's check-state snapshot), whatever
//!   `Status` the new definition asks for; with `replace-existing-checks`
//!   the service's other checks (its maintenance check) are removed.
//! - **ACLs** (off until [`ConsulStandIn::enable_acls`]): default policy
//!   deny, tokens from `X-Consul-Token`, `Authorization: Bearer` or
//!   `?token=`; an unknown token is 403 `ACL not found`, a token without
//!   the permission 403 `Permission denied: token with AccessorID '…' lacks
//!   permission 'service:write' on "…"`. Health answers drop the entries the
//!   token may not read (`service:read` and `node:read`) and then carry
//!   `X-Consul-Results-Filtered-By-ACLs: true`, except for anonymous
//!   requests (the server masks the flag for them).
//! - **Blocking queries** as `blockingQuery` runs them: with `index` > 0 the
//!   answer waits until the index is *greater* than the one given, so a
//!   lower or equal index (an index from before an agent restart) waits the
//!   full time; `wait` absent or ≤ 0 means 5 minutes, more than 10 minutes
//!   is cut to 10, and up to `wait/16` of random jitter is added.
//!   Unparsable `wait` or `index` is 400.
//! - **Health**: the node has its `serfHealth` check, node maintenance adds
//!   a critical `_node_maintenance` check and service maintenance a
//!   critical `_service_maintenance:<id>` check; checks are `passing`,
//!   `warning` or `critical`. `passing` keeps only entries whose every
//!   check, node checks included, is passing; `tag` filters are
//!   case-insensitive. TTL checks turn critical when not passed in time,
//!   and services critical longer than `DeregisterCriticalServiceAfter` are
//!   reaped.
//!
//! Path segments (service names, service and check IDs) are
//! percent-decoded, as by a real agent. Fault modes: HTTP 500s, garbage
//! bodies, slow answers, an agent restart that forgets every registration
//! and restarts the index lower, and the answer of older agents to a TTL
//! pass for a check they do not know.
//!
//! What it does not model: more than one node, the catalog and anti-entropy,
//! per-service indexes (one index for everything, so blocking queries wake
//! more often than on a real server, never less), ACL policies by name
//! prefix (a token may read or write every service), namespaces and
//! partitions, streaming and `?cached`.
//!
//! It is not Consul: tests run against a real agent when `CONSUL_HTTP_ADDR`
//! is set (see the README).

//!
//! Layout, one concept a file, so that a behaviour is found by name:
//!
//! - `state`: what the agent holds (services, node, index, counters).
//! - `call`: what every endpoint does first, in the agent's order (fault
//!   modes, then the token), written once so that handlers cannot drift.
//! - `faults`: the fault modes tests switch on.
//! - `acl`: tokens, policies and the 403 answers.
//! - `checks`: check statuses, the node's checks, TTL expiry and reaping.
//! - `register`: `PUT /v1/agent/service/register` and its validation.
//! - `agent`: the other `/v1/agent/…` endpoints.
//! - `health`: `GET /v1/health/service/:name` and its filters.
//! - `blocking`: `index`, `wait` and jitter of blocking queries.
//! - `go`: Go's parsers (durations, booleans), as the agent reads its input.

mod acl;
mod agent;
mod blocking;
mod call;
mod checks;
mod faults;
mod go;
mod health;
mod register;
mod state;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::net::TcpListener;

pub use acl::AclPolicy;
pub use checks::Status;

use acl::Acl;
use state::{lock, Agent, Shared};

/// The stand-in agent, serving on a free loopback port until dropped.
pub struct ConsulStandIn {
    addr: SocketAddr,
    agent: Shared,
    task: tokio::task::JoinHandle<()>,
    reaper: tokio::task::JoinHandle<()>,
}

impl ConsulStandIn {
    /// Starts the stand-in.
    pub async fn start() -> anyhow::Result<Self> {
        let agent = Arc::new(Mutex::new(Agent::new()));
        let app = agent::routes().with_state(agent.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let reaper = tokio::spawn(checks::reap(agent.clone()));
        Ok(Self {
            addr,
            agent,
            task,
            reaper,
        })
    }

    fn agent(&self) -> std::sync::MutexGuard<'_, Agent> {
        lock(&self.agent)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `count` requests answer HTTP 500.
    pub fn fail_next(&self, count: usize) {
        self.agent().faults.fail_next = count;
    }

    /// The next `count` health queries answer 200 with a body that is not JSON.
    pub fn garbage_next(&self, count: usize) {
        self.agent().faults.garbage_next = count;
    }

    /// Every answer is delayed by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.agent().faults.delay = delay;
    }

    /// Answers a TTL pass for a check the agent does not know as older
    /// agents (ACLs off) do: HTTP 500 `CheckID "…" does not have associated
    /// TTL`, instead of today's 404 `Unknown check ID "…"`.
    pub fn answer_unknown_checks_the_old_way(&self, on: bool) {
        self.agent().faults.old_unknown_check = on;
    }

    /// An agent restart: every registration is forgotten and the index
    /// starts again, lower than before.
    pub fn restart(&self) {
        let mut agent = self.agent();
        agent.services.clear();
        agent.index = 1;
        agent.changed.send_replace(1);
    }

    /// The IDs of the registered services.
    pub fn service_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.agent().services.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The Meta of service `id`, as stored.
    pub fn service_meta(&self, id: &str) -> Option<BTreeMap<String, String>> {
        self.agent().services.get(id).map(|s| s.meta.clone())
    }

    /// The status of service `id`'s check.
    pub fn check_status(&self, id: &str) -> Option<Status> {
        self.agent()
            .services
            .get(id)
            .and_then(|s| s.check.as_ref())
            .map(|c| c.status)
    }

    /// Sets service `id`'s check to `status`, as a failing probe or an
    /// expired TTL would (a TTL pass makes it passing again).
    pub fn set_check_status(&self, id: &str, status: Status) {
        let mut agent = self.agent();
        let changed = agent
            .services
            .get_mut(id)
            .and_then(|s| s.check.as_mut())
            .is_some_and(|c| c.set(status, Instant::now()));
        if changed {
            agent.bump();
        }
    }

    /// The node's `serfHealth` check (critical: the node left or failed).
    pub fn set_node_health(&self, status: Status) {
        let mut agent = self.agent();
        if agent.node.serf != status {
            agent.node.serf = status;
            agent.bump();
        }
    }

    /// Node maintenance on (`Some(reason)`) or off.
    pub fn set_node_maintenance(&self, reason: Option<&str>) {
        let mut agent = self.agent();
        agent.node.maintenance = reason.map(str::to_owned);
        agent.bump();
    }

    /// Maintenance of service `id` on (`Some(reason)`) or off.
    pub fn set_service_maintenance(&self, id: &str, reason: Option<&str>) {
        let mut agent = self.agent();
        if let Some(service) = agent.services.get_mut(id) {
            service.maintenance = reason.map(str::to_owned);
            agent.bump();
        }
    }

    /// Turns ACLs on with default policy deny: the anonymous token may do
    /// nothing, and only tokens given to [`set_token`](Self::set_token) exist.
    pub fn enable_acls(&self) {
        self.agent().acl.get_or_insert_with(Acl::default);
    }

    /// Creates token `secret` with `policy`, or changes its policy.
    pub fn set_token(&self, secret: &str, policy: AclPolicy) {
        self.agent()
            .acl
            .get_or_insert_with(Acl::default)
            .set_token(secret, policy);
    }

    /// Deletes token `secret`: using it is then 403 `ACL not found`.
    pub fn delete_token(&self, secret: &str) {
        if let Some(acl) = self.agent().acl.as_mut() {
            acl.tokens.remove(secret);
        }
    }

    /// How many registration requests arrived (valid or not).
    pub fn register_requests(&self) -> usize {
        self.agent().counters.register
    }

    /// How many TTL updates (pass, warn, fail) arrived.
    pub fn pass_requests(&self) -> usize {
        self.agent().counters.pass
    }

    /// How many requests were refused with 403.
    pub fn denied_requests(&self) -> usize {
        self.agent().counters.denied
    }
}

impl Drop for ConsulStandIn {
    fn drop(&mut self) {
        self.task.abort();
        self.reaper.abort();
    }
}
