//! Which registration Leases are live, judged on the resolver's own clock.
//!
//! A Lease is live until its `leaseDurationSeconds` have passed since the
//! resolver last saw its `renewTime` (or holder) change, or first saw it —
//! the observed-time rule of client-go's leader election, which makes clock
//! skew between the registering node and the resolver irrelevant. A Lease a
//! slice names but that does not exist is live for a grace period from the
//! moment it was first missed; one that is deleted, for the shorter of what
//! it had left and that grace.
//!
//! The clock stands still while the Lease watch is down
//! ([`Liveness::pause`]): renewals made meanwhile cannot be seen, so that
//! time must not count against them.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::Duration,
};

use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use tokio::time::Instant;

/// Longest lease duration honoured: a Lease claiming more (up to 68 years
/// fit in `leaseDurationSeconds`) is held to a day, so that a deadline is
/// always a time the clock can reach.
const LONGEST: Duration = Duration::from_secs(24 * 60 * 60);

/// What identifies one renewal: a new `renewTime` or a new holder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
}

#[derive(Debug)]
struct Observed {
    stamp: Stamp,
    /// On [`Clock`] time.
    deadline: Duration,
}

/// Monotonic time since the resolver started following, not counting the
/// periods it was paused.
#[derive(Debug)]
struct Clock {
    base: Instant,
    paused_before: Duration,
    paused_since: Option<Instant>,
}

impl Clock {
    fn new(base: Instant) -> Self {
        Self {
            base,
            paused_before: Duration::ZERO,
            paused_since: None,
        }
    }

    fn at(&self, at: Instant) -> Duration {
        let paused = self.paused_before
            + self
                .paused_since
                .map_or(Duration::ZERO, |since| at.saturating_duration_since(since));
        at.saturating_duration_since(self.base)
            .saturating_sub(paused)
    }

    /// The instant the clock shows `time`, if it is running.
    fn instant_of(&self, time: Duration) -> Option<Instant> {
        if self.paused_since.is_some() {
            return None;
        }
        self.base.checked_add(time.checked_add(self.paused_before)?)
    }
}

/// The liveness of the Leases of one Service's registry slices.
///
/// Holds an entry per Lease the (label-selected) Lease watch shows, removed
/// when the Lease is deleted, and one per missing Lease that a current
/// slice names, removed when no slice names it: no more than the API server
/// holds for the Service.
#[derive(Debug)]
pub(super) struct Liveness {
    leases: HashMap<String, Observed>,
    /// Missing Leases that slices name, with their deadline.
    missing: HashMap<String, Duration>,
    grace: Duration,
    clock: Clock,
    /// The names a list in progress has shown so far.
    listing: Option<HashSet<String>>,
}

impl Liveness {
    /// `grace`: how long a missing Lease stays live, and the duration of a
    /// Lease that has none.
    pub(super) fn new(grace: Duration, now: Instant) -> Self {
        Self {
            leases: HashMap::new(),
            missing: HashMap::new(),
            grace: grace.min(LONGEST),
            clock: Clock::new(now),
            listing: None,
        }
    }

    /// A list of the Leases begins: those it does not show are deleted
    /// when it ends.
    pub(super) fn start_list(&mut self) {
        self.listing = Some(HashSet::new());
    }

    /// The Lease watch shows `lease` (listed, added or modified); whether
    /// that may change which slices are used: an expired Lease renewed, or
    /// a Lease appearing that a slice was waiting for (missing or
    /// deleted). The renewal of a live Lease changes nothing, so that the
    /// steady stream of renewals costs no republication.
    pub(super) fn observe(&mut self, lease: &Lease, now: Instant) -> bool {
        let Some(name) = lease.metadata.name.clone() else {
            return false;
        };
        let spec = lease.spec.as_ref();
        let stamp = Stamp {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
        };
        let duration = spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|seconds| u64::try_from(seconds).ok())
            .filter(|seconds| *seconds > 0)
            .map_or(self.grace, |seconds| {
                Duration::from_secs(seconds).min(LONGEST)
            });
        if let Some(listing) = &mut self.listing {
            listing.insert(name.clone());
        }
        let awaited = self.missing.remove(&name).is_some();
        let clock = self.clock.at(now);
        match self.leases.get_mut(&name) {
            // Seen again unchanged (a re-list, another field changed): no
            // renewal, the deadline stays.
            Some(observed) if observed.stamp == stamp => false,
            Some(observed) => {
                let expired = observed.deadline <= clock;
                observed.stamp = stamp;
                observed.deadline = clock + duration;
                expired
            }
            None => {
                self.leases.insert(
                    name,
                    Observed {
                        stamp,
                        deadline: clock + duration,
                    },
                );
                // A Lease no slice names changes no slice's liveness.
                awaited
            }
        }
    }

    /// The list that [`Self::start_list`] began is complete: Leases it did
    /// not show were deleted meanwhile. It also ends a pause.
    pub(super) fn finish_list(&mut self, now: Instant) {
        if let Some(listed) = self.listing.take() {
            let gone: Vec<String> = self
                .leases
                .keys()
                .filter(|name| !listed.contains(*name))
                .cloned()
                .collect();
            for name in gone {
                self.forget(&name, now);
            }
        }
        self.resume(now);
    }

    /// The Lease `name` was deleted. Slices still naming it keep their
    /// endpoint for what the Lease had left, or the grace if shorter (it
    /// may be re-created by its holder).
    pub(super) fn forget(&mut self, name: &str, now: Instant) {
        if let Some(observed) = self.leases.remove(name) {
            let deadline = observed.deadline.min(self.clock.at(now) + self.grace);
            self.missing.insert(name.to_owned(), deadline);
        }
    }

    /// Brings the missing entries in line with the Leases the current
    /// slices name: a newly named missing Lease starts its grace now, one no
    /// slice names any more is dropped.
    pub(super) fn track<'a>(&mut self, named: impl IntoIterator<Item = &'a str>, now: Instant) {
        let named: BTreeSet<&str> = named.into_iter().collect();
        self.missing.retain(|name, _| named.contains(name.as_str()));
        let deadline = self.clock.at(now) + self.grace;
        for name in named {
            if !self.leases.contains_key(name) {
                self.missing.entry(name.to_owned()).or_insert(deadline);
            }
        }
    }

    /// Whether the endpoints of a slice naming Lease `name` are used.
    /// A name neither observed nor [tracked](Self::track) is live.
    pub(super) fn is_live(&self, name: &str, now: Instant) -> bool {
        let clock = self.clock.at(now);
        let deadline = self
            .leases
            .get(name)
            .map(|observed| observed.deadline)
            .or_else(|| self.missing.get(name).copied());
        deadline.is_none_or(|deadline| clock < deadline)
    }

    /// When the next Lease expires, if one will and the clock runs.
    pub(super) fn next_expiry(&self, now: Instant) -> Option<Instant> {
        let clock = self.clock.at(now);
        self.leases
            .values()
            .map(|observed| observed.deadline)
            .chain(self.missing.values().copied())
            .filter(|deadline| *deadline > clock)
            .min()
            .and_then(|deadline| self.clock.instant_of(deadline))
    }

    /// The Lease watch failed: renewals cannot be seen from now on, so time
    /// stops counting until a new list completes.
    pub(super) fn pause(&mut self, now: Instant) {
        self.clock.paused_since.get_or_insert(now);
    }

    fn resume(&mut self, now: Instant) {
        if let Some(since) = self.clock.paused_since.take() {
            self.clock.paused_before += now.saturating_duration_since(since);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::coordination::v1::LeaseSpec,
        apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    };

    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    fn lease(name: &str, renewed: i64, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("a".to_owned()),
                lease_duration_seconds: Some(seconds),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    fn after(start: Instant, seconds: u64) -> Instant {
        start + Duration::from_secs(seconds)
    }

    #[test]
    fn a_lease_lives_for_its_duration_after_its_renewal_was_seen() {
        let t0 = Instant::now();
        let mut liveness = Liveness::new(GRACE, t0);
        liveness.observe(&lease("l", 1_000, 10), t0);
        assert!(liveness.is_live("l", after(t0, 9)));
        assert_eq!(liveness.next_expiry(after(t0, 9)), Some(after(t0, 10)));
        assert!(!liveness.is_live("l", after(t0, 10)));
        assert_eq!(liveness.next_expiry(after(t0, 10)), None);
        // The same renewTime seen again (a re-list) renews nothing...
        liveness.observe(&lease("l", 1_000, 10), after(t0, 11));
        assert!(!liveness.is_live("l", after(t0, 11)));
        // ...a new one does, whatever its value says about the clocks: a
        // renewTime far in the past counts from when it was seen.
        liveness.observe(&lease("l", 5, 10), after(t0, 12));
        assert!(liveness.is_live("l", after(t0, 21)));
        assert!(!liveness.is_live("l", after(t0, 22)));
    }

    #[test]
    fn only_a_change_of_liveness_is_reported() {
        let t0 = Instant::now();
        let mut liveness = Liveness::new(GRACE, t0);
        // A Lease no slice names: nothing to change.
        assert!(!liveness.observe(&lease("l", 1, 10), t0));
        // Renewed while live: the deadline moves, nothing else.
        assert!(!liveness.observe(&lease("l", 2, 10), after(t0, 9)));
        assert!(liveness.is_live("l", after(t0, 18)));
        // Seen again unchanged: no renewal.
        assert!(!liveness.observe(&lease("l", 2, 10), after(t0, 19)));
        assert!(!liveness.is_live("l", after(t0, 19)));
        // Renewed once expired: live again, a change.
        assert!(liveness.observe(&lease("l", 3, 10), after(t0, 20)));
        assert!(liveness.is_live("l", after(t0, 29)));
        // A Lease a slice was waiting for, whether in its grace or past
        // it, and one created again after its deletion.
        liveness.track(["waited", "late", "l"], after(t0, 20));
        assert!(liveness.observe(&lease("waited", 1, 10), after(t0, 21)));
        assert!(liveness.observe(&lease("late", 1, 10), after(t0, 60)));
        liveness.forget("l", after(t0, 61));
        assert!(liveness.observe(&lease("l", 4, 10), after(t0, 62)));
    }

    #[test]
    fn a_missing_lease_lives_for_the_grace_from_first_sight() {
        let t0 = Instant::now();
        let mut liveness = Liveness::new(GRACE, t0);
        liveness.track(["m"], after(t0, 5));
        // Tracking again does not restart the grace.
        liveness.track(["m"], after(t0, 20));
        assert!(liveness.is_live("m", after(t0, 34)));
        assert!(!liveness.is_live("m", after(t0, 35)));
        // No slice names it any more: forgotten, bounded.
        liveness.track([], after(t0, 36));
        assert!(liveness.missing.is_empty());
    }

    #[test]
    fn a_deleted_lease_keeps_what_it_had_left_or_the_grace_if_shorter() {
        let t0 = Instant::now();
        let mut liveness = Liveness::new(GRACE, t0);
        liveness.observe(&lease("short", 1, 10), t0);
        liveness.observe(&lease("long", 1, 100), t0);
        liveness.forget("short", after(t0, 1));
        liveness.forget("long", after(t0, 1));
        liveness.track(["short", "long"], after(t0, 1));
        assert!(!liveness.is_live("short", after(t0, 10)));
        assert!(liveness.is_live("long", after(t0, 30)));
        assert!(!liveness.is_live("long", after(t0, 31)));
        // Created again by its holder: live again.
        liveness.observe(&lease("long", 2, 100), after(t0, 40));
        assert!(liveness.is_live("long", after(t0, 139)));
        assert_eq!(liveness.leases.keys().collect::<Vec<_>>(), ["long"]);
        assert_eq!(liveness.missing.keys().collect::<Vec<_>>(), ["short"]);
    }

    #[test]
    fn a_list_that_misses_a_lease_deletes_it() {
        let t0 = Instant::now();
        let mut liveness = Liveness::new(GRACE, t0);
        liveness.observe(&lease("kept", 1, 10), t0);
        liveness.observe(&lease("gone", 1, 10), t0);
        liveness.start_list();
        liveness.observe(&lease("kept", 1, 10), after(t0, 2));
        liveness.finish_list(after(t0, 2));
        assert_eq!(liveness.leases.keys().collect::<Vec<_>>(), ["kept"]);
        // Unchanged by the list: its deadline is the first one.
        assert!(!liveness.is_live("kept", after(t0, 10)));
    }

    #[test]
    fn time_does_not_count_while_paused() {
        let t0 = Instant::now();
        let mut liveness = Liveness::new(GRACE, t0);
        liveness.observe(&lease("l", 1, 10), t0);
        liveness.pause(after(t0, 4));
        assert!(liveness.is_live("l", after(t0, 100)));
        assert_eq!(liveness.next_expiry(after(t0, 100)), None);
        liveness.start_list();
        liveness.observe(&lease("l", 1, 10), after(t0, 100));
        liveness.finish_list(after(t0, 100));
        // 4 s had passed before the pause: 6 s are left.
        assert_eq!(liveness.next_expiry(after(t0, 100)), Some(after(t0, 106)));
        assert!(liveness.is_live("l", after(t0, 105)));
        assert!(!liveness.is_live("l", after(t0, 106)));
    }

    #[test]
    fn absurd_durations_neither_panic_nor_last_beyond_a_day() {
        let t0 = Instant::now();
        let mut liveness = Liveness::new(GRACE, t0);
        liveness.observe(&lease("huge", 1, i32::MAX), t0);
        liveness.observe(&lease("zero", 1, 0), t0);
        liveness.observe(&lease("negative", 1, -5), t0);
        assert!(!liveness.is_live("huge", t0 + LONGEST));
        // No valid duration: the grace.
        assert!(liveness.is_live("zero", after(t0, 29)));
        assert!(!liveness.is_live("negative", after(t0, 30)));
    }
}
