//! A stand-in for the Consul agent HTTP API, for machines without Consul.
//!
//! It follows the documented behaviour of the endpoints the registry and
//! resolver use: `PUT /v1/agent/service/register` (with an embedded check),
//! `PUT /v1/agent/service/deregister/:id`, `PUT /v1/agent/check/pass/:id`,
//! `GET /v1/agent/service/:id` and `GET /v1/health/service/:name` with
//! `passing`, `tag` and blocking queries (`index`, `wait`, `X-Consul-Index`).
//! TTL checks turn critical when not passed in time, and critical services
//! are reaped after `DeregisterCriticalServiceAfter`. Path segments (service
//! names, service and check IDs) are percent-decoded, as by a real agent.
//! Fault modes: HTTP 500s, garbage bodies, slow answers, an agent restart
//! that forgets every registration and restarts the index lower, and the
//! answer of older agents to a TTL pass for a check they do not know.
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
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, put},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::watch};

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
}

#[derive(Debug, Clone)]
struct CheckState {
    ttl: Option<Duration>,
    passing: bool,
    deadline: Option<Instant>,
    critical_since: Option<Instant>,
    deregister_after: Option<Duration>,
}

#[derive(Debug, Default)]
struct Faults {
    fail_next: usize,
    garbage_next: usize,
    delay: Duration,
    old_unknown_check: bool,
}

struct Agent {
    services: HashMap<String, Service>,
    index: u64,
    faults: Faults,
    changed: watch::Sender<u64>,
}

impl Agent {
    fn bump(&mut self) {
        self.index += 1;
        let _ = self.changed.send(self.index);
    }
}

type Shared = Arc<Mutex<Agent>>;

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
        }));
        let app = Router::new()
            .route("/v1/agent/service/register", put(register))
            .route("/v1/agent/service/deregister/{id}", put(deregister))
            .route("/v1/agent/check/pass/{id}", put(pass))
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

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `count` requests answer HTTP 500.
    pub fn fail_next(&self, count: usize) {
        self.agent.lock().unwrap().faults.fail_next = count;
    }

    /// The next `count` health queries answer 200 with a body that is not JSON.
    pub fn garbage_next(&self, count: usize) {
        self.agent.lock().unwrap().faults.garbage_next = count;
    }

    /// Every answer is delayed by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.agent.lock().unwrap().faults.delay = delay;
    }

    /// Answers a TTL pass for a check the agent does not know as older
    /// agents (ACLs off) do: HTTP 500 `CheckID "…" does not have associated
    /// TTL`, instead of today's 404 `Unknown check ID "…"`.
    pub fn answer_unknown_checks_the_old_way(&self, on: bool) {
        self.agent.lock().unwrap().faults.old_unknown_check = on;
    }

    /// An agent restart: every registration is forgotten and the index
    /// starts again, lower than before.
    pub fn restart(&self) {
        let mut agent = self.agent.lock().unwrap();
        agent.services.clear();
        agent.index = 1;
        let _ = agent.changed.send(1);
    }

    /// The IDs of the registered services.
    pub fn service_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self
            .agent
            .lock()
            .unwrap()
            .services
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }
}

impl Drop for ConsulStandIn {
    fn drop(&mut self) {
        self.task.abort();
        self.reaper.abort();
    }
}

/// Applies the fault modes; `Some` is the answer to send instead.
async fn faults(agent: &Shared) -> Option<Response> {
    let (delay, fail) = {
        let mut agent = agent.lock().unwrap();
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

/// Go duration strings as Consul accepts them: `10s`, `1500ms`, `1m30s`.
fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => value / 1e9,
            "us" | "µs" => value / 1e6,
            "ms" => value / 1e3,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return None,
        };
        total += Duration::from_secs_f64(seconds);
        rest = &rest[unit_len..];
    }
    Some(total)
}

async fn register(State(agent): State<Shared>, Json(body): Json<Value>) -> Response {
    if let Some(fault) = faults(&agent).await {
        return fault;
    }
    let text = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let name = text("Name");
    if name.is_empty() {
        return (StatusCode::BAD_REQUEST, "Missing service name").into_response();
    }
    let id = Some(text("ID"))
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| name.clone());
    let check = body.get("Check").filter(|c| c.is_object()).map(|check| {
        let ttl = check
            .get("TTL")
            .and_then(Value::as_str)
            .and_then(parse_duration);
        let passing = check.get("Status").and_then(Value::as_str) == Some("passing");
        CheckState {
            ttl,
            passing,
            deadline: ttl.map(|ttl| Instant::now() + ttl),
            critical_since: (!passing).then(Instant::now),
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
        port: body.get("Port").and_then(Value::as_u64).unwrap_or(0) as u16,
        tags: serde_json::from_value(body.get("Tags").cloned().unwrap_or(Value::Null))
            .unwrap_or_default(),
        meta: serde_json::from_value(body.get("Meta").cloned().unwrap_or(Value::Null))
            .unwrap_or_default(),
        weights: body
            .get("Weights")
            .cloned()
            .unwrap_or(json!({"Passing": 1, "Warning": 1})),
        check,
    };
    let mut agent = agent.lock().unwrap();
    agent.services.insert(id, service);
    agent.bump();
    StatusCode::OK.into_response()
}

async fn deregister(State(agent): State<Shared>, Path(id): Path<String>) -> Response {
    if let Some(fault) = faults(&agent).await {
        return fault;
    }
    let mut agent = agent.lock().unwrap();
    if agent.services.remove(&id).is_none() {
        return (StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}")).into_response();
    }
    agent.bump();
    StatusCode::OK.into_response()
}

async fn pass(State(agent): State<Shared>, Path(check_id): Path<String>) -> Response {
    if let Some(fault) = faults(&agent).await {
        return fault;
    }
    let mut agent = agent.lock().unwrap();
    let id = check_id
        .strip_prefix("service:")
        .unwrap_or(&check_id)
        .to_owned();
    let old_unknown_check = agent.faults.old_unknown_check;
    let Some(check) = agent.services.get_mut(&id).and_then(|s| s.check.as_mut()) else {
        if old_unknown_check {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("CheckID {check_id:?} does not have associated TTL"),
            )
                .into_response();
        }
        return (
            StatusCode::NOT_FOUND,
            format!("Unknown check ID {check_id:?}"),
        )
            .into_response();
    };
    let Some(ttl) = check.ttl else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "check is not a TTL check",
        )
            .into_response();
    };
    let was_passing = check.passing;
    check.passing = true;
    check.deadline = Some(Instant::now() + ttl);
    check.critical_since = None;
    if !was_passing {
        agent.bump();
    }
    StatusCode::OK.into_response()
}

async fn service(State(agent): State<Shared>, Path(id): Path<String>) -> Response {
    if let Some(fault) = faults(&agent).await {
        return fault;
    }
    let agent = agent.lock().unwrap();
    match agent.services.get(&id) {
        Some(s) => Json(
            json!({"ID": s.id, "Service": s.name, "Address": s.address, "Port": s.port,
                        "Tags": s.tags, "Meta": s.meta, "Weights": s.weights}),
        )
        .into_response(),
        None => (StatusCode::NOT_FOUND, "unknown service").into_response(),
    }
}

#[derive(Deserialize)]
struct HealthQuery {
    index: Option<u64>,
    wait: Option<String>,
    passing: Option<String>,
}

async fn health(
    State(agent): State<Shared>,
    Path(name): Path<String>,
    Query(query): Query<HealthQuery>,
    raw: axum::extract::RawQuery,
) -> Response {
    if let Some(fault) = faults(&agent).await {
        return fault;
    }
    // Blocking query: wait while the index has not moved past the caller's.
    if let Some(index) = query.index.filter(|i| *i > 0) {
        let wait = query
            .wait
            .as_deref()
            .and_then(parse_duration)
            .unwrap_or(Duration::from_secs(300))
            .min(Duration::from_secs(600));
        let mut changed = agent.lock().unwrap().changed.subscribe();
        let _ = tokio::time::timeout(wait, changed.wait_for(|current| *current != index)).await;
    }
    let garbage = {
        let mut agent = agent.lock().unwrap();
        let garbage = agent.faults.garbage_next > 0;
        if garbage {
            agent.faults.garbage_next -= 1;
        }
        garbage
    };
    let raw = raw.0.unwrap_or_default();
    let wanted_tags: Vec<String> = form_urlencoded::parse(raw.as_bytes())
        .filter(|(key, _)| key == "tag")
        .map(|(_, tag)| tag.into_owned())
        .collect();
    let passing_only = query.passing.is_some();
    let agent = agent.lock().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "X-Consul-Index",
        agent.index.to_string().parse().expect("digits"),
    );
    if garbage {
        return (StatusCode::OK, headers, "<html>not json</html>").into_response();
    }
    let entries: Vec<Value> = agent
        .services
        .values()
        .filter(|s| s.name == name)
        .filter(|s| !passing_only || s.check.as_ref().is_none_or(|c| c.passing))
        .filter(|s| wanted_tags.iter().all(|t| s.tags.contains(t)))
        .map(|s| {
            let status = if s.check.as_ref().is_none_or(|c| c.passing) {
                "passing"
            } else {
                "critical"
            };
            json!({
                "Node": {"Node": "stand-in", "Address": "127.0.0.1"},
                "Service": {
                    "ID": s.id, "Service": s.name, "Address": s.address, "Port": s.port,
                    "Tags": s.tags, "Meta": s.meta, "Weights": s.weights,
                },
                "Checks": [{"CheckID": format!("service:{}", s.id), "Status": status}],
            })
        })
        .collect();
    (StatusCode::OK, headers, Json(entries)).into_response()
}

/// Marks expired TTL checks critical and reaps services critical too long.
async fn reap(agent: Shared) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut agent = agent.lock().unwrap();
        let mut changed = false;
        for service in agent.services.values_mut() {
            if let Some(check) = service.check.as_mut() {
                if check.passing && check.deadline.is_some_and(|d| d <= now) {
                    check.passing = false;
                    check.critical_since = Some(now);
                    changed = true;
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
    }
}
