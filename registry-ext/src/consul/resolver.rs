//! Resolution from Consul's health endpoint with blocking queries.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};
use tracing::warn;

use super::{api::Api, ConsulBuilder};
use crate::{
    backend::{
        backoff::Backoff,
        subscriptions::{publish_error, publish_instances, Subscriptions},
    },
    Resolver, Result, ServiceSnapshot, ServiceWatch,
};

/// Shortest time between two queries that saw the same index, so a proxy
/// or agent that answers blocking queries at once cannot cause a busy loop.
const MIN_UNCHANGED_INTERVAL: Duration = Duration::from_secs(1);

/// Resolves the passing instances of a service from Consul, pushing every
/// change as soon as a blocking query returns it.
///
/// The documented index rules are followed: the index is reset when it goes
/// backwards (agent restart, leader change), kept above zero, and queries
/// that return the same index are spaced out. While Consul answers errors or
/// garbage, the last known instances are kept and the error reported in
/// [`ServiceSnapshot::last_error`].
///
/// ```no_run
/// use rpc_ext_registry::{consul::ConsulResolver, Resolver};
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let resolver = ConsulResolver::builder().tags(["zone=a"]).build()?;
/// let instances = resolver.resolve("echo").await?;
/// # let _ = instances; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConsulResolver {
    shared: Arc<Shared>,
}

struct Shared {
    api: Arc<Api>,
    tags: Arc<[String]>,
    wait: Duration,
    max_backoff: Duration,
    subscriptions: Subscriptions,
}

impl std::fmt::Debug for ConsulResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulResolver")
            .field("tags", &self.shared.tags)
            .finish_non_exhaustive()
    }
}

impl ConsulResolver {
    /// Starts building a resolver.
    pub fn builder() -> ConsulBuilder<Self> {
        ConsulBuilder::new()
    }

    pub(crate) fn new(api: Api, builder: ConsulBuilder<Self>) -> Self {
        Self {
            shared: Arc::new(Shared {
                api: Arc::new(api),
                tags: builder.tags.into(),
                wait: builder.wait,
                max_backoff: builder.max_backoff,
                subscriptions: Subscriptions::default(),
            }),
        }
    }
}

impl Resolver for ConsulResolver {
    async fn subscribe(&self, service: &str) -> Result<ServiceWatch> {
        let follower = Follower {
            api: self.shared.api.clone(),
            service: service.to_owned(),
            tags: self.shared.tags.clone(),
            wait: self.shared.wait,
            max_backoff: self.shared.max_backoff,
        };
        self.shared
            .subscriptions
            .subscribe(service, |tx| follower.run(tx))
            .await
    }
}

struct Follower {
    api: Arc<Api>,
    service: String,
    tags: Arc<[String]>,
    wait: Duration,
    max_backoff: Duration,
}

impl Follower {
    async fn run(self, tx: watch::Sender<ServiceSnapshot>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.max_backoff);
        let mut index = 0u64;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                () = tx.closed() => return,
                result = self.api.healthy(&self.service, &self.tags, index, self.wait) => result,
            };
            let pause = match result {
                Ok((instances, next)) => {
                    backoff.reset();
                    publish_instances(&tx, instances.into_iter().map(Arc::new).collect());
                    let unchanged = next == index;
                    index = next_index(index, next);
                    unchanged_pause(unchanged, started.elapsed())
                }
                Err(error) => {
                    warn!(service = %self.service, %error, "Consul health query failed; keeping last known instances");
                    publish_error(&tx, error);
                    Some(backoff.next_delay())
                }
            };
            if let Some(pause) = pause {
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// How long to wait before the next query after one that took `elapsed`:
/// queries that saw the same index are spaced `MIN_UNCHANGED_INTERVAL` apart.
/// `elapsed` is read once by the caller, and the subtraction saturates, so a
/// clock that moves on between reads cannot underflow it.
fn unchanged_pause(unchanged: bool, elapsed: Duration) -> Option<Duration> {
    if !unchanged {
        return None;
    }
    Some(MIN_UNCHANGED_INTERVAL.saturating_sub(elapsed)).filter(|pause| !pause.is_zero())
}

/// The index to block on next, per Consul's blocking-query rules.
fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0 // went backwards: start over with a non-blocking read
    } else {
        returned.max(1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{next_index, unchanged_pause, MIN_UNCHANGED_INTERVAL};

    #[test]
    fn unchanged_queries_are_spaced_without_underflow() {
        assert_eq!(unchanged_pause(false, Duration::ZERO), None);
        assert_eq!(
            unchanged_pause(true, Duration::from_millis(300)),
            Some(MIN_UNCHANGED_INTERVAL - Duration::from_millis(300))
        );
        assert_eq!(unchanged_pause(true, MIN_UNCHANGED_INTERVAL), None);
        assert_eq!(
            unchanged_pause(true, MIN_UNCHANGED_INTERVAL + Duration::from_nanos(1)),
            None
        );
        assert_eq!(unchanged_pause(true, Duration::MAX), None);
    }

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 5), 5);
        assert_eq!(next_index(5, 7), 7);
        assert_eq!(next_index(7, 7), 7);
        assert_eq!(next_index(7, 3), 0, "reset when it goes backwards");
        assert_eq!(next_index(0, 0), 1, "kept above zero");
    }
}
