//! The in-process registry as a fixture.

use std::{net::SocketAddr, time::Duration};

use rpc_ext_registry::{MemoryRegistry, Resolver};

use super::{ensure_covers, BackendFixture, Capabilities};

/// A [`MemoryRegistry`] shared by every registry and resolver the fixture
/// hands out. Nothing can go down, lose data or expire in process, so it
/// has no capability and no TTL.
#[derive(Debug, Default)]
pub struct MemoryFixture {
    registry: MemoryRegistry,
}

impl BackendFixture for MemoryFixture {
    type Registry = MemoryRegistry;
    type Resolver = MemoryRegistry;

    const NAME: &'static str = "memory";

    async fn start(needs: Capabilities) -> anyhow::Result<Self> {
        ensure_covers::<Self>(Capabilities::NONE, needs)?;
        Ok(Self::default())
    }

    fn describe(&self) -> String {
        "an in-process MemoryRegistry".to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    fn ttl(&self) -> Option<Duration> {
        None
    }

    async fn registry(&self) -> anyhow::Result<MemoryRegistry> {
        Ok(self.registry.clone())
    }

    async fn resolver(&self) -> anyhow::Result<MemoryRegistry> {
        Ok(self.registry.clone())
    }

    async fn stored(&self, service: &str) -> anyhow::Result<Vec<SocketAddr>> {
        // The registry is the store: its answer is what it holds.
        let instances = self.registry.resolve(service).await?;
        let mut addresses: Vec<_> = instances.iter().map(|i| i.address).collect();
        addresses.sort_unstable();
        Ok(addresses)
    }
}
