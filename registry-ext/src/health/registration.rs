//! The health of one registration: its state and its keeper's counters.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::Clock;

/// Where a registration stands, as its keeper knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RegistrationState {
    /// The backend holds the registration: it was written, and since then
    /// every renewal succeeded or the failures were not (yet) a loss — an
    /// etcd lease within its TTL, a Consul agent that has not answered
    /// "unknown", a Kubernetes Lease within its duration. Failed renewals
    /// show in [`renewals_failed`](RegistrationHealth::renewals_failed).
    Registered,
    /// The backend lost the registration (etcd lease expired or gone,
    /// Consul agent forgot the service, Kubernetes EndpointSlice deleted or
    /// Lease unrenewed for its duration) and the keeper is writing it again,
    /// retrying with backoff until it succeeds or the handle is dropped.
    /// Resolvers may not see the instance meanwhile. A ZooKeeper
    /// registration that handed its node over to a successor process's
    /// registration of the same address is in this state too, until its
    /// handle goes: the backend holds the successor's, and this keeper no
    /// longer writes it.
    Reregistering,
}

impl RegistrationState {
    /// `"registered"` or `"reregistering"`: a label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Reregistering => "reregistering",
        }
    }

    const fn bit(self) -> u64 {
        match self {
            Self::Registered => 0,
            Self::Reregistering => 1,
        }
    }

    const fn from_bit(bit: u64) -> Self {
        if bit & 1 == 0 {
            Self::Registered
        } else {
            Self::Reregistering
        }
    }
}

impl std::fmt::Display for RegistrationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One live registration, as read by
/// [`RegistryHealth::snapshot`](super::RegistryHealth::snapshot).
///
/// The counters only grow, from zero when the registration was made; the
/// entry goes away when the [`Registration`](crate::Registration) is
/// deregistered or dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationHealth {
    /// `etcd`, `consul`, `k8s` or `memory`.
    pub backend: &'static str,
    /// The registered service.
    pub service: Arc<str>,
    /// The registered (advertised) address.
    pub address: SocketAddr,
    /// The current state.
    pub state: RegistrationState,
    /// How long the registration has been in `state`: since it was made,
    /// lost, or written again.
    pub in_state_for: Duration,
    /// Renewals the backend confirmed: an etcd lease keep-alive answered
    /// with a TTL; a Consul TTL check passed, or for checks the agent runs
    /// (HTTP, gRPC, TCP) the agent confirming it still has the service; a
    /// Kubernetes Lease renewal the API server stored. Zero for the
    /// in-process backend, which needs none.
    pub renewals_ok: u64,
    /// The keeper's failures: each renewal that failed or was refused, each
    /// loss found by renewing (etcd: the lease not found, or its TTL passed
    /// unrenewed; Consul: the agent no longer knows the check or service;
    /// Kubernetes: the EndpointSlice found deleted), each failed check
    /// (Kubernetes: a failed read of the slice), and each failed attempt to
    /// write the registration again. Rising while `renewals_ok` stands
    /// still is the keep-alive failing.
    pub renewals_failed: u64,
    /// Times the registration was written again after the backend lost it
    /// (each return from [`Reregistering`](RegistrationState::Reregistering)
    /// to [`Registered`](RegistrationState::Registered) by a new write).
    pub reregistrations: u64,
}

/// What the keeper of one registration records, read by snapshots.
#[derive(Debug)]
pub(super) struct RegistrationCell {
    backend: &'static str,
    service: Arc<str>,
    address: SocketAddr,
    clock: Clock,
    /// The state in the lowest bit, the nanosecond it began above it: one
    /// word, so that a reader never pairs a state with another's start.
    state: AtomicU64,
    renewals_ok: AtomicU64,
    renewals_failed: AtomicU64,
    reregistrations: AtomicU64,
}

impl RegistrationCell {
    pub(super) fn new(
        backend: &'static str,
        service: &str,
        address: SocketAddr,
        clock: Clock,
    ) -> Self {
        Self {
            backend,
            service: service.into(),
            address,
            clock,
            state: AtomicU64::new(encode(RegistrationState::Registered, clock.now())),
            renewals_ok: AtomicU64::new(0),
            renewals_failed: AtomicU64::new(0),
            reregistrations: AtomicU64::new(0),
        }
    }

    pub(super) fn read(&self, now: Instant) -> RegistrationHealth {
        let word = self.state.load(Relaxed);
        RegistrationHealth {
            backend: self.backend,
            service: self.service.clone(),
            address: self.address,
            state: RegistrationState::from_bit(word),
            in_state_for: self.clock.age(word >> 1, now),
            renewals_ok: self.renewals_ok.load(Relaxed),
            renewals_failed: self.renewals_failed.load(Relaxed),
            reregistrations: self.reregistrations.load(Relaxed),
        }
    }

    /// Moves to `state`, stamping the time, unless already there.
    fn enter(&self, state: RegistrationState) {
        let since = self.clock.now();
        // Only the keeper writes, so this never loops in practice; the
        // compare keeps the start of a state that did not change.
        let _ = self.state.fetch_update(Relaxed, Relaxed, |word| {
            (RegistrationState::from_bit(word) != state).then(|| encode(state, since))
        });
    }
}

fn encode(state: RegistrationState, since: u64) -> u64 {
    (since << 1) | state.bit()
}

/// The keeper's side of a registration's entry: what it records as it
/// renews, loses and restores the registration. Recording keeps working
/// after the entry was removed (the handle is gone while the keeper
/// deregisters); nobody reads it then.
///
/// A backend gets one from [`Registration::track`](crate::Registration::track);
/// see [`kit`](crate::kit) for the keeper that records through it.
#[derive(Debug, Clone)]
pub struct RegistrationProbe {
    cell: Arc<RegistrationCell>,
}

impl RegistrationProbe {
    pub(super) fn new(cell: Arc<RegistrationCell>) -> Self {
        Self { cell }
    }

    /// The backend confirmed a renewal; a registration that was being
    /// written again is held by the backend again (without a new write:
    /// the backend kept or regained it by itself).
    pub fn renewed(&self) {
        self.renewal_counted();
        self.regained();
    }

    /// The backend confirmed a renewal of a part of the registration, which
    /// leaves its state as it is (Kubernetes: the Lease renewed while the
    /// slice is being applied again).
    pub fn renewal_counted(&self) {
        self.cell.renewals_ok.fetch_add(1, Relaxed);
    }

    /// The backend holds a lost registration again without a new write of
    /// this keeper (it kept or regained it by itself).
    pub fn regained(&self) {
        self.cell.enter(RegistrationState::Registered);
    }

    /// A keeper round failed to confirm the registration.
    pub fn renewal_failed(&self) {
        self.cell.renewals_failed.fetch_add(1, Relaxed);
    }

    /// The backend lost the registration; the keeper writes it again.
    pub fn lost(&self) {
        self.cell.enter(RegistrationState::Reregistering);
    }

    /// The registration was written again after a loss.
    pub fn reregistered(&self) {
        self.cell.reregistrations.fetch_add(1, Relaxed);
        self.cell.enter(RegistrationState::Registered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{health::RegistryHealth, Instance};

    fn only(health: &RegistryHealth) -> RegistrationHealth {
        let mut snapshot = health.snapshot();
        assert_eq!(snapshot.registrations.len(), 1, "{snapshot:?}");
        snapshot.registrations.remove(0)
    }

    #[tokio::test(start_paused = true)]
    async fn states_follow_the_keeper_and_stamp_their_start() {
        let health = RegistryHealth::new();
        let instance = Instance::new("echo", "10.0.0.7:8080".parse().unwrap());
        let (_listing, probe) = health.registration("etcd", &instance);
        let step = Duration::from_secs(3);

        let fresh = only(&health);
        assert_eq!(
            (fresh.backend, &*fresh.service, fresh.address),
            ("etcd", "echo", instance.address)
        );
        assert_eq!(fresh.state, RegistrationState::Registered);
        assert_eq!(
            (
                fresh.renewals_ok,
                fresh.renewals_failed,
                fresh.reregistrations
            ),
            (0, 0, 0)
        );

        tokio::time::advance(step).await;
        probe.renewed();
        probe.renewal_failed();
        let failing = only(&health);
        assert_eq!(failing.state, RegistrationState::Registered);
        assert_eq!(
            failing.in_state_for, step,
            "a renewal or a failure does not restart the state"
        );
        assert_eq!((failing.renewals_ok, failing.renewals_failed), (1, 1));

        probe.lost();
        tokio::time::advance(step).await;
        probe.renewal_failed();
        probe.lost();
        let lost = only(&health);
        assert_eq!(lost.state, RegistrationState::Reregistering);
        assert_eq!(
            lost.in_state_for, step,
            "a second loss keeps the first's start"
        );
        assert_eq!((lost.renewals_failed, lost.reregistrations), (2, 0));

        tokio::time::advance(step).await;
        probe.reregistered();
        tokio::time::advance(Duration::from_secs(1)).await;
        let back = only(&health);
        assert_eq!(back.state, RegistrationState::Registered);
        assert_eq!(back.in_state_for, Duration::from_secs(1));
        assert_eq!(
            (back.renewals_ok, back.renewals_failed, back.reregistrations),
            (1, 2, 1)
        );

        // A backend that kept or regained it by itself: renewed while
        // re-registering ends the loss without counting a re-registration.
        probe.lost();
        probe.renewed();
        let regained = only(&health);
        assert_eq!(regained.state, RegistrationState::Registered);
        assert_eq!(regained.in_state_for, Duration::ZERO);
        assert_eq!((regained.renewals_ok, regained.reregistrations), (2, 1));
    }

    #[test]
    fn the_entry_lives_as_long_as_its_listing() {
        let health = RegistryHealth::new();
        let instance = Instance::new("echo", "10.0.0.7:8080".parse().unwrap());
        let (listing, probe) = health.registration("consul", &instance);
        let (other, _) = health.registration("consul", &instance);
        assert_eq!(health.snapshot().registrations.len(), 2);
        drop(listing);
        // The keeper may still record while it deregisters.
        probe.renewal_failed();
        let left = health.snapshot().registrations;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].renewals_failed, 0, "the other registration's entry");
        drop(other);
        assert!(health.snapshot().registrations.is_empty());
    }

    #[test]
    fn labels() {
        assert_eq!(RegistrationState::Registered.as_str(), "registered");
        assert_eq!(
            RegistrationState::Reregistering.to_string(),
            "reregistering"
        );
    }
}
