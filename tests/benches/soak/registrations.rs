//! What etcd itself holds, read with a plain etcd client several times a
//! second: every live server's key must be there (a key missing longer than
//! the lease TTL plus a grace is a lost registration), and a killed
//! server's key must go when its lease expires.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use etcd_client::GetOptions;

/// The registrations the soak expects, and what etcd showed of them.
pub struct Registrations {
    /// A live key missing this long is lost.
    lost_after: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Started servers whose key has not been seen yet, with their start.
    pending: HashMap<SocketAddr, Instant>,
    /// Start → key first seen, per server started.
    registered_after: Vec<Duration>,
    live: HashMap<SocketAddr, Live>,
    /// Killed instances whose key etcd still holds, with the kill time.
    dead: HashMap<SocketAddr, Instant>,
    /// Kill → key gone, per killed instance.
    removed_after: Vec<(SocketAddr, Duration)>,
    lost: u64,
    longest_missing: Duration,
    minute_longest_missing: Duration,
    /// Keys of addresses the soak never started (bounded by what is in etcd
    /// under the soak's own prefix).
    stray: BTreeSet<SocketAddr>,
    last_read: Option<Snapshot>,
    failed_reads: u64,
    minute_failed_reads: u64,
}

#[derive(Default)]
struct Live {
    missing_since: Option<Instant>,
    counted_lost: bool,
}

/// What the last successful read showed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Live instances whose key is there.
    pub live_present: usize,
    /// Live instances.
    pub live: usize,
    /// Keys of killed instances not yet expired.
    pub dead_present: usize,
}

/// One minute of readings, for the table.
#[derive(Debug, Clone, Copy, Default)]
pub struct MinuteRegistrations {
    pub last: Option<Snapshot>,
    /// The longest a live key was seen missing in the minute.
    pub longest_missing: Duration,
    /// Reads that failed (etcd down).
    pub failed_reads: u64,
}

/// Over the whole soak.
#[derive(Debug, Clone, Default)]
pub struct RegistrationSummary {
    pub lost: u64,
    pub longest_missing: Duration,
    pub removed_after: Vec<(SocketAddr, Duration)>,
    /// Start of a server process → its key first seen in etcd.
    pub registered_after: Vec<Duration>,
    /// Killed instances whose key was still there at the end, with how long
    /// since their kill.
    pub still_there: Vec<(SocketAddr, Duration)>,
    pub stray: BTreeSet<SocketAddr>,
}

impl Registrations {
    pub fn new(lost_after: Duration) -> Self {
        Self {
            lost_after,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A server is starting: once etcd shows its key, the key must stay.
    pub fn expect(&self, address: SocketAddr) {
        self.inner().pending.insert(address, Instant::now());
    }

    /// Whether etcd has shown the key of a server started with
    /// [`Registrations::expect`].
    pub fn is_live(&self, address: SocketAddr) -> bool {
        self.inner().live.contains_key(&address)
    }

    /// A server is being killed: its key must go within its lease.
    pub fn kill(&self, address: SocketAddr, at: Instant) {
        let mut inner = self.inner();
        inner.pending.remove(&address);
        if let Some(live) = inner.live.remove(&address) {
            // Missing before the kill and never back: still lost.
            if let Some(since) = live.missing_since {
                if at - since > self.lost_after && !live.counted_lost {
                    inner.lost += 1;
                }
            }
        }
        inner.dead.insert(address, at);
    }

    /// Reads etcd once and compares; a failed read (etcd down) is counted
    /// and tells nothing.
    pub async fn read(&self, etcd: &mut etcd_client::Client, prefix: &str) {
        let read = tokio::time::timeout(
            Duration::from_secs(1),
            etcd.get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await;
        let now = Instant::now();
        let keys: BTreeSet<SocketAddr> = match read {
            Ok(Ok(response)) => response
                .kvs()
                .iter()
                .filter_map(|kv| kv.key_str().ok()?.strip_prefix(prefix)?.parse().ok())
                .collect(),
            _ => {
                let mut inner = self.inner();
                inner.failed_reads += 1;
                inner.minute_failed_reads += 1;
                return;
            }
        };
        self.observe(&keys, now);
    }

    fn observe(&self, keys: &BTreeSet<SocketAddr>, now: Instant) {
        let lost_after = self.lost_after;
        let mut inner = self.inner();
        let inner = &mut *inner;
        let seen: Vec<SocketAddr> = inner
            .pending
            .keys()
            .filter(|address| keys.contains(*address))
            .copied()
            .collect();
        for address in seen {
            if let Some(started) = inner.pending.remove(&address) {
                inner.registered_after.push(now - started);
                inner.live.insert(address, Live::default());
            }
        }
        let mut live_present = 0;
        for (address, live) in &mut inner.live {
            if keys.contains(address) {
                live_present += 1;
                if let Some(since) = live.missing_since.take() {
                    inner.longest_missing = inner.longest_missing.max(now - since);
                    inner.minute_longest_missing = inner.minute_longest_missing.max(now - since);
                }
                live.counted_lost = false;
                continue;
            }
            let since = *live.missing_since.get_or_insert(now);
            let missing = now - since;
            inner.longest_missing = inner.longest_missing.max(missing);
            inner.minute_longest_missing = inner.minute_longest_missing.max(missing);
            if missing > lost_after && !live.counted_lost {
                live.counted_lost = true;
                inner.lost += 1;
            }
        }
        let mut gone = Vec::new();
        for (address, killed) in &inner.dead {
            if !keys.contains(address) {
                gone.push((*address, now - *killed));
            }
        }
        for (address, after) in gone {
            inner.dead.remove(&address);
            inner.removed_after.push((address, after));
        }
        for key in keys {
            let known = inner.live.contains_key(key)
                || inner.dead.contains_key(key)
                || inner.pending.contains_key(key);
            if !known {
                inner.stray.insert(*key);
            }
        }
        inner.last_read = Some(Snapshot {
            live_present,
            live: inner.live.len(),
            dead_present: inner.dead.len(),
        });
    }

    /// The minute's readings; starts the next minute.
    pub fn take_minute(&self) -> MinuteRegistrations {
        let mut inner = self.inner();
        let minute = MinuteRegistrations {
            last: inner.last_read,
            longest_missing: inner.minute_longest_missing,
            failed_reads: inner.minute_failed_reads,
        };
        inner.minute_longest_missing = Duration::ZERO;
        inner.minute_failed_reads = 0;
        minute
    }

    pub fn summary(&self) -> RegistrationSummary {
        let inner = self.inner();
        let now = Instant::now();
        RegistrationSummary {
            lost: inner.lost,
            longest_missing: inner.longest_missing,
            removed_after: inner.removed_after.clone(),
            registered_after: inner.registered_after.clone(),
            still_there: inner
                .dead
                .iter()
                .map(|(address, killed)| (*address, now - *killed))
                .collect(),
            stray: inner.stray.clone(),
        }
    }
}
