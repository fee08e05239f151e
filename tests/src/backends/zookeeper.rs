//! A real ZooKeeper as a fixture.

use std::{net::SocketAddr, time::Duration};

use rpc_ext_registry::zookeeper::{ZooKeeperRegistry, ZooKeeperResolver, DEFAULT_PREFIX};

use super::{ensure_covers, BackendFixture, Capabilities, MAX_BACKOFF, TTL};
use crate::ZooKeeperServer;

/// A standalone ZooKeeper of its own: taken down by killing it, brought
/// back by restarting it on its data, and restarted losing data by wiping
/// its data directory (every session with it, and so every ephemeral node,
/// is gone). Sessions last 2 s, the fixtures' lease.
#[derive(Debug)]
pub struct ZooKeeperFixture {
    zookeeper: ZooKeeperServer,
}

impl BackendFixture for ZooKeeperFixture {
    type Registry = ZooKeeperRegistry;
    type Resolver = ZooKeeperResolver;

    const NAME: &'static str = "zookeeper";

    async fn start(needs: Capabilities) -> anyhow::Result<Self> {
        ensure_covers::<Self>(Capabilities::ALL, needs)?;
        Ok(Self {
            zookeeper: ZooKeeperServer::start().await?,
        })
    }

    fn describe(&self) -> String {
        format!("ZooKeeper at {}", self.zookeeper.connect_string())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn ttl(&self) -> Option<Duration> {
        Some(TTL)
    }

    async fn registry(&self) -> anyhow::Result<ZooKeeperRegistry> {
        Ok(ZooKeeperRegistry::builder(self.zookeeper.connect_string())
            .session_timeout(TTL)
            .max_backoff(MAX_BACKOFF)
            .build()
            .await?)
    }

    async fn resolver(&self) -> anyhow::Result<ZooKeeperResolver> {
        Ok(ZooKeeperResolver::builder(self.zookeeper.connect_string())
            .session_timeout(TTL)
            .max_backoff(MAX_BACKOFF)
            .build()
            .await?)
    }

    async fn stored(&self, service: &str) -> anyhow::Result<Vec<SocketAddr>> {
        // Instance nodes are `<prefix>/<service>/<ip>:<port>`.
        let client = zookeeper_client::Client::connector()
            .with_session_timeout(TTL)
            .connect(&self.zookeeper.connect_string())
            .await?;
        let children = match client
            .list_children(&format!("{DEFAULT_PREFIX}/{service}"))
            .await
        {
            Ok(children) => children,
            Err(zookeeper_client::Error::NoNode) => Vec::new(),
            Err(error) => return Err(error.into()),
        };
        let mut addresses = children
            .iter()
            .map(|name| {
                name.parse()
                    .map_err(|error| anyhow::anyhow!("node {name:?}: {error}"))
            })
            .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
        addresses.sort_unstable();
        Ok(addresses)
    }

    async fn take_down(&mut self) -> anyhow::Result<()> {
        self.zookeeper.kill();
        Ok(())
    }

    async fn bring_back(&mut self) -> anyhow::Result<()> {
        self.zookeeper.restart().await
    }

    async fn restart_losing_data(&mut self) -> anyhow::Result<()> {
        self.zookeeper.wipe_and_restart().await
    }
}
