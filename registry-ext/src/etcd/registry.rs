//! Registration into etcd: a key per instance on a lease kept alive in the
//! background; renewed again after a broken connection, re-created when
//! etcd has lost it.

use std::{net::IpAddr, sync::Arc, time::Duration};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::time::{interval, sleep, Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::{codec::encode_instance, service_prefix, with_retry, EtcdBuilder};
use crate::{
    advertise_address,
    health::{RegistrationProbe, RegistryHealth},
    kit::Backoff,
    kit::StopSignal,
    Error, Instance, Registration, Registry, Result,
};

/// Registers instances into etcd and keeps them there.
///
/// Each registration owns a lease of the configured TTL. A background task
/// renews it. If the keep-alive stream breaks while the lease lives, the task
/// reconnects and renews the same lease (watchers see nothing); if the lease
/// expired or etcd lost it (a restart with its data wiped), the task
/// registers the instance again with a fresh lease. Both retry with capped
/// exponential backoff for as long as the [`Registration`] lives.
///
/// ```no_run
/// use rpc_ext_registry::{etcd::EtcdRegistry, Instance, Registry};
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = EtcdRegistry::builder(["http://127.0.0.1:2379"]).build().await?;
/// let registration = registry
///     .register(Instance::new("echo", "0.0.0.0:50051".parse().unwrap()).with_tag("zone", "a"))
///     .await?;
/// // ... serve until shutdown, then:
/// registration.deregister().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdRegistry {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    prefix: Arc<str>,
    ttl: Duration,
    request_timeout: Duration,
    max_backoff: Duration,
    advertise_ip: Option<IpAddr>,
    health: RegistryHealth,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdRegistry {
    /// Starts building a registry that talks to `endpoints`
    /// (`http://host:port`, or `host:port`).
    pub fn builder<E: AsRef<str>>(endpoints: impl IntoIterator<Item = E>) -> EtcdBuilder<Self> {
        EtcdBuilder::new(endpoints)
    }

    pub(crate) fn new(client: Client, builder: EtcdBuilder<Self>) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                prefix: builder.prefix_arc(),
                ttl: builder.ttl,
                request_timeout: builder.request_timeout,
                max_backoff: builder.max_backoff,
                advertise_ip: builder.advertise_ip,
                health: builder.health.unwrap_or_default(),
            }),
        }
    }

    /// The health of this registry's registrations (shared by its clones):
    /// each one's state, lease renewals that etcd answered or that failed,
    /// and re-registrations after a lost lease. See
    /// [`health`](crate::health).
    #[must_use]
    pub fn health(&self) -> RegistryHealth {
        self.shared.health.clone()
    }

    /// The key an instance is stored under.
    #[must_use]
    pub fn key_of(&self, instance: &Instance) -> String {
        format!(
            "{}{}",
            service_prefix(&self.shared.prefix, &instance.service),
            instance.address
        )
    }
}

impl Registry for EtcdRegistry {
    async fn register(&self, mut instance: Instance) -> Result<Registration> {
        instance.address = advertise_address(instance.address, self.shared.advertise_ip)?;
        instance.validate()?;
        // `<prefix>/<service>/<address>`: a `/` in the name would put the
        // instance inside another service's range (`a/b` under `a`).
        if instance.service.contains('/') {
            return Err(Error::InvalidInstance(format!(
                "service name {:?} cannot be stored in etcd: it contains '/'",
                instance.service
            )));
        }
        let entry = Entry {
            key: self.key_of(&instance),
            value: encode_instance(&instance),
        };
        let lease = self.shared.put_with_new_lease(&entry).await?;
        info!(key = %entry.key, lease, "registered in etcd");
        let (mut registration, stop) = Registration::new(instance);
        let health = registration.track(super::BACKEND, &self.shared.health);
        tokio::spawn(self.shared.clone().keep(entry, lease, stop, health));
        Ok(registration)
    }
}

/// What one registration writes.
#[derive(Debug)]
struct Entry {
    key: String,
    value: Vec<u8>,
}

impl Shared {
    fn client(&self) -> Client {
        self.client.clone()
    }

    async fn put_with_new_lease(&self, entry: &Entry) -> Result<i64> {
        let ttl_secs = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let lease = with_retry(self.request_timeout, || {
            let mut client = self.client();
            async move { client.lease_grant(ttl_secs, None).await }
        })
        .await?
        .id();
        let put = with_retry(self.request_timeout, || {
            let mut client = self.client();
            let (key, value) = (entry.key.clone(), entry.value.clone());
            async move {
                client
                    .put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await;
        if let Err(error) = put {
            self.revoke(lease).await;
            return Err(error);
        }
        Ok(lease)
    }

    /// Best effort: an unrevoked lease expires by itself after its TTL.
    async fn revoke(&self, lease: i64) {
        let revoked = with_retry(self.request_timeout, || {
            let mut client = self.client();
            async move { client.lease_revoke(lease).await }
        })
        .await;
        if let Err(error) = revoked {
            debug!(lease, %error, "lease not revoked; it will expire");
        }
    }

    /// Deletes the key if it still hangs on `lease` (a newer registration of
    /// the same address may own it now), then revokes the lease.
    async fn remove(&self, entry: &Entry, lease: i64) -> Result<()> {
        let deleted = with_retry(self.request_timeout, || {
            let mut client = self.client();
            let key = entry.key.clone();
            async move {
                let txn = Txn::new()
                    .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                    .and_then([TxnOp::delete(key, None)]);
                client.txn(txn).await
            }
        })
        .await;
        self.revoke(lease).await;
        deleted.map(|_| info!(key = %entry.key, "deregistered from etcd"))
    }

    /// Keeps `entry` registered until the handle stops it.
    async fn keep(
        self: Arc<Self>,
        entry: Entry,
        mut lease: i64,
        mut stop: StopSignal,
        health: RegistrationProbe,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.max_backoff);
        let mut expires = Instant::now() + self.ttl;
        loop {
            let lost = tokio::select! {
                reason = stop.wait() => {
                    reason.reply(self.remove(&entry, lease).await);
                    return;
                }
                lost = self.keep_alive(lease, &mut expires, &mut backoff, &health) => lost,
            };
            health.renewal_failed();
            if !lost.lease_gone && Instant::now() < expires {
                // Only the connection broke: renewing the same lease keeps
                // the key untouched, so watchers see no change at all.
                debug!(key = %entry.key, lease, error = %lost.error, "etcd keep-alive interrupted; renewing the same lease");
                tokio::select! {
                    reason = stop.wait() => {
                        reason.reply(self.remove(&entry, lease).await);
                        return;
                    }
                    () = sleep(backoff.next_delay()) => {}
                }
                continue;
            }
            warn!(key = %entry.key, lease, error = %lost.error, "etcd lease lost; registering again");
            health.lost();
            loop {
                tokio::select! {
                    reason = stop.wait() => {
                        reason.reply(self.remove(&entry, lease).await);
                        return;
                    }
                    () = sleep(backoff.next_delay()) => {}
                }
                match self.put_with_new_lease(&entry).await {
                    Ok(new_lease) => {
                        // The key now hangs on the new lease; dropping the old
                        // one cannot delete it.
                        self.revoke(lease).await;
                        lease = new_lease;
                        expires = Instant::now() + self.ttl;
                        backoff.reset();
                        health.reregistered();
                        info!(key = %entry.key, lease, "registered in etcd again");
                        break;
                    }
                    Err(error) => {
                        health.renewal_failed();
                        warn!(key = %entry.key, %error, "etcd re-registration failed");
                    }
                }
            }
        }
    }

    /// Renews `lease` every third of its TTL, moving `expires` on with each
    /// answer (each one a renewal in `health`); returns why it stopped.
    async fn keep_alive(
        &self,
        lease: i64,
        expires: &mut Instant,
        backoff: &mut Backoff,
        health: &RegistrationProbe,
    ) -> Lost {
        let (mut keeper, mut responses) = match with_retry(self.request_timeout, || {
            let mut client = self.client();
            async move { client.lease_keep_alive(lease).await }
        })
        .await
        {
            // The client reads etcd's first answer itself: the lease was
            // just renewed.
            Ok(stream) => {
                *expires = Instant::now() + self.ttl;
                backoff.reset();
                health.renewed();
                stream
            }
            Err(error) if says_lease_not_found(&error) => return Lost::lease(error),
            Err(error) => return Lost::connection(error),
        };
        let mut ticks = interval(self.ttl / 3);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if Instant::now() >= *expires {
                        return Lost::lease(Error::Timeout { backend: super::BACKEND, timeout: self.ttl });
                    }
                    if let Err(error) = keeper.keep_alive().await {
                        return Lost::connection(super::etcd_error(error));
                    }
                }
                response = responses.message() => match response {
                    Ok(Some(response)) if response.ttl() > 0 => {
                        *expires = lease_expiry(Instant::now(), response.ttl());
                        backoff.reset();
                        health.renewed();
                    }
                    Ok(Some(_)) => {
                        return Lost::lease(Error::backend(super::BACKEND, format!("lease {lease} not found (expired or etcd data lost)")));
                    }
                    Ok(None) => return Lost::connection(Error::backend(super::BACKEND, "keep-alive stream closed")),
                    Err(error) => return Lost::connection(super::etcd_error(error)),
                },
            }
        }
    }
}

/// Why renewing a lease stopped.
struct Lost {
    error: Error,
    /// etcd said the lease is gone, or it outlived its TTL unrenewed;
    /// otherwise only the connection broke and the lease may live on.
    lease_gone: bool,
}

impl Lost {
    fn connection(error: Error) -> Self {
        Self {
            error,
            lease_gone: false,
        }
    }

    fn lease(error: Error) -> Self {
        Self {
            error,
            lease_gone: true,
        }
    }
}

/// Whether etcd answered that the lease does not exist (revoked, expired, or
/// its data lost), as opposed to not answering at all.
fn says_lease_not_found(error: &Error) -> bool {
    let Error::Backend { source, .. } = error else {
        return false;
    };
    match source.downcast_ref::<etcd_client::Error>() {
        // The client's own check of the first keep-alive answer (TTL 0).
        Some(etcd_client::Error::LeaseKeepAliveError(message)) => message.contains("not found"),
        Some(etcd_client::Error::GRpcStatus(status)) => {
            status.code() == tonic::Code::NotFound || status.message().contains("lease not found")
        }
        _ => false,
    }
}

/// When a lease whose TTL etcd just reported as `ttl_secs` runs out. The
/// TTL comes from the server, so it is capped at etcd's own maximum
/// (`MaxLeaseTTL`, 9,000,000,000 s) and the sum saturates: no answer can
/// overflow the clock and end the keeper with a panic.
fn lease_expiry(now: Instant, ttl_secs: i64) -> Instant {
    const MAX_LEASE_TTL_SECS: u64 = 9_000_000_000;
    let ttl = Duration::from_secs(ttl_secs.unsigned_abs().min(MAX_LEASE_TTL_SECS));
    now.checked_add(ttl).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    #[test]
    fn any_ttl_etcd_reports_gives_an_expiry_without_overflow() {
        let now = Instant::now();
        assert_eq!(
            super::lease_expiry(now, 10),
            now + std::time::Duration::from_secs(10)
        );
        for ttl in [i64::MAX, i64::MIN, 9_000_000_001] {
            assert!(super::lease_expiry(now, ttl) >= now);
        }
    }
}
