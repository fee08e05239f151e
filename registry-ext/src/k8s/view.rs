//! What a resolver knows of one Service: the usable endpoints of each of its
//! EndpointSlices, the Lease each registry slice names, and those Leases'
//! liveness; and the set it publishes from them.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::time::Instant;

use super::{
    liveness::Liveness,
    slice::{candidates, select, Candidate},
    DEFAULT_LEASE_DURATION, LEASE_LABEL,
};
use crate::{
    kit::{Cause, Publisher},
    Error,
};

/// One slice, as far as resolution is concerned.
#[derive(Debug, Clone)]
pub(super) struct SliceView {
    /// The Lease its endpoints depend on ([`LEASE_LABEL`]); `None` for
    /// slices that name none (the endpoints controller's).
    lease: Option<String>,
    candidates: Vec<Candidate>,
}

impl SliceView {
    /// The endpoints of `slice` at the slice port `port_name`, instances
    /// named `service`, and the Lease it names.
    pub(super) fn of(service: &Arc<str>, port_name: &str, slice: &EndpointSlice) -> Self {
        let lease = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(LEASE_LABEL))
            .cloned();
        Self {
            lease,
            candidates: candidates(service, port_name, slice),
        }
    }
}

/// Slices by name, in name order (so that of an address listed twice, the
/// same slice's entry wins every time).
pub(super) type SliceMap = BTreeMap<String, SliceView>;

/// The slices the API server has for one Service, no more (deletions and
/// re-lists remove the others), and the liveness of the Leases they name.
/// Kept across watcher restarts.
#[derive(Debug)]
pub(super) struct Slices {
    by_name: SliceMap,
    pub(super) liveness: Liveness,
}

impl Slices {
    /// No slices yet; a missing Lease's grace of
    /// [`DEFAULT_LEASE_DURATION`].
    pub(super) fn new() -> Self {
        Self {
            by_name: SliceMap::new(),
            liveness: Liveness::new(DEFAULT_LEASE_DURATION, Instant::now()),
        }
    }

    /// With this grace for a Lease that a slice names but that does not
    /// exist.
    pub(super) fn missing_lease_grace(self, grace: Duration) -> Self {
        Self {
            liveness: Liveness::new(grace, Instant::now()),
            ..self
        }
    }

    pub(super) fn insert(&mut self, name: String, slice: SliceView) {
        self.by_name.insert(name, slice);
    }

    /// Whether a slice of that name was there.
    pub(super) fn remove(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// A complete list replaces every slice.
    pub(super) fn replace_all(&mut self, listed: SliceMap) {
        self.by_name = listed;
    }

    /// Whether any slice names a Lease (only then are Leases watched).
    pub(super) fn name_leases(&self) -> bool {
        self.by_name.values().any(|slice| slice.lease.is_some())
    }

    /// Publishes the endpoints kube-proxy would use among the slices whose
    /// Lease, if they name one, is live; and `lease_error`, if the Lease
    /// watch is failing, as the snapshot's error (it does not stop the
    /// slices from being followed; it is counted in the health entry once,
    /// however many times it is published). Clears any other error.
    /// `cause` says whether the API server just confirmed the set.
    pub(super) fn publish(
        &mut self,
        tx: &Publisher,
        lease_error: Option<&Arc<Error>>,
        cause: Cause,
    ) {
        let now = Instant::now();
        self.liveness.track(
            self.by_name
                .values()
                .filter_map(|slice| slice.lease.as_deref()),
            now,
        );
        let liveness = &self.liveness;
        let live = self
            .by_name
            .values()
            .filter(|slice| {
                slice
                    .lease
                    .as_deref()
                    .is_none_or(|lease| liveness.is_live(lease, now))
            })
            .map(|slice| slice.candidates.as_slice());
        tx.publish_view(select(live), lease_error, cause);
    }
}
