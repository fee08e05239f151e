//! What the agent holds. One mutex guards all of it: every request is short
//! and none awaits while holding it, so a finer split would buy nothing.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::{
    acl::Acl,
    checks::{CheckState, NodeState},
    faults::Faults,
};

/// A registered service, as the agent keeps its definition.
#[derive(Debug, Clone)]
pub(super) struct Service {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) address: String,
    pub(super) port: u16,
    pub(super) tags: Vec<String>,
    pub(super) meta: BTreeMap<String, String>,
    pub(super) weights: Value,
    pub(super) check: Option<CheckState>,
    /// `_service_maintenance:<id>`, with its reason.
    pub(super) maintenance: Option<String>,
}

impl Service {
    /// The service as `GET /v1/agent/service/:id` shows it, and as the
    /// `Service` of a health entry.
    pub(super) fn to_json(&self) -> Value {
        json!({"ID": self.id, "Service": self.name, "Address": self.address, "Port": self.port,
               "Tags": self.tags, "Meta": self.meta, "Weights": self.weights})
    }
}

/// Requests seen, by kind (counted before any check, faults included).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counters {
    pub(super) register: usize,
    pub(super) pass: usize,
    pub(super) denied: usize,
}

pub(super) struct Agent {
    pub(super) services: HashMap<String, Service>,
    pub(super) index: u64,
    pub(super) faults: Faults,
    /// The index, for blocking queries to wait on.
    pub(super) changed: watch::Sender<u64>,
    pub(super) node: NodeState,
    /// `None` while ACLs are off.
    pub(super) acl: Option<Acl>,
    pub(super) counters: Counters,
}

impl Agent {
    /// A fresh agent: no services, index 1, a healthy node, ACLs off.
    pub(super) fn new() -> Self {
        let (changed, _) = watch::channel(1);
        Self {
            services: HashMap::new(),
            index: 1,
            faults: Faults::default(),
            changed,
            node: NodeState::default(),
            acl: None,
            counters: Counters::default(),
        }
    }

    /// Records a change: the index grows and blocking queries wake.
    pub(super) fn bump(&mut self) {
        self.index += 1;
        // `send_replace`, not `send`: the index must be stored even while
        // no blocking query is waiting, or the next one would block on a
        // stale value.
        self.changed.send_replace(self.index);
    }
}

pub(super) type Shared = Arc<Mutex<Agent>>;

/// Locks the agent. A test that panicked while holding the lock must not
/// take every later request down with it, so poisoning is ignored.
pub(super) fn lock(agent: &Shared) -> MutexGuard<'_, Agent> {
    agent.lock().unwrap_or_else(PoisonError::into_inner)
}
