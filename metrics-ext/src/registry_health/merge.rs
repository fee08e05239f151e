//! Entries of a health snapshot that share their labels, made one.
//!
//! A process may hold two entries with the same labels: the same instance
//! registered twice, or the same service followed by two resolvers that
//! report into one handle. Prometheus takes one sample per label set, so
//! they are merged: counters add up, and the gauges show the worse of the
//! two, since an alert must not miss the one in trouble.

use std::cmp::Ordering;

use rpc_ext_registry::health::{RegistrationHealth, RegistrationState, SubscriptionHealth};

/// One registration per (backend, service, address), in that order.
pub(super) fn registrations(mut entries: Vec<RegistrationHealth>) -> Vec<RegistrationHealth> {
    // The snapshot is sorted this way already; sorting again is what makes
    // the merge below correct whatever order it came in.
    entries.sort_by(|a, b| {
        (a.backend, &a.service, a.address).cmp(&(b.backend, &b.service, b.address))
    });
    entries.dedup_by(|next, kept| {
        let same = (next.backend, &next.service, next.address)
            == (kept.backend, &kept.service, kept.address);
        if same {
            merge_registration(kept, next);
        }
        same
    });
    entries
}

/// One subscription per (backend, service), in that order.
pub(super) fn subscriptions(mut entries: Vec<SubscriptionHealth>) -> Vec<SubscriptionHealth> {
    entries.sort_by(|a, b| (a.backend, &a.service).cmp(&(b.backend, &b.service)));
    entries.dedup_by(|next, kept| {
        let same = (next.backend, &next.service) == (kept.backend, &kept.service);
        if same {
            merge_subscription(kept, next);
        }
        same
    });
    entries
}

/// The worse state wins, with how long it has lasted; of two entries in
/// the same state, the one in it for longer.
fn merge_registration(kept: &mut RegistrationHealth, other: &RegistrationHealth) {
    match severity(other.state).cmp(&severity(kept.state)) {
        Ordering::Greater => {
            kept.state = other.state;
            kept.in_state_for = other.in_state_for;
        }
        Ordering::Equal => kept.in_state_for = kept.in_state_for.max(other.in_state_for),
        Ordering::Less => {}
    }
    kept.renewals_ok = kept.renewals_ok.saturating_add(other.renewals_ok);
    kept.renewals_failed = kept.renewals_failed.saturating_add(other.renewals_failed);
    kept.reregistrations = kept.reregistrations.saturating_add(other.reregistrations);
}

/// How bad a state is, higher being worse.
pub(super) fn severity(state: RegistrationState) -> u8 {
    match state {
        RegistrationState::Registered => 0,
        RegistrationState::Reregistering => 1,
        // A state added to rpc-ext-registry later: not known to be fine.
        _ => 2,
    }
}

/// The fewest instances, stale if either is, the oldest update (an entry
/// that never received a set does not make the age unknown: the other's
/// still tells how old the shown set is), counters added.
fn merge_subscription(kept: &mut SubscriptionHealth, other: &SubscriptionHealth) {
    kept.instances = kept.instances.min(other.instances);
    kept.serving_stale |= other.serving_stale;
    kept.last_update_age = kept.last_update_age.max(other.last_update_age);
    kept.watch_restarts = kept.watch_restarts.saturating_add(other.watch_restarts);
    kept.errors = kept.errors.saturating_add(other.errors);
}
