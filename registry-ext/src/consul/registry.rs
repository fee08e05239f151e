//! Registration through the Consul agent, kept alive and restored.

use std::{net::IpAddr, sync::Arc, time::Duration};

use tracing::{info, warn};

use super::{
    api::{Api, Pass, Registration as Body},
    builder::Check,
    ConsulBuilder,
};
use crate::{
    advertise_address, backend::backoff::Backoff, registry::StopSignal, Instance, Registration,
    Registry, Result,
};

/// Registers instances with the local Consul agent and keeps them there.
///
/// With the default TTL check, a background task passes the check every
/// third of the TTL; with agent-run checks (HTTP, gRPC, TCP) it verifies
/// every 10 s that the agent still has the service. Either way, a service
/// the agent forgot (agent restart) is registered again with capped
/// exponential backoff, for as long as the [`Registration`] lives.
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
            }),
        }
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
        );
        self.shared.api.register(&body).await?;
        info!(id = %body.id, "registered in Consul");
        let (registration, stop) = Registration::new(instance);
        tokio::spawn(self.shared.clone().keep(body, stop));
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

    async fn keep(self: Arc<Self>, body: Body, mut stop: StopSignal) {
        let check_id = body.check_id();
        let mut backoff = Backoff::new(Duration::from_millis(100), self.max_backoff);
        let mut delay = self.period();
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
                    backoff.reset();
                    self.period()
                }
                Ok(false) => {
                    warn!(id = %body.id, "the Consul agent forgot the service; registering again");
                    match self.api.register(&body).await {
                        Ok(()) => {
                            info!(id = %body.id, "registered in Consul again");
                            backoff.reset();
                            self.period()
                        }
                        Err(error) => {
                            warn!(id = %body.id, %error, "Consul re-registration failed");
                            backoff.next_delay()
                        }
                    }
                }
                Err(error) => {
                    warn!(id = %body.id, %error, "Consul agent unreachable");
                    backoff.next_delay().min(self.period())
                }
            };
        }
    }
}
