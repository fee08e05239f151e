//! The Lease a registration renews, so that resolvers stop using its
//! endpoint when the process dies without deregistering.
//!
//! A registration's Lease has the name of its EndpointSlice and lives in
//! the same namespace. `holderIdentity` is the registration id (the slice's
//! [`REGISTRATION_LABEL`]), `leaseDurationSeconds` the registry's lease
//! duration, and `renewTime` is written every third of that duration.
//! Writes are replaces carrying the resource version last read, so two
//! processes never overwrite each other blindly: a registration that finds
//! the Lease held by another (a successor that registered the same
//! instance) stops renewing it, and one that finds it deleted creates it
//! again.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    api::{DeleteParams, PostParams, Preconditions},
    Api,
};
use tracing::{debug, info};

use super::{
    api_error, LEASES, LEASE_MANAGED_BY_LABEL, LEASE_SERVICE_LABEL, MANAGED_BY, REGISTRATION_LABEL,
};
use crate::Result;

/// How a renewal went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Renewal {
    /// The Lease is ours and carries a fresh `renewTime`.
    Renewed,
    /// Another registration holds it: not written.
    HeldBy(String),
}

pub(super) struct Heartbeat {
    api: Api<Lease>,
    /// For naming a refused permission.
    namespace: String,
    name: String,
    registration: String,
    service: String,
    duration_seconds: i32,
    /// The Lease as this registration last wrote it; `None` makes the next
    /// write read it first.
    current: Option<Lease>,
}

impl Heartbeat {
    pub(super) fn new(
        api: Api<Lease>,
        namespace: String,
        name: String,
        registration: String,
        service: String,
        duration: Duration,
    ) -> Self {
        Self {
            api,
            namespace,
            name,
            registration,
            service,
            duration_seconds: whole_seconds(duration),
            current: None,
        }
    }

    /// The Lease's duration, as written in it (whole seconds).
    pub(super) fn duration(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.duration_seconds).unwrap_or(1))
    }

    /// How often the Lease is renewed: a third of its duration, so that two
    /// renewals can fail before it expires.
    pub(super) fn renew_interval(&self) -> Duration {
        self.duration() / 3
    }

    /// Takes the Lease, whoever holds it: what a registration does when it
    /// starts (the same instance registered again is its successor).
    pub(super) async fn acquire(&mut self) -> Result<()> {
        self.write(true).await.map(drop)
    }

    /// Writes a fresh `renewTime` if the Lease is still ours, creates it if
    /// it is gone, and leaves it alone if another registration holds it.
    pub(super) async fn renew(&mut self) -> Result<Renewal> {
        self.write(false).await
    }

    async fn write(&mut self, take_over: bool) -> Result<Renewal> {
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            // The last written Lease carries the version to replace; without
            // one (first write, or after a conflict), read it.
            let stored = match self.current.take() {
                Some(lease) => Some(lease),
                None => self.get().await?,
            };
            let written = match stored {
                None => {
                    let lease = self.lease(Lease::default());
                    match self.api.create(&PostParams::default(), &lease).await {
                        // Someone created it since the read: look again.
                        Err(kube::Error::Api(status)) if status.code == 409 => continue,
                        other => other.map_err(|e| self.error(e, "create"))?,
                    }
                }
                Some(lease) => {
                    let holder = holder(&lease);
                    if !take_over && holder.is_some_and(|h| h != self.registration) {
                        return Ok(Renewal::HeldBy(holder.unwrap_or_default().to_owned()));
                    }
                    let lease = self.lease(lease);
                    match self
                        .api
                        .replace(&self.name, &PostParams::default(), &lease)
                        .await
                    {
                        // Changed (409) or deleted (404) since it was read:
                        // read it again.
                        Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {
                            continue
                        }
                        other => other.map_err(|e| self.error(e, "update"))?,
                    }
                }
            };
            self.current = Some(written);
            return Ok(Renewal::Renewed);
        }
        Err(crate::Error::backend(
            super::BACKEND,
            format!(
                "Lease {} kept changing; not written after {ATTEMPTS} attempts",
                self.name
            ),
        ))
    }

    /// `base` made this registration's Lease, renewed now: labels and
    /// holder set, acquisition and transitions counted when the holder
    /// changes. Keeps `base`'s resource version, which makes a replace
    /// conditional on it.
    fn lease(&self, mut base: Lease) -> Lease {
        let now = MicroTime(Timestamp::now());
        base.metadata = ObjectMeta {
            name: Some(self.name.clone()),
            labels: Some(self.labels(base.metadata.labels.take())),
            ..base.metadata
        };
        let spec = base.spec.get_or_insert_with(LeaseSpec::default);
        let previous = spec.holder_identity.take();
        if previous.as_deref() != Some(self.registration.as_str()) {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(match previous {
                Some(_) => spec.lease_transitions.unwrap_or(0).saturating_add(1),
                None => spec.lease_transitions.unwrap_or(0),
            });
        }
        spec.holder_identity = Some(self.registration.clone());
        spec.lease_duration_seconds = Some(self.duration_seconds);
        spec.renew_time = Some(now);
        base
    }

    /// `existing` labels with this crate's: the resolver selects Leases by
    /// managed-by and service.
    fn labels(&self, existing: Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
        let mut labels = existing.unwrap_or_default();
        labels.insert(LEASE_MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
        labels.insert(LEASE_SERVICE_LABEL.to_owned(), self.service.clone());
        labels.insert(REGISTRATION_LABEL.to_owned(), self.registration.clone());
        labels
    }

    async fn get(&self) -> Result<Option<Lease>> {
        self.api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error(e, "get"))
    }

    fn error(&self, error: kube::Error, verb: &'static str) -> crate::Error {
        api_error(error, verb, LEASES, &self.namespace)
    }

    /// Deletes the Lease if this registration still holds it, with the
    /// resource version and UID read as preconditions, so that a successor
    /// taking it over between the read and the delete makes the API server
    /// refuse the delete (409) and the check runs again.
    pub(super) async fn release(&self) -> Result<()> {
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            let Some(lease) = self.get().await? else {
                debug!(lease = %self.name, "Lease already gone");
                return Ok(());
            };
            let holder = holder(&lease);
            if holder != Some(self.registration.as_str()) {
                info!(
                    lease = %self.name,
                    ours = %self.registration,
                    theirs = holder.unwrap_or("none"),
                    "not deleting the Lease: another registration holds it"
                );
                return Ok(());
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: lease.metadata.resource_version.clone(),
                    uid: lease.metadata.uid.clone(),
                }),
                ..DeleteParams::default()
            };
            match self.api.delete(&self.name, &params).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(error) => return Err(self.error(error, "delete")),
            }
        }
        Err(crate::Error::backend(
            super::BACKEND,
            format!(
                "Lease {} kept changing; not deleted after {ATTEMPTS} attempts",
                self.name
            ),
        ))
    }
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

/// `leaseDurationSeconds` for `duration`: whole seconds, rounded up, at
/// least 1 (the API server refuses 0).
pub(super) fn whole_seconds(duration: Duration) -> i32 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_whole_positive_seconds() {
        assert_eq!(whole_seconds(Duration::from_secs(30)), 30);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}
