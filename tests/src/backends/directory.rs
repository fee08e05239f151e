//! The directory backend ([`DirectoryRegistry`]) as a fixture.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{ensure_covers, BackendFixture, Capabilities, TTL};
use crate::directory_registry::DirectoryRegistry;

/// How often the fixture's keepers rewrite their heartbeat: a quarter of
/// the TTL, as an etcd keeper renews its lease.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// How often the fixture's resolvers list a service.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A temporary root directory. Taken down by renaming the root away (the
/// directory is missing), brought back by renaming it back, and restarted
/// losing data by removing everything under the root. Registrations go
/// stale after 2 s without a heartbeat (the fixtures' TTL).
#[derive(Debug)]
pub struct DirectoryFixture {
    /// Holds the root and, during an outage, the renamed root.
    parent: tempfile::TempDir,
}

impl DirectoryFixture {
    fn root(&self) -> PathBuf {
        self.parent.path().join("registry")
    }

    fn aside(&self) -> PathBuf {
        self.parent.path().join("registry.down")
    }

    fn backend(&self) -> anyhow::Result<DirectoryRegistry> {
        Ok(DirectoryRegistry::builder(self.root())
            .heartbeat(HEARTBEAT)
            .stale_after(TTL)
            .poll_interval(POLL_INTERVAL)
            .build()?)
    }
}

impl BackendFixture for DirectoryFixture {
    type Registry = DirectoryRegistry;
    type Resolver = DirectoryRegistry;

    const NAME: &'static str = "directory";

    async fn start(needs: Capabilities) -> anyhow::Result<Self> {
        ensure_covers::<Self>(Capabilities::ALL, needs)?;
        let fixture = Self {
            parent: tempfile::tempdir()?,
        };
        fs::create_dir(fixture.root())?;
        Ok(fixture)
    }

    fn describe(&self) -> String {
        format!("the directory {}", self.root().display())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn ttl(&self) -> Option<Duration> {
        Some(TTL)
    }

    async fn registry(&self) -> anyhow::Result<DirectoryRegistry> {
        self.backend()
    }

    async fn resolver(&self) -> anyhow::Result<DirectoryRegistry> {
        self.backend()
    }

    async fn stored(&self, service: &str) -> anyhow::Result<Vec<SocketAddr>> {
        stored(&self.root().join(service))
    }

    async fn take_down(&mut self) -> anyhow::Result<()> {
        Ok(fs::rename(self.root(), self.aside())?)
    }

    async fn bring_back(&mut self) -> anyhow::Result<()> {
        Ok(fs::rename(self.aside(), self.root())?)
    }

    async fn restart_losing_data(&mut self) -> anyhow::Result<()> {
        empty(&self.root())
    }
}

/// The addresses in the instance files of a service's directory, read
/// straight from the files (not through the resolver), sorted.
fn stored(dir: &Path) -> anyhow::Result<Vec<SocketAddr>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut addresses = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        // Temporary files of a write in progress are hidden.
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let record: serde_json::Value = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            // Deleted since it was listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let address = record["instance"]["address"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("{}: no instance.address", path.display()))?;
        addresses.push(address.parse()?);
    }
    addresses.sort_unstable();
    Ok(addresses)
}

/// Removes everything under `root`, keeping `root`. Keepers may write
/// while it runs, so a directory that refills is emptied again.
fn empty(root: &Path) -> anyhow::Result<()> {
    for _ in 0..10 {
        let mut left = false;
        for entry in fs::read_dir(root)? {
            let path = entry?.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // A keeper wrote into it meanwhile: another pass.
                Err(_) => left = true,
            }
        }
        if !left {
            return Ok(());
        }
    }
    anyhow::bail!("{} kept refilling while it was emptied", root.display())
}
