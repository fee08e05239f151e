//! The resolver's watch of one Service's registration Leases, started once
//! a slice of the Service names a Lease and restarted (list, then watch)
//! after a failure.

use std::{sync::Arc, time::Duration};

use futures::{stream::BoxStream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api,
};
use tokio::time::Instant;

use super::{LEASE_MANAGED_BY_LABEL, LEASE_SERVICE_LABEL, MANAGED_BY};
use crate::{kit::Backoff, Error};

type Events = BoxStream<'static, watcher::Result<watcher::Event<Lease>>>;

pub(super) struct LeaseWatch {
    api: Api<Lease>,
    /// This crate's Leases of one Service.
    selector: String,
    /// Whether a slice named a Lease: until then nothing is watched, so a
    /// Service of the endpoints controller costs no Lease watch (nor the
    /// permission for one).
    wanted: bool,
    events: Option<Events>,
    /// When the next watcher may start, after a failure.
    retry_at: Instant,
    backoff: Backoff,
    /// The last failure, until a list completes again.
    error: Option<Arc<Error>>,
}

impl LeaseWatch {
    pub(super) fn new(api: Api<Lease>, service: &str) -> Self {
        Self {
            api,
            selector: format!(
                "{LEASE_MANAGED_BY_LABEL}={MANAGED_BY},{LEASE_SERVICE_LABEL}={service}"
            ),
            wanted: false,
            events: None,
            retry_at: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            error: None,
        }
    }

    /// Watches from now on.
    pub(super) fn start(&mut self) {
        self.wanted = true;
    }

    /// The next event, once watching. Cancel-safe.
    pub(super) async fn next(&mut self) -> watcher::Result<watcher::Event<Lease>> {
        if !self.wanted {
            return std::future::pending().await;
        }
        loop {
            let events = match &mut self.events {
                Some(events) => events,
                None => {
                    tokio::time::sleep_until(self.retry_at).await;
                    let config = watcher::Config::default().labels(&self.selector);
                    self.events
                        .insert(watcher(self.api.clone(), config).default_backoff().boxed())
                }
            };
            match events.next().await {
                Some(event) => return event,
                // The watcher never ends by itself; if it did, start
                // another.
                None => self.events = None,
            }
        }
    }

    /// The watch failed with `error`: the watcher is dropped and another
    /// starts after a capped backoff.
    pub(super) fn failed(&mut self, error: Error) {
        self.events = None;
        self.retry_at = Instant::now() + self.backoff.next_delay();
        self.error = Some(Arc::new(error));
    }

    /// A list completed: the failure, if any, is over.
    pub(super) fn listed(&mut self) {
        self.backoff.reset();
        self.error = None;
    }

    /// The failure to report until a list completes again.
    pub(super) fn error(&self) -> Option<&Arc<Error>> {
        self.error.as_ref()
    }
}
