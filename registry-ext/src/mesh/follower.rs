//! Mesh mode's follower: the one instance of a service is the DNS answer
//! for its target, looked up again periodically.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use super::{target::Target, AUTHORITY_TAG, BACKEND};
use crate::{
    kit::{Backoff, Publisher},
    Error, Instance, Result,
};

/// The first retry after a failed lookup; later ones double up to the
/// builder's `max_backoff`.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// A DNS lookup that failed or found nothing.
#[derive(Debug, thiserror::Error)]
#[error("cannot look up {host}: {source}")]
pub(crate) struct LookupFailed {
    host: String,
    source: std::io::Error,
}

/// The follower's clock: how often it looks up again, how long it waits
/// after failures, and how long one lookup may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) refresh: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) lookup_timeout: Duration,
}

/// Looks `target` up in DNS (the system resolver, as every client of the
/// pod does) and picks one address.
pub(crate) async fn lookup(target: Target, timeout: Duration) -> Result<SocketAddr> {
    let host = target.host.as_str();
    let found = tokio::time::timeout(timeout, tokio::net::lookup_host((host, target.port)))
        .await
        .map_err(|_| Error::Timeout {
            backend: BACKEND,
            timeout,
        })?
        .map_err(|source| {
            Error::backend(
                BACKEND,
                LookupFailed {
                    host: host.to_owned(),
                    source,
                },
            )
        })?;
    pick(found).ok_or_else(|| {
        Error::backend(
            BACKEND,
            LookupFailed {
                host: host.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            },
        )
    })
}

/// The first IPv4 address, else the first IPv6 one: a Service's cluster IP
/// is IPv4 in most clusters, and dual-stack ones list both.
fn pick(addresses: impl IntoIterator<Item = SocketAddr>) -> Option<SocketAddr> {
    let mut first_v6 = None;
    for address in addresses {
        if address.is_ipv4() {
            return Some(address);
        }
        first_v6 = first_v6.or(Some(address));
    }
    first_v6
}

/// Publishes `service` as the one instance `lookup(target)` answers, with
/// [`AUTHORITY_TAG`], then looks up again every `timing.refresh`. A failed
/// lookup publishes the error (the last address stays) and is retried after
/// a backoff delay. Returns once every subscriber is gone.
pub(crate) async fn follow<L, F>(
    publisher: Publisher,
    service: String,
    target: Target,
    timing: Timing,
    lookup: L,
) where
    L: Fn(&Target) -> F,
    F: Future<Output = Result<SocketAddr>>,
{
    let authority = target.authority();
    let mut backoff = Backoff::new(FIRST_RETRY, timing.max_backoff.max(FIRST_RETRY));
    loop {
        let (delay, failed) = match lookup(&target).await {
            Ok(address) => {
                let instance =
                    Instance::new(service.clone(), address).with_tag(AUTHORITY_TAG, &authority);
                publisher.publish_instances(vec![Arc::new(instance)]);
                backoff.reset();
                (timing.refresh, false)
            }
            Err(error) => {
                tracing::warn!(%service, %error, "mesh mode: lookup failed, keeping the last address");
                publisher.publish_error(error);
                (backoff.next_delay(), true)
            }
        };
        tokio::select! {
            () = publisher.closed() => return,
            () = tokio::time::sleep(delay) => {}
        }
        if failed {
            publisher.watch_restarted();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::{Arc, Mutex},
    };

    use super::*;
    use crate::{health::RegistryHealth, kit::Subscriptions};

    fn v4(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_is_preferred_then_the_first_ipv6() {
        assert_eq!(
            pick([v4("[::1]:80"), v4("10.0.0.1:80"), v4("10.0.0.2:80")]),
            Some(v4("10.0.0.1:80"))
        );
        assert_eq!(pick([v4("[::2]:80"), v4("[::1]:80")]), Some(v4("[::2]:80")));
        assert_eq!(pick([]), None);
    }

    #[tokio::test]
    async fn a_lookup_of_a_reserved_invalid_name_is_a_typed_error() {
        let target = Target {
            host: "nonexistent.invalid".to_owned(),
            port: 80,
        };
        let error = lookup(target, Duration::from_secs(10)).await.unwrap_err();
        assert!(
            matches!(
                error,
                Error::Backend {
                    backend: "mesh",
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("nonexistent.invalid"), "{error}");
    }

    /// Answers each lookup with the next scripted result; then fails.
    fn scripted(
        answers: Vec<Result<SocketAddr>>,
    ) -> impl Fn(&Target) -> std::future::Ready<Result<SocketAddr>> {
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        move |_| {
            let next = answers.lock().unwrap().pop_front();
            std::future::ready(next.unwrap_or(Err(Error::Closed)))
        }
    }

    const TIMING: Timing = Timing {
        refresh: Duration::from_secs(30),
        max_backoff: Duration::from_secs(5),
        lookup_timeout: Duration::from_secs(5),
    };

    fn target() -> Target {
        Target {
            host: "echo.prod.svc.cluster.local".to_owned(),
            port: 8080,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_last_address_until_one_succeeds() {
        let health = RegistryHealth::new();
        let subscriptions = Subscriptions::new(BACKEND, health.clone());
        let lookup = scripted(vec![
            Ok(v4("10.96.0.7:8080")),
            Err(Error::backend(BACKEND, "SERVFAIL")),
            Ok(v4("10.96.0.8:8080")),
        ]);
        let mut watch = subscriptions
            .subscribe("echo", |publisher| {
                follow(publisher, "echo".to_owned(), target(), TIMING, lookup)
            })
            .await
            .unwrap();
        let first = watch.current();
        assert_eq!(first.instances.len(), 1);
        assert_eq!(first.instances[0].address, v4("10.96.0.7:8080"));
        assert_eq!(first.instances[0].service, "echo");
        assert_eq!(
            first.instances[0].tags[AUTHORITY_TAG],
            "echo.prod.svc.cluster.local:8080"
        );

        // The refresh 30 s later fails: same address, with the error.
        let stale = watch.changed().await.unwrap();
        assert!(stale.last_error.is_some());
        assert_eq!(stale.instances, first.instances);
        let entry = &health.snapshot().subscriptions[0];
        assert_eq!(
            (entry.backend, entry.errors, entry.serving_stale),
            ("mesh", 1, true)
        );

        // The retry, after a backoff delay, answers another address.
        let fresh = watch.changed().await.unwrap();
        assert!(fresh.last_error.is_none());
        assert_eq!(fresh.instances[0].address, v4("10.96.0.8:8080"));
        let entry = &health.snapshot().subscriptions[0];
        assert_eq!((entry.watch_restarts, entry.serving_stale), (1, false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_lookup_that_fails_fails_the_subscribe() {
        let subscriptions = Subscriptions::new(BACKEND, RegistryHealth::new());
        let lookup = scripted(vec![Err(Error::backend(BACKEND, "NXDOMAIN"))]);
        let result = subscriptions
            .subscribe("echo", |publisher| {
                follow(publisher, "echo".to_owned(), target(), TIMING, lookup)
            })
            .await;
        assert!(matches!(result, Err(Error::Resolve { .. })), "{result:?}");
    }
}
