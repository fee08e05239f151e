//! A real etcd as a fixture.

use std::{net::SocketAddr, time::Duration};

use rpc_ext_registry::etcd::{EtcdRegistry, EtcdResolver, DEFAULT_PREFIX};

use super::{ensure_covers, BackendFixture, Capabilities, MAX_BACKOFF, TTL};
use crate::EtcdServer;

/// A single-member etcd of its own: taken down by killing it, brought back
/// by restarting it on its data, and restarted losing data by wiping its
/// data directory.
#[derive(Debug)]
pub struct EtcdFixture {
    etcd: EtcdServer,
}

impl BackendFixture for EtcdFixture {
    type Registry = EtcdRegistry;
    type Resolver = EtcdResolver;

    const NAME: &'static str = "etcd";

    async fn start(needs: Capabilities) -> anyhow::Result<Self> {
        ensure_covers::<Self>(Capabilities::ALL, needs)?;
        Ok(Self {
            etcd: EtcdServer::start().await?,
        })
    }

    fn describe(&self) -> String {
        format!("etcd at {}", self.etcd.endpoint())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn ttl(&self) -> Option<Duration> {
        Some(TTL)
    }

    async fn registry(&self) -> anyhow::Result<EtcdRegistry> {
        Ok(EtcdRegistry::builder([self.etcd.endpoint()])
            .ttl(TTL)
            .max_backoff(MAX_BACKOFF)
            .build()
            .await?)
    }

    async fn resolver(&self) -> anyhow::Result<EtcdResolver> {
        Ok(EtcdResolver::builder([self.etcd.endpoint()])
            .max_backoff(MAX_BACKOFF)
            .build()
            .await?)
    }

    async fn stored(&self, service: &str) -> anyhow::Result<Vec<SocketAddr>> {
        // Keys are `<prefix>/<service>/<address>`.
        let prefix = format!("{DEFAULT_PREFIX}/{service}/");
        let mut raw = etcd_client::Client::connect([self.etcd.endpoint()], None).await?;
        let stored = raw
            .get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await?;
        let mut addresses = stored
            .kvs()
            .iter()
            .map(|kv| {
                let key = kv.key_str()?;
                let address = key.strip_prefix(&prefix).unwrap_or(key);
                address
                    .parse()
                    .map_err(|error| anyhow::anyhow!("key {key:?}: {error}"))
            })
            .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
        addresses.sort_unstable();
        Ok(addresses)
    }

    async fn take_down(&mut self) -> anyhow::Result<()> {
        self.etcd.kill();
        Ok(())
    }

    async fn bring_back(&mut self) -> anyhow::Result<()> {
        self.etcd.restart().await
    }

    async fn restart_losing_data(&mut self) -> anyhow::Result<()> {
        self.etcd.wipe_and_restart().await
    }
}
