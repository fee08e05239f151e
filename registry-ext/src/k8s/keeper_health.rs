//! What the keeper of a Kubernetes registration records in its health
//! entry.
//!
//! A registration is two objects: its EndpointSlice and the Lease that
//! keeps the slice's endpoint live for resolvers. It is lost while either
//! is missing for resolvers: the slice deleted, or the Lease gone
//! unrenewed for its duration (resolvers then drop the endpoint). It is
//! registered again once both are back.

use std::time::Duration;

use tokio::time::Instant;

use crate::health::RegistrationProbe;

pub(super) struct KeeperHealth {
    probe: RegistrationProbe,
    /// The Lease's `leaseDurationSeconds`.
    lease_duration: Duration,
    /// When a renewal last came back stored (or the Lease was last found
    /// live in another registration's hands).
    last_renewed: Instant,
    /// The slice was found deleted and is not stored again yet.
    slice_missing: bool,
    /// Renewals failed for the whole lease duration: resolvers no longer
    /// use the endpoint.
    lease_expired: bool,
}

impl KeeperHealth {
    /// The health of a registration whose slice and Lease were just
    /// written.
    pub(super) fn new(probe: RegistrationProbe, lease_duration: Duration) -> Self {
        Self {
            probe,
            lease_duration,
            last_renewed: Instant::now(),
            slice_missing: false,
            lease_expired: false,
        }
    }

    /// The API server stored a renewal of the Lease: a renewal, and if the
    /// Lease had expired and the slice is there, the registration written
    /// again.
    pub(super) fn lease_renewed(&mut self) {
        self.last_renewed = Instant::now();
        let expired = std::mem::take(&mut self.lease_expired);
        if self.slice_missing {
            self.probe.renewal_counted();
            return;
        }
        self.probe.renewed();
        if expired {
            self.probe.reregistered();
        }
    }

    /// Another registration of the same instance holds the Lease: this one
    /// renews nothing, and the Lease is live.
    pub(super) fn lease_held_by_other(&mut self) {
        self.last_renewed = Instant::now();
        if std::mem::take(&mut self.lease_expired) && !self.slice_missing {
            self.probe.regained();
        }
    }

    /// A renewal failed; whether the Lease has now gone unrenewed for its
    /// duration, as resolvers measure it (from the last renewal they saw).
    pub(super) fn lease_renewal_failed(&mut self) -> bool {
        self.probe.renewal_failed();
        let expired =
            !self.lease_expired && Instant::now() >= self.last_renewed + self.lease_duration;
        if expired {
            self.lease_expired = true;
            self.probe.lost();
        }
        expired
    }

    /// The check found the slice stored.
    pub(super) fn slice_found(&mut self) {
        // Stored again by an apply that failed as seen from here (timed
        // out), or by a later registration of the same instance.
        if std::mem::take(&mut self.slice_missing) && !self.lease_expired {
            self.probe.regained();
        }
    }

    /// The check found the slice deleted: a loss, found by a failed check.
    pub(super) fn slice_gone(&mut self) {
        self.probe.renewal_failed();
        self.slice_missing = true;
        self.probe.lost();
    }

    /// The slice was applied again after it was found deleted.
    pub(super) fn slice_applied(&mut self) {
        self.slice_missing = false;
        if !self.lease_expired {
            self.probe.reregistered();
        }
    }

    /// A check of the slice, or its re-apply, failed.
    pub(super) fn slice_check_failed(&self) {
        self.probe.renewal_failed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        health::{
            RegistrationHealth,
            RegistrationState::{self, Registered, Reregistering},
            RegistryHealth,
        },
        Instance, Registration,
    };

    const LEASE: Duration = Duration::from_secs(3);

    fn only(health: &RegistryHealth) -> RegistrationHealth {
        let mut snapshot = health.snapshot();
        assert_eq!(snapshot.registrations.len(), 1, "{snapshot:?}");
        snapshot.registrations.remove(0)
    }

    /// `(state, renewals_ok, renewals_failed, reregistrations)`.
    fn counts(health: &RegistryHealth) -> (RegistrationState, u64, u64, u64) {
        let entry = only(health);
        (
            entry.state,
            entry.renewals_ok,
            entry.renewals_failed,
            entry.reregistrations,
        )
    }

    fn keeper(health: &RegistryHealth) -> (Registration, KeeperHealth) {
        let instance = Instance::new("echo", "10.0.0.7:8080".parse().unwrap());
        let (mut registration, _stop) = Registration::new(instance);
        let probe = registration.track(crate::k8s::BACKEND, health);
        (registration, KeeperHealth::new(probe, LEASE))
    }

    #[tokio::test(start_paused = true)]
    async fn lease_renewals_failing_for_the_lease_duration_are_a_loss() {
        let health = RegistryHealth::new();
        let (_registration, mut keeper) = keeper(&health);
        keeper.lease_renewed();
        assert_eq!(counts(&health), (Registered, 1, 0, 0));

        // Failures within the lease: still registered.
        tokio::time::advance(LEASE - Duration::from_millis(1)).await;
        assert!(!keeper.lease_renewal_failed());
        assert_eq!(counts(&health), (Registered, 1, 1, 0));
        // One past it: lost, once.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(keeper.lease_renewal_failed());
        assert!(!keeper.lease_renewal_failed());
        assert_eq!(counts(&health), (Reregistering, 1, 3, 0));

        // Renewed again: a renewal, and the registration is back.
        keeper.lease_renewed();
        assert_eq!(counts(&health), (Registered, 2, 3, 1));
        keeper.lease_renewed();
        assert_eq!(counts(&health), (Registered, 3, 3, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_slice_is_lost_until_applied_again_whatever_the_lease_does() {
        let health = RegistryHealth::new();
        let (_registration, mut keeper) = keeper(&health);
        keeper.slice_gone();
        keeper.slice_check_failed();
        assert_eq!(counts(&health), (Reregistering, 0, 2, 0));
        // The Lease renewals go on and are counted, but bring nothing back.
        keeper.lease_renewed();
        assert_eq!(counts(&health), (Reregistering, 1, 2, 0));
        keeper.slice_gone();
        keeper.slice_applied();
        assert_eq!(counts(&health), (Registered, 1, 3, 1));
        // Found afterwards: nothing to record.
        keeper.slice_found();
        assert_eq!(counts(&health), (Registered, 1, 3, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn both_lost_come_back_with_the_last_of_them() {
        let health = RegistryHealth::new();
        let (_registration, mut keeper) = keeper(&health);
        tokio::time::advance(LEASE).await;
        assert!(keeper.lease_renewal_failed());
        keeper.slice_gone();
        keeper.slice_applied();
        assert_eq!(counts(&health), (Reregistering, 0, 2, 0));
        keeper.lease_renewed();
        assert_eq!(counts(&health), (Registered, 1, 2, 1));

        // The other way round, and a slice found stored again without this
        // keeper's apply: registered without a re-registration.
        tokio::time::advance(LEASE).await;
        assert!(keeper.lease_renewal_failed());
        keeper.slice_gone();
        keeper.lease_renewed();
        assert_eq!(counts(&health), (Reregistering, 2, 4, 1));
        keeper.slice_found();
        assert_eq!(counts(&health), (Registered, 2, 4, 1));

        // A Lease another registration took over is live: not a loss.
        tokio::time::advance(LEASE).await;
        assert!(keeper.lease_renewal_failed());
        keeper.lease_held_by_other();
        assert_eq!(counts(&health), (Registered, 2, 5, 1));
    }
}
