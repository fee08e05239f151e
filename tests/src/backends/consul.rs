//! Consul as a fixture: the stand-in agent, or the real agent at
//! `CONSUL_HTTP_ADDR`.

use std::{net::SocketAddr, time::Duration};

use rpc_ext_registry::consul::{Check, ConsulRegistry, ConsulResolver};

use super::{ensure_covers, unique_name, BackendFixture, Capabilities, MAX_BACKOFF, TTL};
use crate::{consul::ConsulStandIn, FaultProxy};

/// How long the resolvers' blocking queries wait for a change.
const BLOCKING_WAIT: Duration = Duration::from_secs(2);

/// A Consul agent: the real one at `CONSUL_HTTP_ADDR` when set and the test
/// needs no capability (a test cannot take a real agent down or make it
/// forget), else the stand-in. Registries and resolvers reach the stand-in
/// through a [`FaultProxy`], which refuses connections while it is down;
/// losing data is the stand-in's restart (registrations forgotten, index
/// lower).
pub struct ConsulFixture {
    agent: Agent,
}

enum Agent {
    Real {
        address: String,
    },
    StandIn {
        stand_in: ConsulStandIn,
        proxy: FaultProxy,
    },
}

impl ConsulFixture {
    /// Where registries and resolvers send their requests.
    fn client_address(&self) -> String {
        match &self.agent {
            Agent::Real { address } => address.clone(),
            Agent::StandIn { proxy, .. } => proxy.endpoint(),
        }
    }

    /// Where the fixture reads what the agent holds: past the proxy.
    fn direct_address(&self) -> String {
        match &self.agent {
            Agent::Real { address } => address.clone(),
            Agent::StandIn { stand_in, .. } => stand_in.address(),
        }
    }

    fn stand_in(&self, what: &str) -> anyhow::Result<(&ConsulStandIn, &FaultProxy)> {
        match &self.agent {
            Agent::StandIn { stand_in, proxy } => Ok((stand_in, proxy)),
            Agent::Real { address } => {
                anyhow::bail!("the real Consul agent at {address} cannot {what}")
            }
        }
    }
}

impl BackendFixture for ConsulFixture {
    type Registry = ConsulRegistry;
    type Resolver = ConsulResolver;

    const NAME: &'static str = "consul";

    async fn start(needs: Capabilities) -> anyhow::Result<Self> {
        ensure_covers::<Self>(Capabilities::ALL, needs)?;
        let agent = match std::env::var("CONSUL_HTTP_ADDR") {
            Ok(address) if !address.is_empty() && Capabilities::NONE.covers(needs) => {
                Agent::Real { address }
            }
            _ => {
                let stand_in = ConsulStandIn::start().await?;
                let proxy = FaultProxy::in_front_of(&stand_in.address()).await?;
                Agent::StandIn { stand_in, proxy }
            }
        };
        Ok(Self { agent })
    }

    fn describe(&self) -> String {
        match &self.agent {
            Agent::Real { address } => format!("the real Consul agent at {address}"),
            Agent::StandIn { stand_in, proxy } => format!(
                "the Consul stand-in at {} behind a fault proxy at {}",
                stand_in.address(),
                proxy.endpoint()
            ),
        }
    }

    fn capabilities(&self) -> Capabilities {
        match self.agent {
            Agent::Real { .. } => Capabilities::NONE,
            Agent::StandIn { .. } => Capabilities::ALL,
        }
    }

    fn ttl(&self) -> Option<Duration> {
        Some(TTL)
    }

    async fn registry(&self) -> anyhow::Result<ConsulRegistry> {
        Ok(ConsulRegistry::builder()
            .address(self.client_address())
            .check(Check::Ttl { ttl: TTL })
            .max_backoff(MAX_BACKOFF)
            .build()?)
    }

    async fn resolver(&self) -> anyhow::Result<ConsulResolver> {
        Ok(ConsulResolver::builder()
            .address(self.client_address())
            .wait(BLOCKING_WAIT)
            .max_backoff(MAX_BACKOFF)
            .build()?)
    }

    async fn stored(&self, service: &str) -> anyhow::Result<Vec<SocketAddr>> {
        // Without `passing`: every entry the agent holds, whatever its checks.
        let url = format!("{}/v1/health/service/{service}", self.direct_address());
        let entries: serde_json::Value =
            reqwest::get(&url).await?.error_for_status()?.json().await?;
        let mut addresses = entries
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("{url}: not an array: {entries}"))?
            .iter()
            .map(|entry| {
                let service = &entry["Service"];
                let ip = service["Address"].as_str().unwrap_or_default();
                let port = service["Port"].as_u64().unwrap_or_default();
                format!("{ip}:{port}")
                    .parse()
                    .map_err(|error| anyhow::anyhow!("{url}: {entry}: {error}"))
            })
            .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
        addresses.sort_unstable();
        Ok(addresses)
    }

    fn service_name(&self, base: &str) -> String {
        match self.agent {
            // Other tests and runs share a real agent.
            Agent::Real { .. } => unique_name(base),
            Agent::StandIn { .. } => base.to_owned(),
        }
    }

    async fn take_down(&mut self) -> anyhow::Result<()> {
        self.stand_in("be taken down")?.1.set_refusing(true);
        Ok(())
    }

    async fn bring_back(&mut self) -> anyhow::Result<()> {
        self.stand_in("be brought back")?.1.set_refusing(false);
        Ok(())
    }

    async fn restart_losing_data(&mut self) -> anyhow::Result<()> {
        self.stand_in("be restarted without its data")?.0.restart();
        Ok(())
    }
}
