//! Mesh mode's follower: the instances of a service are the DNS answer for
//! its target, looked up again periodically.

use std::{
    collections::HashSet,
    future::Future,
    net::{SocketAddr, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

use tokio::task::JoinHandle;

use super::{target::Target, AUTHORITY_TAG, BACKEND};
use crate::{
    kit::{Backoff, Publisher},
    Error, Instance, Result,
};

/// The first retry after a failed lookup; later ones double up to the
/// builder's `max_backoff`.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Most addresses mesh mode publishes for one name; the rest of a larger
/// DNS answer (a headless Service of more pods) is left out, with a
/// warning.
pub const MAX_ADDRESSES: usize = 1024;

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

/// Where a follower's addresses come from: DNS, or a script in tests.
pub(crate) trait Lookup: Send + 'static {
    /// The addresses of the target now (each once).
    fn lookup(&mut self) -> impl Future<Output = Result<Vec<SocketAddr>>> + Send;
}

/// Looks a target up with the system resolver, as every client of the pod
/// does, at most one lookup at a time.
///
/// The system resolver (`getaddrinfo`) blocks a thread of tokio's blocking
/// pool and cannot be cancelled: a lookup that outlives its timeout keeps
/// its thread until the resolver gives up. So a lookup that timed out is
/// kept, not abandoned, and the next attempt waits for it (again for at
/// most the timeout) instead of starting another: a DNS server that stops
/// answering holds one thread per followed name, however often the
/// follower retries.
#[derive(Debug)]
pub(crate) struct DnsLookup {
    target: Target,
    timeout: Duration,
    in_flight: Option<JoinHandle<std::io::Result<Vec<SocketAddr>>>>,
    /// Whether an answer was cut to [`MAX_ADDRESSES`] already (said once).
    truncated: bool,
}

impl DnsLookup {
    pub(crate) fn new(target: Target, timeout: Duration) -> Self {
        Self {
            target,
            timeout,
            in_flight: None,
            truncated: false,
        }
    }

    fn failed(&self, source: std::io::Error) -> Error {
        Error::backend(
            BACKEND,
            LookupFailed {
                host: self.target.lookup_name(),
                source,
            },
        )
    }
}

impl Lookup for DnsLookup {
    async fn lookup(&mut self) -> Result<Vec<SocketAddr>> {
        let pending = self.in_flight.get_or_insert_with(|| {
            let name = self.target.lookup_name();
            let port = self.target.port;
            tokio::task::spawn_blocking(move || {
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(Iterator::collect)
            })
        });
        let Ok(joined) = tokio::time::timeout(self.timeout, pending).await else {
            // Still running: the next attempt waits for this one.
            return Err(Error::Timeout {
                backend: BACKEND,
                timeout: self.timeout,
            });
        };
        self.in_flight = None;
        let found = joined
            .map_err(|join| self.failed(std::io::Error::other(join.to_string())))?
            .map_err(|source| self.failed(source))?;
        let (addresses, cut) = ordered(found);
        if cut && !self.truncated {
            self.truncated = true;
            tracing::warn!(
                host = %self.target.host,
                kept = MAX_ADDRESSES,
                "mesh mode: the DNS answer has more addresses than are published"
            );
        }
        if addresses.is_empty() {
            return Err(self.failed(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            )));
        }
        Ok(addresses)
    }
}

/// Every address once, at most [`MAX_ADDRESSES`], and whether some were
/// left out. The IPv4 ones come first, each family in the resolver's order,
/// so an answer that is cut keeps IPv4 ones first (a Service's cluster IP is
/// IPv4 in most clusters; dual-stack ones list both). Snapshots list
/// instances in address order, which also puts IPv4 first.
fn ordered(found: Vec<SocketAddr>) -> (Vec<SocketAddr>, bool) {
    let mut seen = HashSet::with_capacity(found.len());
    let unique: Vec<SocketAddr> = found
        .into_iter()
        .filter(|address| seen.insert(*address))
        .collect();
    let (mut addresses, v6): (Vec<_>, Vec<_>) = unique.into_iter().partition(SocketAddr::is_ipv4);
    addresses.extend(v6);
    let cut = addresses.len() > MAX_ADDRESSES;
    addresses.truncate(MAX_ADDRESSES);
    (addresses, cut)
}

/// Publishes `service` as one instance per address `lookup` answers, each
/// with [`AUTHORITY_TAG`] (the target's authority), then looks up again
/// every `timing.refresh`. A failed lookup publishes the error (the last
/// addresses stay) and is retried after a backoff delay. Returns once every
/// subscriber is gone.
pub(crate) async fn follow(
    publisher: Publisher,
    service: String,
    target: Target,
    timing: Timing,
    mut lookup: impl Lookup,
) {
    let authority = target.authority();
    // One name for every instance published.
    let service: Arc<str> = service.into();
    let mut backoff = Backoff::new(FIRST_RETRY, timing.max_backoff.max(FIRST_RETRY));
    loop {
        let (delay, failed) = match lookup.lookup().await {
            Ok(addresses) => {
                let instances = addresses
                    .into_iter()
                    .map(|address| {
                        Arc::new(
                            Instance::new(service.clone(), address)
                                .with_tag(AUTHORITY_TAG, &authority),
                        )
                    })
                    .collect();
                publisher.publish_instances(instances);
                backoff.reset();
                (timing.refresh, false)
            }
            Err(error) => {
                tracing::warn!(%service, %error, "mesh mode: lookup failed, keeping the last addresses");
                publisher.publish_error(error);
                (backoff.next_delay(), true)
            }
        };
        if !publisher.pause(delay).await {
            return;
        }
        if failed {
            publisher.watch_restarted();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::{health::RegistryHealth, kit::Subscriptions};

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_address_once_ipv4_first() {
        let found = vec![
            addr("[::1]:80"),
            addr("10.0.0.1:80"),
            addr("[::2]:80"),
            addr("10.0.0.2:80"),
            addr("10.0.0.1:80"),
            addr("[::1]:80"),
        ];
        assert_eq!(
            ordered(found),
            (
                vec![
                    addr("10.0.0.1:80"),
                    addr("10.0.0.2:80"),
                    addr("[::1]:80"),
                    addr("[::2]:80"),
                ],
                false
            )
        );
        assert_eq!(ordered(Vec::new()), (Vec::new(), false));
    }

    #[test]
    fn a_larger_answer_is_cut() {
        let found: Vec<SocketAddr> = (0..MAX_ADDRESSES + 10)
            .map(|n| {
                let n = u32::try_from(n).unwrap();
                SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + n), 80))
            })
            .collect();
        let (addresses, cut) = ordered(found.clone());
        assert!(cut);
        assert_eq!(addresses, found[..MAX_ADDRESSES]);
    }

    #[tokio::test]
    async fn a_lookup_of_a_reserved_invalid_name_is_a_typed_error() {
        let target = Target {
            host: "nonexistent.invalid".to_owned(),
            port: 80,
            fqdn: true,
        };
        let error = DnsLookup::new(target, Duration::from_secs(10))
            .lookup()
            .await
            .unwrap_err();
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
        assert!(
            error.to_string().contains("nonexistent.invalid."),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_ip_is_its_own_answer() {
        let target = Target {
            host: "127.0.0.1".to_owned(),
            port: 80,
            fqdn: false,
        };
        let found = DnsLookup::new(target, Duration::from_secs(10))
            .lookup()
            .await
            .unwrap();
        assert_eq!(found, [addr("127.0.0.1:80")]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lookup_that_times_out_is_awaited_not_started_again() {
        // A lookup that does not end until released (a stand-in for a
        // blocked getaddrinfo): the attempts after the timeout wait for it
        // instead of starting more.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let mut lookup = DnsLookup::new(
            Target {
                host: "127.0.0.1".to_owned(),
                port: 80,
                fqdn: false,
            },
            Duration::from_millis(50),
        );
        lookup.in_flight = Some(tokio::task::spawn_blocking(move || {
            let _ = released.recv();
            Ok(vec![addr("10.0.0.9:80")])
        }));
        for _ in 0..3 {
            let error = lookup.lookup().await.unwrap_err();
            assert!(matches!(error, Error::Timeout { .. }), "{error}");
            assert!(lookup.in_flight.is_some());
        }
        release.send(()).unwrap();
        // The kept lookup's answer is the next attempt's (a lookup started
        // again would answer 127.0.0.1:80).
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(found) = lookup.lookup().await {
                    return found;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(found, [addr("10.0.0.9:80")]);
        assert!(lookup.in_flight.is_none());
    }

    /// Answers each lookup with the next scripted result; then fails.
    struct Scripted(VecDeque<Result<Vec<SocketAddr>>>);

    impl Lookup for Scripted {
        async fn lookup(&mut self) -> Result<Vec<SocketAddr>> {
            self.0.pop_front().unwrap_or(Err(Error::Closed))
        }
    }

    fn scripted(answers: Vec<Result<Vec<SocketAddr>>>) -> Scripted {
        Scripted(answers.into())
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
            fqdn: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_last_addresses_until_one_succeeds() {
        let health = RegistryHealth::new();
        let subscriptions = Subscriptions::new(BACKEND, health.clone());
        let lookup = scripted(vec![
            Ok(vec![addr("10.96.0.7:8080"), addr("10.96.0.6:8080")]),
            Err(Error::backend(BACKEND, "SERVFAIL")),
            Ok(vec![addr("10.96.0.8:8080")]),
        ]);
        let mut watch = subscriptions
            .subscribe("echo", |publisher| {
                follow(publisher, "echo".to_owned(), target(), TIMING, lookup)
            })
            .await
            .unwrap();
        let first = watch.current();
        // Both, in the snapshot's (address) order.
        let published: Vec<_> = first.instances.iter().map(|i| i.address).collect();
        assert_eq!(published, [addr("10.96.0.6:8080"), addr("10.96.0.7:8080")]);
        for instance in first.instances.iter() {
            assert_eq!(&*instance.service, "echo");
            assert_eq!(
                instance.tags.get(AUTHORITY_TAG),
                Some("echo.prod.svc.cluster.local:8080")
            );
        }

        // The refresh 30 s later fails: same addresses, with the error.
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
        let published: Vec<_> = fresh.instances.iter().map(|i| i.address).collect();
        assert_eq!(published, [addr("10.96.0.8:8080")]);
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
