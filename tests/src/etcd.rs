//! Real etcd servers (Debian package `etcd-server`, etcd v3.4).

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::{free_ports, require_binary, ChildGuard};

/// One etcd member: ports and data directory stay the same across restarts.
#[derive(Debug)]
pub struct EtcdServer {
    name: String,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<ChildGuard>,
    _dir: Option<TempDir>,
}

impl EtcdServer {
    /// Starts a single-member etcd and waits until it is healthy.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = TempDir::with_prefix("etcd-test-")?;
        let [client_port, peer_port] = free_ports(2)?[..] else {
            unreachable!("free_ports returns as many ports as asked")
        };
        let name = "solo".to_owned();
        let mut server = Self::new(
            name.clone(),
            &dir,
            client_port,
            peer_port,
            format!("{name}=http://127.0.0.1:{peer_port}"),
        );
        server._dir = Some(dir);
        server.spawn()?;
        server.wait_healthy().await?;
        Ok(server)
    }

    fn new(
        name: String,
        dir: &TempDir,
        client_port: u16,
        peer_port: u16,
        initial_cluster: String,
    ) -> Self {
        Self {
            data_dir: dir.path().join(format!("{name}.etcd")),
            log: dir.path().join(format!("{name}.log")),
            name,
            client_port,
            peer_port,
            initial_cluster,
            process: None,
            _dir: None,
        }
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildGuard::pid)
    }

    /// Kills the member (SIGKILL), keeping its data directory.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the member again on the same ports and data directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_healthy().await
    }

    /// Kills the member, deletes its data and starts a fresh one in its place.
    pub async fn wipe_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        if self.data_dir.exists() {
            std::fs::remove_dir_all(&self.data_dir)?;
        }
        self.spawn()?;
        self.wait_healthy().await
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let etcd = require_binary("etcd", "etcd-server")?;
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(etcd);
        command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "registry-ext-test"])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-level", "warn"])
            // Fast elections keep fault tests short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"]);
        self.process = Some(ChildGuard::spawn(
            &format!("etcd {}", self.name),
            command,
            &self.log,
        )?);
        Ok(())
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/health", self.endpoint());
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let process = self.process.as_mut().context("etcd is not running")?;
            process.check_running()?;
            if let Ok(response) = http.get(&url).send().await {
                if let Ok(body) = response.json::<serde_json::Value>().await {
                    if body["health"] == "true" {
                        return Ok(());
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "etcd {} not healthy after 30 s; log:\n{}",
                    self.name,
                    process.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A cluster of etcd members on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, in start order.
    pub members: Vec<EtcdServer>,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until all are healthy.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        let dir = TempDir::with_prefix("etcd-cluster-test-")?;
        let ports: Vec<(u16, u16)> = free_ports(size * 2)?
            .chunks(2)
            .map(|pair| (pair[0], pair[1]))
            .collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<EtcdServer> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                EtcdServer::new(
                    format!("m{i}"),
                    &dir,
                    *client,
                    *peer,
                    initial_cluster.clone(),
                )
            })
            .collect();
        for member in &mut members {
            member.spawn()?;
        }
        for member in &mut members {
            member.wait_healthy().await?;
        }
        Ok(Self { members, _dir: dir })
    }

    /// Every member's client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdServer::endpoint).collect()
    }
}
