//! Health checks: the statuses, a service's check with its TTL, the node's
//! own checks, and the reaper that expires TTLs and removes services
//! critical for too long, as the agent's check runners do in the background.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    go::parse_duration,
    state::{lock, Shared},
};

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
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    pub(super) fn parse(text: &str) -> Option<Self> {
        match text {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }
}

/// A service's check (the one embedded in its registration).
#[derive(Debug, Clone)]
pub(super) struct CheckState {
    /// Set for TTL checks: a pass must come within it.
    pub(super) ttl: Option<Duration>,
    pub(super) status: Status,
    /// When the TTL runs out.
    pub(super) deadline: Option<Instant>,
    pub(super) critical_since: Option<Instant>,
    /// `DeregisterCriticalServiceAfter`.
    pub(super) deregister_after: Option<Duration>,
}

impl CheckState {
    /// The check of a registration's `Check` object, starting in `status`.
    pub(super) fn new(definition: &Value, status: Status, now: Instant) -> Self {
        let duration = |key: &str| {
            definition
                .get(key)
                .and_then(Value::as_str)
                .and_then(parse_duration)
        };
        let ttl = duration("TTL");
        Self {
            ttl,
            status,
            deadline: ttl.map(|ttl| now + ttl),
            critical_since: (status == Status::Critical).then_some(now),
            deregister_after: duration("DeregisterCriticalServiceAfter"),
        }
    }

    /// Sets the status; `true` if it changed.
    pub(super) fn set(&mut self, status: Status, now: Instant) -> bool {
        if self.status == status {
            return false;
        }
        self.status = status;
        self.critical_since = (status == Status::Critical).then_some(now);
        true
    }

    /// Critical for longer than `DeregisterCriticalServiceAfter`.
    fn due_for_reaping(&self, now: Instant) -> bool {
        matches!((self.critical_since, self.deregister_after), (Some(since), Some(after)) if now - since >= after)
    }
}

/// The node's own checks: `serfHealth` and `_node_maintenance`.
#[derive(Debug)]
pub(super) struct NodeState {
    pub(super) serf: Status,
    /// `_node_maintenance`, with its reason.
    pub(super) maintenance: Option<String>,
}

impl Default for NodeState {
    /// A node that is up and not in maintenance.
    fn default() -> Self {
        Self {
            serf: Status::Passing,
            maintenance: None,
        }
    }
}

/// Marks expired TTL checks critical and reaps services critical too long.
pub(super) async fn reap(agent: Shared) {
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
        agent
            .services
            .retain(|_, s| s.check.as_ref().is_none_or(|c| !c.due_for_reaping(now)));
        if changed || agent.services.len() != before {
            agent.bump();
        }
    }
}
