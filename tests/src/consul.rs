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

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, put},
    Json, Router,
};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::watch};

/// A health check status, as Consul spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `passing`
    Passing,
    /// `warning`
    Warning,
    /// `critical`
    Critical,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }
}

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

    fn reads_services(self) -> bool {
        self.service_read || self.service_write
    }
}

/// The accessor ID of Consul's anonymous token.
const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
const NODE: &str = "stand-in";

#[derive(Debug, Clone)]
struct Service {
    id: String,
    name: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    weights: Value,
    check: Option<CheckState>,
    /// `_service_maintenance:<id>`, with its reason.
    maintenance: Option<String>,
}

#[derive(Debug, Clone)]
struct CheckState {
    ttl: Option<Duration>,
    status: Status,
    deadline: Option<Instant>,
    critical_since: Option<Instant>,
    deregister_after: Option<Duration>,
}

impl CheckState {
    /// Sets the status; `true` if it changed.
    fn set(&mut self, status: Status, now: Instant) -> bool {
        if self.status == status {
            return false;
        }
        self.status = status;
        self.critical_since = (status == Status::Critical).then_some(now);
        true
    }
}

#[derive(Debug, Default)]
struct Faults {
    fail_next: usize,
    garbage_next: usize,
    delay: Duration,
    old_unknown_check: bool,
}

#[derive(Debug)]
struct NodeState {
    serf: Status,
    maintenance: Option<String>,
}

#[derive(Debug, Default)]
struct Acl {
    /// Secret → (accessor ID, policy).
    tokens: HashMap<String, (String, AclPolicy)>,
    created: usize,
}

/// Requests seen, by kind (counted before any check, faults included).
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    register: usize,
    pass: usize,
    denied: usize,
}

struct Agent {
    services: HashMap<String, Service>,
    index: u64,
    faults: Faults,
    changed: watch::Sender<u64>,
    node: NodeState,
    acl: Option<Acl>,
    counters: Counters,
}

impl Agent {
    fn bump(&mut self) {
        self.index += 1;
        // `send_replace`, not `send`: the index must be stored even while
        // no blocking query is waiting, or the next one would block on a
        // stale value.
        self.changed.send_replace(self.index);
    }
}

type Shared = Arc<Mutex<Agent>>;

/// Who is asking, once the token is resolved.
struct Caller {
    anonymous: bool,
    accessor: String,
    policy: AclPolicy,
}

impl Caller {
    fn denied(&self, permission: &str, on: &str) -> Response {
        (
            StatusCode::FORBIDDEN,
            format!(
                "Permission denied: token with AccessorID '{}' lacks permission '{permission}' on {on:?}",
                self.accessor
            ),
        )
            .into_response()
    }
}

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
        let (changed, _) = watch::channel(1);
        let agent = Arc::new(Mutex::new(Agent {
            services: HashMap::new(),
            index: 1,
            faults: Faults::default(),
            changed,
            node: NodeState {
                serf: Status::Passing,
                maintenance: None,
            },
            acl: None,
            counters: Counters::default(),
        }));
        let app = Router::new()
            .route("/v1/agent/service/register", put(register))
            .route("/v1/agent/service/deregister/{id}", put(deregister))
            .route(
                "/v1/agent/service/maintenance/{id}",
                put(service_maintenance),
            )
            .route("/v1/agent/maintenance", put(node_maintenance))
            .route("/v1/agent/check/pass/{id}", put(pass))
            .route("/v1/agent/check/warn/{id}", put(warn))
            .route("/v1/agent/check/fail/{id}", put(fail))
            .route("/v1/agent/service/{id}", get(service))
            .route("/v1/health/service/{name}", get(health))
            .with_state(agent.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let reaper = tokio::spawn(reap(agent.clone()));
        Ok(Self {
            addr,
            agent,
            task,
            reaper,
        })
    }

    fn agent(&self) -> std::sync::MutexGuard<'_, Agent> {
        self.agent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let mut agent = self.agent();
        let acl = agent.acl.get_or_insert_with(Acl::default);
        acl.created += 1;
        let accessor = format!("{:08x}-0000-4000-8000-{:012x}", acl.created, acl.created);
        acl.tokens
            .entry(secret.to_owned())
            .and_modify(|(_, p)| *p = policy)
            .or_insert((accessor, policy));
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

fn lock(agent: &Shared) -> std::sync::MutexGuard<'_, Agent> {
    agent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Applies the fault modes; `Some` is the answer to send instead.
async fn faults(agent: &Shared) -> Option<Response> {
    let (delay, fail) = {
        let mut agent = lock(agent);
        let fail = agent.faults.fail_next > 0;
        if fail {
            agent.faults.fail_next -= 1;
        }
        (agent.faults.delay, fail)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    fail.then(|| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "stand-in: injected failure",
        )
            .into_response()
    })
}

/// The query string's pairs.
fn query_pairs(raw: &RawQuery) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.0.as_deref().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The request's token as the agent reads it: `?token=`, then
/// `X-Consul-Token`, then `Authorization: Bearer`; empty means anonymous.
fn request_token(headers: &HeaderMap, pairs: &[(String, String)]) -> String {
    if let Some(token) = query_get(pairs, "token").filter(|t| !t.is_empty()) {
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

/// An error answer: status and body.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// Resolves the request's token; an unknown one is 403 `ACL not found`.
fn resolve(
    agent: &mut Agent,
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> Result<Caller, Refusal> {
    let Some(acl) = &agent.acl else {
        return Ok(Caller {
            anonymous: false,
            accessor: String::new(),
            policy: AclPolicy::WRITE,
        });
    };
    let secret = request_token(headers, pairs);
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
            Err(Refusal(StatusCode::FORBIDDEN, "ACL not found".to_owned()))
        }
    }
}

/// A Go duration as `time.ParseDuration` reads it (`10s`, `1500ms`,
/// `1m30s`, `-5s`, `0`), in signed nanoseconds.
fn parse_go_duration(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * nanos;
        rest = &rest[unit_len..];
    }
    let total = total as i128;
    Some(if negative { -total } else { total })
}

/// A positive Go duration (TTLs, intervals).
fn parse_duration(text: &str) -> Option<Duration> {
    parse_go_duration(text)
        .filter(|n| *n > 0)
        .map(|n| Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX)))
}

/// `structs.ValidateServiceMetadata` for a typical service.
fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > 64 {
        return Err("Node metadata cannot contain more than 64 key/value pairs".to_owned());
    }
    for (key, value) in meta {
        let reason = if key.is_empty() {
            "Key cannot be blank".to_owned()
        } else if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            "Key contains invalid characters".to_owned()
        } else if key.len() > 128 {
            "Key is too long (limit: 128 characters)".to_owned()
        } else if key.starts_with("consul-") {
            "Key prefix 'consul-' is reserved for internal use".to_owned()
        } else if value.len() > 512 {
            "Value is too long (limit: 512 characters)".to_owned()
        } else {
            continue;
        };
        return Err(format!(
            "Couldn't load metadata pair ('{key}', '{value}'): {reason}"
        ));
    }
    Ok(())
}

/// `structs.ValidateWeights`.
fn validate_weights(weights: &Value) -> Result<(), String> {
    let passing = weights.get("Passing").and_then(Value::as_i64).unwrap_or(0);
    let warning = weights.get("Warning").and_then(Value::as_i64).unwrap_or(0);
    if passing < 1 {
        return Err("Passing must be greater than 0".to_owned());
    }
    if warning < 0 {
        return Err("Warning must be greater or equal than 0".to_owned());
    }
    if passing > 65535 || warning > 65535 {
        return Err("DNS Weight must be between 0 and 65535".to_owned());
    }
    Ok(())
}

fn bad_request(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, reason).into_response()
}

async fn register(
    State(agent): State<Shared>,
    headers: HeaderMap,
    raw: RawQuery,
    Json(body): Json<Value>,
) -> Response {
    lock(&agent).counters.register += 1;
    if let Some(fault) = faults(&agent).await {
        return fault;
    }
    let pairs = query_pairs(&raw);
    let caller = match resolve(&mut lock(&agent), &headers, &pairs) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    let text = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let name = text("Name");
    if name.is_empty() {
        return bad_request("Missing service name".to_owned());
    }
    let id = Some(text("ID"))
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| name.clone());
    let weights = match body.get("Weights").filter(|w| !w.is_null()) {
        Some(weights) => {
            if let Err(reason) = validate_weights(weights) {
                return bad_request(format!("Invalid Weights: {reason}"));
            }
            weights.clone()
        }
        None => json!({"Passing": 1, "Warning": 1}),
    };
    let meta: BTreeMap<String, String> =
        match serde_json::from_value(body.get("Meta").cloned().unwrap_or(Value::Null)) {
            Ok(meta) => meta,
            Err(_) if body.get("Meta").is_none_or(Value::is_null) => BTreeMap::new(),
            Err(e) => return bad_request(format!("Request decode failed: {e}")),
        };
    if let Err(reason) = validate_meta(&meta) {
        return bad_request(format!("Invalid Service Meta: {reason}"));
    }
    let check = body.get("Check").filter(|c| c.is_object());
    let requested_status = match check.and_then(|c| c.get("Status")).and_then(Value::as_str) {
        None | Some("") => Status::Critical,
        Some(status) => match Status::parse(status) {
            Some(status) => status,
            None => {
                return bad_request(
                    "Status for checks must 'passing', 'warning', 'critical'".to_owned(),
                )
            }
        },
    };
    if !caller.policy.service_write {
        lock(&agent).counters.denied += 1;
        return caller.denied("service:write", &name);
    }
    let replace_existing_checks =
        query_get(&pairs, "replace-existing-checks").is_some_and(|v| v.is_empty() || v == "true");
    let now = Instant::now();
    let mut agent = lock(&agent);
    let previous = agent.services.get(&id);
    // The agent restores the status of a check it already has (same check
    // ID) over the one in the new definition.
    let kept_status = previous.and_then(|s| s.check.as_ref()).map(|c| c.status);
    let maintenance = previous
        .filter(|_| !replace_existing_checks)
        .and_then(|s| s.maintenance.clone());
    let check = check.map(|check| {
        let ttl = check
            .get("TTL")
            .and_then(Value::as_str)
            .and_then(parse_duration);
        let status = kept_status.unwrap_or(requested_status);
        CheckState {
            ttl,
            status,
            deadline: ttl.map(|ttl| now + ttl),
            critical_since: (status == Status::Critical).then_some(now),
            deregister_after: check
                .get("DeregisterCriticalServiceAfter")
                .and_then(Value::as_str)
                .and_then(parse_duration),
        }
    });
    let service = Service {
        id: id.clone(),
        name,
        address: text("Address"),
        port: body
            .get("Port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0),
        tags: serde_json::from_value(body.get("Tags").cloned().unwrap_or(Value::Null))
            .unwrap_or_default(),
        meta,
        weights,
        check,
        maintenance,
    };
    agent.services.insert(id, service);
    agent.bump();
    StatusCode::OK.into_response()
}

async fn deregister(
    State(agent): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: RawQuery,
) -> Response {
    if let Some(fault) = faults(&agent).await {
        return fault;
    }
    let pairs = query_pairs(&raw);
    let mut agent = lock(&agent);
    let caller = match resolve(&mut agent, &headers, &pairs) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    let Some(name) = agent.services.get(&id).map(|s| s.name.clone()) else {
        return (StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}")).into_response();
    };
    if !caller.policy.service_write {
        agent.counters.denied += 1;
        return caller.denied("service:write", &name);
    }
    agent.services.remove(&id);
    agent.bump();
    StatusCode::OK.into_response()
}

async fn pass(
    State(agent): State<Shared>,
    Path(check_id): Path<String>,
    headers: HeaderMap,
    raw: RawQuery,
) -> Response {
    update_ttl(agent, check_id, headers, raw, Status::Passing).await
}

async fn warn(
    State(agent): State<Shared>,
    Path(check_id): Path<String>,
    headers: HeaderMap,
    raw: RawQuery,
) -> Response {
    update_ttl(agent, check_id, headers, raw, Status::Warning).await
}

async fn fail(
    State(agent): State<Shared>,
    Path(check_id): Path<String>,
    headers: HeaderMap,
    raw: RawQuery,
) -> Response {
    update_ttl(agent, check_id, headers, raw, Status::Critical).await
}

async fn update_ttl(
    agent: Shared,
    check_id: String,
    headers: HeaderMap,
    raw: RawQuery,
    status: Status,
) -> Response {
    lock(&agent).counters.pass += 1;
    if let Some(fault) = faults(&agent).await {
        return fault;
    }
    let pairs = query_pairs(&raw);
    let mut agent = lock(&agent);
    let caller = match resolve(&mut agent, &headers, &pairs) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    let id = check_id
        .strip_prefix("service:")
        .unwrap_or(&check_id)
        .to_owned();
    let old_unknown_check = agent.faults.old_unknown_check;
    let Some(service) = agent.services.get(&id).filter(|s| s.check.is_some()) else {
        if old_unknown_check {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("CheckID {check_id:?} does not have associated TTL"),
            )
                .into_response();
        }
        return (
            StatusCode::NOT_FOUND,
            format!("Unknown check ID {check_id:?}. Ensure that the check ID is passed, not the check name."),
        )
            .into_response();
    };
    if !caller.policy.service_write {
        let name = service.name.clone();
        agent.counters.denied += 1;
        return caller.denied("service:write", &name);
    }
    let Some(check) = agent.services.get_mut(&id).and_then(|s| s.check.as_mut()) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some(ttl) = check.ttl else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("CheckID {check_id:?} does not have associated TTL"),
        )
            .into_response();
    };
    let now = Instant::now();
    check.deadline = Some(now + ttl);
    if check.set(status, now) {
        agent.bump();
    }
    StatusCode::OK.into_response()
}

/// `enable` as the agent reads it (`strconv.ParseBool`).
fn enable_param(pairs: &[(String, String)]) -> Result<bool, Refusal> {
    let Some(raw) = query_get(pairs, "enable") else {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "Missing value for enable".to_owned(),
        ));
    };
    parse_bool(raw).ok_or_else(|| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("Invalid value for enable: {raw:?}"),
        )
    })
}

/// Go's `strconv.ParseBool`.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

async fn service_maintenance(
    State(agent): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: RawQuery,
) -> Response {
    if let Some(fault) = faults(&agent).await {
        return fault;
    }
    let pairs = query_pairs(&raw);
    let enable = match enable_param(&pairs) {
        Ok(enable) => enable,
        Err(bad) => return bad.into_response(),
    };
    let mut agent = lock(&agent);
    let caller = match resolve(&mut agent, &headers, &pairs) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    let Some(name) = agent.services.get(&id).map(|s| s.name.clone()) else {
        return (
            StatusCode::NOT_FOUND,
            format!("No service registered with ID {id:?}"),
        )
            .into_response();
    };
    if !caller.policy.service_write {
        agent.counters.denied += 1;
        return caller.denied("service:write", &name);
    }
    let reason = enable.then(|| {
        query_get(&pairs, "reason")
            .unwrap_or("Maintenance mode is enabled for this service, but no reason was provided. This is a default message.")
            .to_owned()
    });
    if let Some(service) = agent.services.get_mut(&id) {
        service.maintenance = reason;
    }
    agent.bump();
    StatusCode::OK.into_response()
}

async fn node_maintenance(
    State(agent): State<Shared>,
    headers: HeaderMap,
    raw: RawQuery,
) -> Response {
    if let Some(fault) = faults(&agent).await {
        return fault;
    }
    let pairs = query_pairs(&raw);
    let enable = match enable_param(&pairs) {
        Ok(enable) => enable,
        Err(bad) => return bad.into_response(),
    };
    let mut agent = lock(&agent);
    if let Err(denied) = resolve(&mut agent, &headers, &pairs) {
        return denied.into_response();
    }
    agent.node.maintenance = enable.then(|| {
        query_get(&pairs, "reason")
            .unwrap_or("Maintenance mode is enabled for this node, but no reason was provided. This is a default message.")
            .to_owned()
    });
    agent.bump();
    StatusCode::OK.into_response()
}

async fn service(
    State(agent): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: RawQuery,
) -> Response {
    if let Some(fault) = faults(&agent).await {
        return fault;
    }
    let pairs = query_pairs(&raw);
    let mut agent = lock(&agent);
    let caller = match resolve(&mut agent, &headers, &pairs) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    let Some(s) = agent.services.get(&id) else {
        return (StatusCode::NOT_FOUND, format!("unknown service ID: {id}")).into_response();
    };
    if !caller.policy.reads_services() {
        let name = s.name.clone();
        agent.counters.denied += 1;
        return caller.denied("service:read", &name);
    }
    Json(
        json!({"ID": s.id, "Service": s.name, "Address": s.address, "Port": s.port,
                "Tags": s.tags, "Meta": s.meta, "Weights": s.weights}),
    )
    .into_response()
}

/// A random fraction in [0, 1), for the server's jitter.
fn random_fraction() -> f64 {
    use std::hash::BuildHasher;
    let bits = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// How long a blocking query with this `wait` may block, as the server's
/// `RPCQueryTimeout` computes it: ≤ 0 or absent is 5 minutes, at most 10
/// minutes, plus up to 1/16 of random jitter.
fn blocking_timeout(wait: Option<i128>) -> Duration {
    const DEFAULT: Duration = Duration::from_secs(300);
    const MAX: Duration = Duration::from_secs(600);
    let wait = match wait {
        Some(nanos) if nanos > 0 => {
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)).min(MAX)
        }
        _ => DEFAULT,
    };
    wait + (wait / 16).mul_f64(random_fraction())
}

fn node_check(id: &str, name: &str, status: Status, notes: &str) -> Value {
    json!({"Node": NODE, "CheckID": id, "Name": name, "Status": status.as_str(),
           "Notes": notes, "Output": "", "ServiceID": "", "ServiceName": "", "ServiceTags": []})
}

/// The entry of `GET /v1/health/service/<name>` for `s`, with every check
/// of the node and of the service.
fn health_entry(node: &NodeState, s: &Service) -> Value {
    let mut checks = vec![node_check(
        "serfHealth",
        "Serf Health Status",
        node.serf,
        "",
    )];
    if let Some(reason) = &node.maintenance {
        checks.push(node_check(
            "_node_maintenance",
            "Node Maintenance Mode",
            Status::Critical,
            reason,
        ));
    }
    let service_check = |id: String, name: String, status: Status, notes: &str| {
        json!({"Node": NODE, "CheckID": id, "Name": name, "Status": status.as_str(),
               "Notes": notes, "Output": "", "ServiceID": s.id, "ServiceName": s.name,
               "ServiceTags": s.tags})
    };
    if let Some(check) = &s.check {
        checks.push(service_check(
            format!("service:{}", s.id),
            format!("Service '{}' check", s.name),
            check.status,
            "",
        ));
    }
    if let Some(reason) = &s.maintenance {
        checks.push(service_check(
            format!("_service_maintenance:{}", s.id),
            "Service Maintenance Mode".to_owned(),
            Status::Critical,
            reason,
        ));
    }
    json!({
        "Node": {"ID": "", "Node": NODE, "Address": "127.0.0.1", "Datacenter": "dc1",
                 "Meta": {}},
        "Service": {
            "ID": s.id, "Service": s.name, "Address": s.address, "Port": s.port,
            "Tags": s.tags, "Meta": s.meta, "Weights": s.weights,
        },
        "Checks": checks,
    })
}

fn all_passing(entry: &Value) -> bool {
    entry["Checks"]
        .as_array()
        .is_none_or(|checks| checks.iter().all(|c| c["Status"] == "passing"))
}

async fn health(
    State(agent): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    raw: RawQuery,
) -> Response {
    if let Some(fault) = faults(&agent).await {
        return fault;
    }
    let pairs = query_pairs(&raw);
    let caller = match resolve(&mut lock(&agent), &headers, &pairs) {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    let passing_only = match query_get(&pairs, "passing") {
        None => false,
        Some("") => true,
        Some(value) => match parse_bool(value) {
            Some(passing) => passing,
            None => return bad_request(format!("Invalid value for ?passing: {value:?}")),
        },
    };
    let wait = match query_get(&pairs, "wait").filter(|w| !w.is_empty()) {
        None => None,
        Some(text) => match parse_go_duration(text) {
            Some(nanos) => Some(nanos),
            None => return bad_request("Invalid wait time".to_owned()),
        },
    };
    let index = match query_get(&pairs, "index").filter(|i| !i.is_empty()) {
        None => 0,
        Some(text) => match text.parse::<u64>() {
            Ok(index) => index,
            Err(_) => return bad_request("Invalid index".to_owned()),
        },
    };
    // Blocking query: wait until the index is past the caller's, however
    // far below it the agent's index is (after a restart it waits it out).
    if index > 0 {
        let mut changed = lock(&agent).changed.subscribe();
        let _ = tokio::time::timeout(
            blocking_timeout(wait),
            changed.wait_for(|current| *current > index),
        )
        .await;
    }
    let garbage = {
        let mut agent = lock(&agent);
        let garbage = agent.faults.garbage_next > 0;
        if garbage {
            agent.faults.garbage_next -= 1;
        }
        garbage
    };
    let wanted_tags: Vec<String> = pairs
        .iter()
        .filter(|(key, _)| key == "tag")
        .map(|(_, tag)| tag.to_lowercase())
        .collect();
    let agent = lock(&agent);
    let mut headers = HeaderMap::new();
    headers.insert(
        "X-Consul-Index",
        agent.index.to_string().parse().expect("digits"),
    );
    if garbage {
        return (StatusCode::OK, headers, "<html>not json</html>").into_response();
    }
    let readable = caller.policy.reads_services() && caller.policy.node_read;
    let mut filtered = false;
    let mut services: Vec<&Service> = agent
        .services
        .values()
        .filter(|s| s.name == name)
        .filter(|s| {
            wanted_tags
                .iter()
                .all(|want| s.tags.iter().any(|t| t.to_lowercase() == *want))
        })
        .filter(|_| {
            filtered |= !readable;
            readable
        })
        .collect();
    services.sort_by(|a, b| a.id.cmp(&b.id));
    let entries: Vec<Value> = services
        .into_iter()
        .map(|s| health_entry(&agent.node, s))
        .filter(|entry| !passing_only || all_passing(entry))
        .collect();
    if filtered && !caller.anonymous {
        headers.insert(
            "X-Consul-Results-Filtered-By-ACLs",
            "true".parse().expect("ascii"),
        );
    }
    (StatusCode::OK, headers, Json(entries)).into_response()
}

/// Marks expired TTL checks critical and reaps services critical too long.
async fn reap(agent: Shared) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut agent = lock(&agent);
        let mut changed = false;
        for service in agent.services.values_mut() {
            if let Some(check) = service.check.as_mut() {
                if check.status != Status::Critical && check.deadline.is_some_and(|d| d <= now) {
                    changed |= check.set(Status::Critical, now);
                }
            }
        }
        let before = agent.services.len();
        agent.services.retain(|_, s| {
            s.check.as_ref().is_none_or(|c| {
                !matches!((c.critical_since, c.deregister_after), (Some(since), Some(after)) if now - since >= after)
            })
        });
        if changed || agent.services.len() != before {
            agent.bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("nonsense"), None);
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("0ms"), Some(0));
        assert_eq!(parse_go_duration("-5s"), Some(-5_000_000_000));
        assert_eq!(parse_go_duration("10"), None, "a unit is required");
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn blocking_timeouts_follow_the_server() {
        for wait in [None, Some(0), Some(-1)] {
            let timeout = blocking_timeout(wait);
            assert!(
                timeout >= Duration::from_secs(300)
                    && timeout < Duration::from_secs(300) + Duration::from_secs(300) / 16,
                "{wait:?}: {timeout:?}"
            );
        }
        let hour = Some(3_600_000_000_000);
        let capped = blocking_timeout(hour);
        assert!(capped >= Duration::from_secs(600) && capped < Duration::from_secs(640));
        let second = blocking_timeout(Some(1_000_000_000));
        assert!(second >= Duration::from_secs(1) && second < Duration::from_millis(1063));
    }

    #[test]
    fn meta_is_validated_as_consul_does() {
        let meta = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(validate_meta(&meta(&[("zone", "a"), ("a_b-C9", "x")])).is_ok());
        for bad in [
            "app.kubernetes.io/name",
            "zone:a",
            "",
            "consul-x",
            &"k".repeat(129),
        ] {
            assert!(validate_meta(&meta(&[(bad, "v")])).is_err(), "{bad:?}");
        }
        assert!(validate_meta(&meta(&[("k", &"v".repeat(512))])).is_ok());
        assert!(validate_meta(&meta(&[("k", &"v".repeat(513))])).is_err());
        let many: BTreeMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_meta(&many).is_err());
    }
}
