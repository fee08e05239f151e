//! Resolution from Consul's health endpoint with blocking queries.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tracing::warn;

use super::{api::Api, ConsulBuilder};
use crate::{
    health::RegistryHealth,
    kit::{Backoff, Publisher, Subscriptions},
    Resolver, Result, ServiceWatch,
};

/// Shortest time between two queries that saw the same index, so a proxy
/// or agent that answers blocking queries at once cannot cause a busy loop.
const MIN_UNCHANGED_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest `wait` sent: the server reads `wait=0` (and the `0ms` a
/// sub-millisecond wait would print) as its default of 5 minutes, and a
/// shorter wait than the spacing of unchanged queries buys nothing.
pub(crate) const MIN_WAIT: Duration = MIN_UNCHANGED_INTERVAL;
/// The longest `wait` the server honours (`max_query_time`, 10 minutes).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(600);

/// The `wait` sent for a configured one.
fn effective_wait(wait: Duration) -> Duration {
    wait.clamp(MIN_WAIT, MAX_WAIT)
}

/// Resolves the passing instances of a service from Consul, pushing every
/// change as soon as a blocking query returns it.
///
/// The documented index rules are followed: the index is reset when it goes
/// backwards (agent restart, leader change), kept above zero, and queries
/// that return the same index are spaced out. While Consul answers errors or
/// garbage, the last known instances are kept and the error reported in
/// [`ServiceSnapshot::last_error`](crate::ServiceSnapshot::last_error). So
/// is an answer the token's ACLs filtered
/// ([`Error::PermissionDenied`](crate::Error::PermissionDenied)):
/// it is not the set of instances, and is never published as one; the
/// resolver then asks again without blocking, after backoff, until the
/// token may read the service and its nodes.
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
    health: RegistryHealth,
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
        let health = builder.health.unwrap_or_default();
        Self {
            shared: Arc::new(Shared {
                api: Arc::new(api),
                tags: builder.tags.into(),
                wait: effective_wait(builder.wait),
                max_backoff: builder.max_backoff,
                subscriptions: Subscriptions::new(super::BACKEND, health.clone()),
                health,
            }),
        }
    }

    /// The health of this resolver's subscriptions (shared by its clones):
    /// per followed service, the instances shown, the age of the last
    /// answer, query restarts, errors, and whether the last known set is
    /// served while Consul fails. See [`health`](crate::health).
    #[must_use]
    pub fn health(&self) -> RegistryHealth {
        self.shared.health.clone()
    }
}

impl Resolver for ConsulResolver {
    async fn subscribe(&self, service: &str) -> Result<ServiceWatch> {
        let follower = Follower {
            api: self.shared.api.clone(),
            service: service.into(),
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
    /// The service followed: every instance decoded shares this name.
    service: Arc<str>,
    tags: Arc<[String]>,
    wait: Duration,
    max_backoff: Duration,
}

impl Follower {
    async fn run(self, tx: Publisher) {
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
                    tx.publish_instances(instances.into_iter().map(Arc::new).collect());
                    let unchanged = next == index;
                    if next < index {
                        // The index went backwards: the next query starts
                        // over from 0.
                        tx.watch_restarted();
                    }
                    index = next_index(index, next);
                    unchanged_pause(unchanged, started.elapsed())
                }
                Err(error) => {
                    warn!(service = %self.service, %error, "Consul health query failed; keeping last known instances");
                    // Ask again without blocking: a blocking query on the
                    // old index would hold the error until the service
                    // changes or the whole wait ends, long after the agent
                    // (or a policy letting the token read) is back.
                    index = 0;
                    tx.publish_error(error);
                    tx.watch_restarted();
                    Some(backoff.next_delay())
                }
            };
            if let Some(pause) = pause {
                if !tx.pause(pause).await {
                    return;
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

    use super::{next_index, unchanged_pause, MAX_WAIT, MIN_UNCHANGED_INTERVAL, MIN_WAIT};

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
    fn waits_are_kept_within_what_the_server_honours() {
        use super::effective_wait;
        assert_eq!(effective_wait(Duration::ZERO), MIN_WAIT);
        assert_eq!(effective_wait(Duration::from_micros(500)), MIN_WAIT);
        assert_eq!(
            effective_wait(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(effective_wait(Duration::from_secs(3600)), MAX_WAIT);
        assert_eq!(effective_wait(Duration::MAX), MAX_WAIT);
    }

    #[test]
    fn the_client_outwaits_the_server() {
        use crate::consul::api::blocking_timeout;
        for wait in [MIN_WAIT, Duration::from_secs(30), MAX_WAIT] {
            for request_timeout in [Duration::ZERO, Duration::from_secs(5)] {
                // The server may hold the query for wait + wait/16.
                assert!(
                    blocking_timeout(wait, request_timeout)
                        >= wait + wait / 16 + Duration::from_secs(1)
                );
            }
        }
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
