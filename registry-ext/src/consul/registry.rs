//! Registration through the Consul agent, kept alive and restored.

use std::{net::IpAddr, sync::Arc, time::Duration};

use tracing::{debug, error, info, warn};

use super::{
    api::{Api, Pass, Registration as Body},
    builder::Check,
    ConsulBuilder,
};
use crate::{
    advertise_address,
    health::{RegistrationProbe, RegistryHealth},
    kit::Backoff,
    kit::StopSignal,
    Error, Instance, Registration, Registry, Result,
};

/// Registers instances with the local Consul agent and keeps them there.
///
/// With the default TTL check, a background task passes the check every
/// third of the TTL; with agent-run checks (HTTP, gRPC, TCP) it verifies
/// every 10 s that the agent still has the service. Either way, a service
/// the agent forgot (agent restart) is registered again with capped
/// exponential backoff, for as long as the [`Registration`] lives.
///
/// Tags go into the service `Meta`, encoded where Consul refuses the key
/// (see the [module docs](super)); an instance whose tags Consul cannot
/// hold is refused with [`Error::InvalidInstance`] before any request. A
/// 403 from the agent is [`Error::PermissionDenied`]: returned by
/// `register` and `deregister`, and in the background logged as an ACL
/// error and retried once per period until the token is allowed again.
///
/// ```no_run
/// use rpc_ext_registry::{consul::ConsulRegistry, Instance, Registry};
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = ConsulRegistry::builder().address("http://127.0.0.1:8500").build()?;
/// let registration = registry
///     .register(Instance::new("echo", "0.0.0.0:50051".parse().unwrap()))
///     .await?;
/// // ... serve, then on shutdown:
/// registration.deregister().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConsulRegistry {
    shared: Arc<Shared>,
}

struct Shared {
    api: Api,
    check: Check,
    deregister_critical_after: Duration,
    max_backoff: Duration,
    advertise_ip: Option<IpAddr>,
    health: RegistryHealth,
}

impl std::fmt::Debug for ConsulRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulRegistry")
            .field("check", &self.shared.check)
            .finish_non_exhaustive()
    }
}

impl ConsulRegistry {
    /// Starts building a registry.
    pub fn builder() -> ConsulBuilder<Self> {
        ConsulBuilder::new()
    }

    pub(crate) fn new(api: Api, builder: ConsulBuilder<Self>) -> Self {
        Self {
            shared: Arc::new(Shared {
                api,
                check: builder.check,
                deregister_critical_after: builder.deregister_critical_after,
                max_backoff: builder.max_backoff,
                advertise_ip: builder.advertise_ip,
                health: builder.health.unwrap_or_default(),
            }),
        }
    }

    /// The health of this registry's registrations (shared by its clones):
    /// each one's state, TTL passes (or, for agent-run checks, presence
    /// checks) that succeeded or failed, and re-registrations after the
    /// agent forgot the service. See [`health`](crate::health).
    #[must_use]
    pub fn health(&self) -> RegistryHealth {
        self.shared.health.clone()
    }
}

impl Registry for ConsulRegistry {
    async fn register(&self, mut instance: Instance) -> Result<Registration> {
        instance.address = advertise_address(instance.address, self.shared.advertise_ip)?;
        instance.validate()?;
        let body = Body::of(
            &instance,
            &self.shared.check,
            self.shared.deregister_critical_after,
        )?;
        self.shared.register(&body).await?;
        info!(id = %body.id, "registered in Consul");
        let (mut registration, stop) = Registration::new(instance);
        let health = registration.track(super::BACKEND, &self.shared.health);
        tokio::spawn(self.shared.clone().keep(body, stop, health));
        Ok(registration)
    }
}

impl Shared {
    /// How often the registration is checked (and the TTL passed).
    fn period(&self) -> Duration {
        match &self.check {
            Check::Ttl { ttl } => *ttl / 3,
            _ => Duration::from_secs(10),
        }
    }

    /// Registers `body`, then passes its TTL check at once: an agent that
    /// already has this service ID keeps the status of its check over the
    /// `passing` of the new definition, so an instance registered again
    /// over a critical check (a successor of a hung process, same
    /// instance) would stay out of the passing set until the first
    /// periodic pass. Agent-run checks turn passing at their first probe.
    async fn register(&self, body: &Body) -> Result<()> {
        self.api.register(body).await?;
        if let Check::Ttl { .. } = &self.check {
            match self.api.pass(&body.check_id()).await {
                Ok(Pass::Passed) => {}
                // Gone already: the keeper registers it again.
                Ok(Pass::Unknown) => {
                    warn!(id = %body.id, "the check vanished right after registration")
                }
                Err(error) => {
                    warn!(id = %body.id, %error, "first TTL pass failed; the keeper tries again");
                }
            }
        }
        Ok(())
    }

    /// The delay after a successful round.
    fn healthy(&self, id: &str, backoff: &mut Backoff, denied: &mut bool) -> Duration {
        if std::mem::take(denied) {
            info!(id, "Consul ACLs allow the registration again");
        }
        backoff.reset();
        self.period()
    }

    /// How long to wait after `error`, and how to report it. A refusal by
    /// ACLs needs an operator (the token's policy, or a new token), not a
    /// faster retry: it is logged as an ACL error when it starts, and tried
    /// again once per period — the load of a healthy registration — so the
    /// instance comes back within a period of the token being allowed
    /// again. Anything else (agent unreachable, 5xx) is retried with capped
    /// exponential backoff.
    fn after_failure(
        &self,
        id: &str,
        what: &str,
        error: &Error,
        backoff: &mut Backoff,
        denied: &mut bool,
    ) -> Duration {
        if let Error::PermissionDenied { .. } = error {
            if *denied {
                debug!(id, %error, "{what} still refused by Consul ACLs");
            } else {
                error!(
                    id,
                    %error,
                    retry_every = ?self.period(),
                    "{what} refused by Consul ACLs: the instance drops out once its check turns critical; retrying once per period"
                );
                *denied = true;
            }
            return self.period();
        }
        warn!(id, %error, "{what} failed: Consul agent unreachable or failing");
        backoff.next_delay()
    }

    /// Deregisters the service if it is still this registration's: a
    /// process that registered the same instance (same service ID) later,
    /// such as the successor of a process that is shutting down, replaced
    /// the registration id in the Meta, and its registration is left alone.
    ///
    /// The agent API has no conditional deregistration, so a registration
    /// made between the read and the deregistration (a few milliseconds) is
    /// still removed; its keeper registers it again on its next check, as
    /// after an agent restart.
    async fn deregister(&self, body: &Body) -> Result<()> {
        let Some(service) = self.api.agent_service(&body.id).await? else {
            info!(id = %body.id, "already gone from Consul");
            return Ok(());
        };
        if service.registration() != Some(body.registration.as_str()) {
            info!(
                id = %body.id,
                ours = %body.registration,
                theirs = service.registration().unwrap_or("none"),
                "not deregistering: the service was registered again by another registration"
            );
            return Ok(());
        }
        self.api.deregister(&body.id).await?;
        info!(id = %body.id, "deregistered from Consul");
        Ok(())
    }

    async fn keep(self: Arc<Self>, body: Body, mut stop: StopSignal, health: RegistrationProbe) {
        let check_id = body.check_id();
        let mut backoff = Backoff::new(Duration::from_millis(100), self.max_backoff);
        let mut delay = self.period();
        // Whether the last attempt was refused by ACLs (reported once).
        let mut denied = false;
        loop {
            tokio::select! {
                reason = stop.wait() => {
                    reason.reply(self.deregister(&body).await);
                    return;
                }
                () = tokio::time::sleep(delay) => {}
            }
            let present = match &self.check {
                Check::Ttl { .. } => self
                    .api
                    .pass(&check_id)
                    .await
                    .map(|p| matches!(p, Pass::Passed)),
                _ => self.api.has_service(&body.id).await,
            };
            delay = match present {
                Ok(true) => {
                    health.renewed();
                    self.healthy(&body.id, &mut backoff, &mut denied)
                }
                Ok(false) => {
                    warn!(id = %body.id, "the Consul agent forgot the service; registering again");
                    health.renewal_failed();
                    health.lost();
                    match self.register(&body).await {
                        Ok(()) => {
                            health.reregistered();
                            info!(id = %body.id, "registered in Consul again");
                            self.healthy(&body.id, &mut backoff, &mut denied)
                        }
                        Err(error) => {
                            health.renewal_failed();
                            self.after_failure(
                                &body.id,
                                "re-registration",
                                &error,
                                &mut backoff,
                                &mut denied,
                            )
                        }
                    }
                }
                // Within a period, so that a short outage does not cost the TTL.
                Err(error) => {
                    health.renewal_failed();
                    self.after_failure(&body.id, "keep-alive", &error, &mut backoff, &mut denied)
                        .min(self.period())
                }
            };
        }
    }
}
