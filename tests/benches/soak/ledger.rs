//! Every call's outcome as the client got it, and what each failure is
//! blamed on: a killed server (when the call went to that instance within
//! the kill window) or the fault in progress.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The faults injected in rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// etcd killed (SIGKILL) and restarted with its data.
    Etcd,
    /// One server killed (SIGKILL), a new one started on a new port.
    Server,
    /// The OTLP collector killed and restarted on the same port.
    Collector,
}

impl FaultKind {
    /// The rotation, in order.
    pub const ROTATION: [FaultKind; 3] = [FaultKind::Etcd, FaultKind::Server, FaultKind::Collector];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Etcd => "etcd",
            FaultKind::Server => "server",
            FaultKind::Collector => "collector",
        }
    }
}

/// What a failure that is not a killed server's is blamed on: the fault
/// window it fell in (from a fault's start to the next fault's).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Blame {
    /// Before the first fault.
    pub no_fault: u64,
    pub etcd: u64,
    /// In a server-kill window, but not to the killed instance.
    pub server_other_instance: u64,
    pub collector: u64,
    /// To a killed instance, later than the kill window.
    pub killed_server_late: u64,
}

impl Blame {
    pub fn total(&self) -> u64 {
        self.no_fault
            + self.etcd
            + self.server_other_instance
            + self.collector
            + self.killed_server_late
    }

    fn add(&mut self, other: &Blame) {
        self.no_fault += other.no_fault;
        self.etcd += other.etcd;
        self.server_other_instance += other.server_other_instance;
        self.collector += other.collector;
        self.killed_server_late += other.killed_server_late;
    }
}

/// Calls completed in one minute of the soak.
#[derive(Debug, Default, Clone)]
pub struct MinuteCalls {
    pub ok: u64,
    /// Failed calls to a killed instance within the kill window.
    pub failed_kill: u64,
    /// Every other failed call.
    pub failed_other: Blame,
}

/// One server kill and the failures it caused.
#[derive(Debug, Clone)]
pub struct Kill {
    pub at: Instant,
    pub slot: usize,
    pub address: SocketAddr,
    /// Failed calls to the killed instance within the kill window.
    pub failures: u64,
    /// When the last of them failed, after the kill.
    pub last_failure: Option<Duration>,
}

/// A fault as it started.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub at: Instant,
    pub kind: FaultKind,
    /// The server slot, for server kills.
    pub slot: Option<usize>,
}

/// Distinct failure messages kept; more are only counted.
const MAX_REASONS: usize = 16;

/// Shared by the load tasks, the fault loop and the reporter.
pub struct Ledger {
    start: Instant,
    /// How long after a kill failed calls to the killed instance are the
    /// kill's: the lease TTL plus the time the deletion takes to reach the
    /// load balancer.
    kill_window: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    minutes: Vec<MinuteCalls>,
    faults: Vec<Fault>,
    kills: Vec<Kill>,
    reasons: BTreeMap<String, u64>,
    unlisted_reasons: u64,
}

impl Ledger {
    pub fn new(start: Instant, kill_window: Duration) -> Self {
        Self {
            start,
            kill_window,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The minute (from 0) `at` falls in.
    pub fn minute_of(&self, at: Instant) -> usize {
        usize::try_from(at.saturating_duration_since(self.start).as_secs() / 60).unwrap_or(0)
    }

    /// Notes that a fault starts now; a server kill is noted before the
    /// signal is sent, so that every failure it causes comes after it.
    pub fn fault(&self, kind: FaultKind, slot: Option<usize>, killed: Option<SocketAddr>) {
        let at = Instant::now();
        let mut inner = self.inner();
        inner.faults.push(Fault { at, kind, slot });
        if let (Some(slot), Some(address)) = (slot, killed) {
            inner.kills.push(Kill {
                at,
                slot,
                address,
                failures: 0,
                last_failure: None,
            });
        }
    }

    /// Records one call: `Ok` when the reply came back right, else why not,
    /// with the instance the load balancer picked, when it picked one.
    pub fn record(&self, outcome: Result<(), String>, picked: Option<SocketAddr>) {
        let now = Instant::now();
        let minute = self.minute_of(now);
        let kill_window = self.kill_window;
        let mut guard = self.inner();
        let inner = &mut *guard;
        if inner.minutes.len() <= minute {
            inner.minutes.resize_with(minute + 1, MinuteCalls::default);
        }
        let calls = &mut inner.minutes[minute];
        let reason = match outcome {
            Ok(()) => {
                calls.ok += 1;
                return;
            }
            Err(reason) => reason,
        };
        if let Some(count) = inner.reasons.get_mut(&reason) {
            *count += 1;
        } else if inner.reasons.len() < MAX_REASONS {
            inner.reasons.insert(reason, 1);
        } else {
            inner.unlisted_reasons += 1;
        }
        let kill = picked.and_then(|picked| {
            inner
                .kills
                .iter_mut()
                .rev()
                .find(|kill| kill.address == picked && kill.at <= now)
        });
        if let Some(kill) = kill {
            let after = now - kill.at;
            if after <= kill_window {
                kill.failures += 1;
                kill.last_failure = Some(kill.last_failure.map_or(after, |last| last.max(after)));
                calls.failed_kill += 1;
            } else {
                calls.failed_other.killed_server_late += 1;
            }
            return;
        }
        let window = inner
            .faults
            .iter()
            .rev()
            .find(|f| f.at <= now)
            .map(|f| f.kind);
        let blame = &mut calls.failed_other;
        match window {
            None => blame.no_fault += 1,
            Some(FaultKind::Etcd) => blame.etcd += 1,
            Some(FaultKind::Server) => blame.server_other_instance += 1,
            Some(FaultKind::Collector) => blame.collector += 1,
        }
    }

    /// The calls of `minute` (zeros if none completed in it).
    pub fn minute(&self, minute: usize) -> MinuteCalls {
        self.inner()
            .minutes
            .get(minute)
            .cloned()
            .unwrap_or_default()
    }

    /// The faults that started in `minute`, with their offset from the
    /// start of the soak.
    pub fn faults_in(&self, minute: usize) -> Vec<(Fault, Duration)> {
        self.inner()
            .faults
            .iter()
            .filter(|f| self.minute_of(f.at) == minute)
            .map(|f| (*f, f.at - self.start))
            .collect()
    }

    pub fn kills(&self) -> Vec<Kill> {
        self.inner().kills.clone()
    }

    /// Totals over the whole soak: calls ok, failed by kills, failed
    /// otherwise.
    pub fn totals(&self) -> (u64, u64, Blame) {
        let inner = self.inner();
        let mut other = Blame::default();
        let (mut ok, mut kill) = (0, 0);
        for minute in &inner.minutes {
            ok += minute.ok;
            kill += minute.failed_kill;
            other.add(&minute.failed_other);
        }
        (ok, kill, other)
    }

    /// The distinct failure messages with their counts, and how many
    /// failures had a message beyond the first [`MAX_REASONS`].
    pub fn reasons(&self) -> (Vec<(String, u64)>, u64) {
        let inner = self.inner();
        (
            inner.reasons.iter().map(|(r, n)| (r.clone(), *n)).collect(),
            inner.unlisted_reasons,
        )
    }
}
