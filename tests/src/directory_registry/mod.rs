//! A file-based service registry, like Prometheus' `file_sd`, for the
//! processes of one host: built only on the public
//! [`kit`](rpc_ext_registry::kit) of `rpc-ext-registry`, to show that a
//! backend can live outside that crate and behave like its own.
//!
//! # Layout
//!
//! Each registered instance is one JSON file,
//! `<root>/<service>/<address>.json` (`10.0.0.7_8080.json`; IPv6 addresses
//! with `-` for `:`), holding the instance (service, address, weight,
//! tags), the id of the registration that wrote it and a heartbeat time:
//!
//! ```text
//! {"instance":{"service":"echo","address":"10.0.0.7:8080","weight":10,"tags":{}},
//!  "owner":"3f0c…","heartbeat_unix_ms":1764489600000}
//! ```
//!
//! Files are written to a hidden temporary file and renamed, so a reader
//! sees a whole record or none.
//!
//! # Registering
//!
//! A registration's keeper rewrites its file's heartbeat every
//! [`heartbeat`](DirectoryRegistryBuilder::heartbeat). A file that
//! vanished, or that a stopped registration of the same address left
//! behind, is written again (the registration's health counts the loss and
//! the re-registration). A newer live registration of the same address
//! owns the file: the older one leaves it alone, and writes its own only
//! once that file vanishes or goes stale. (A heartbeat reads the file and
//! then renames its record over it: a newer registration that writes the
//! file between the two loses it to the older one until that one stops.)
//! Deregistering deletes the file only if it still holds the
//! registration's own id.
//!
//! # Resolving
//!
//! A resolver lists `<root>/<service>/` every
//! [`poll_interval`](DirectoryRegistryBuilder::poll_interval) and publishes
//! the instances of the files whose heartbeat is younger than
//! [`stale_after`](DirectoryRegistryBuilder::stale_after): a crashed
//! process's instance leaves the set once that age passes. Undecodable or
//! misplaced files are left out with a warning. At most
//! [`max_files`](DirectoryRegistryBuilder::max_files) files (the first by
//! name, at most 16 KiB each) are read per service and poll, so the
//! directory's contents cannot grow a resolver's memory beyond that.
//!
//! # Outages
//!
//! The root directory is the backend: missing or unreadable, the backend
//! is down (registering fails, keepers retry, resolvers keep the last set
//! and report the error); back, it is up. Nothing here creates the root,
//! so an outage is never hidden by an empty stand-in. A root emptied of its
//! files is a backend that lost its data: every live keeper writes its
//! file again within a heartbeat. Meanwhile a resolver that finds a
//! service's directory gone (deregistering removes files, never the
//! directory) keeps showing the last set until some file is back, for
//! `stale_after` at most, rather than sending clients nowhere.
//!
//! ```
//! use std::time::Duration;
//! use rpc_ext_registry::{Instance, Registry, Resolver};
//! use tests::directory_registry::DirectoryRegistry;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = tempfile::tempdir()?;
//! let registry = DirectoryRegistry::builder(root.path())
//!     .heartbeat(Duration::from_millis(100))
//!     .poll_interval(Duration::from_millis(20))
//!     .build()?;
//! let registration = registry
//!     .register(Instance::new("echo", "127.0.0.1:50051".parse()?))
//!     .await?;
//! assert!(root.path().join("echo/127.0.0.1_50051.json").is_file());
//!
//! let mut watch = registry.subscribe("echo").await?;
//! assert_eq!(watch.current().instances[0].address.port(), 50051);
//!
//! // Another process's keeper would write it again; this one is gone.
//! registration.deregister().await?;
//! watch.wait_for(|instances| instances.is_empty()).await?;
//! # Ok(()) }
//! ```

mod builder;
mod files;
mod follower;
mod keeper;
#[cfg(test)]
mod tests;

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rpc_ext_registry::{
    advertise_address, health::RegistryHealth, kit::Subscriptions, Error, Instance, Registration,
    Registry, Resolver, Result, ServiceWatch,
};

pub use builder::{
    DirectoryRegistryBuilder, DEFAULT_HEARTBEAT, DEFAULT_MAX_FILES, DEFAULT_POLL_INTERVAL,
};

/// The backend name in errors and health entries.
pub const BACKEND: &str = "directory";

/// A registry and resolver over one directory shared by the processes of a
/// host (see the [module docs](self) for the layout and the outages).
///
/// Clones share their followers and health.
#[derive(Debug, Clone)]
pub struct DirectoryRegistry {
    settings: Arc<Settings>,
    subscriptions: Arc<Subscriptions>,
    health: RegistryHealth,
}

/// What keepers and followers read from the builder.
#[derive(Debug)]
struct Settings {
    root: PathBuf,
    heartbeat: Duration,
    poll_interval: Duration,
    stale_after: Duration,
    max_files: usize,
    advertise_ip: Option<IpAddr>,
}

impl DirectoryRegistry {
    /// Starts building a registry over the directory `root`.
    pub fn builder(root: impl AsRef<Path>) -> DirectoryRegistryBuilder {
        DirectoryRegistryBuilder::new(root.as_ref())
    }

    /// The root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.settings.root
    }

    /// The health of this registry's registrations and subscriptions
    /// (shared by its clones), under the backend name [`BACKEND`].
    #[must_use]
    pub fn health(&self) -> RegistryHealth {
        self.health.clone()
    }
}

impl Registry for DirectoryRegistry {
    /// Writes the instance's file and keeps it until the handle is
    /// deregistered or dropped.
    ///
    /// Fails with [`Error::InvalidInstance`] for a service name that is not
    /// one plain directory name (empty, `.`, `..`, with `/`, `\` or NUL, or
    /// above 255 bytes), and with [`Error::Backend`] when the root
    /// directory is missing or the file cannot be written.
    async fn register(&self, mut instance: Instance) -> Result<Registration> {
        instance.address = advertise_address(instance.address, self.settings.advertise_ip)?;
        instance.validate()?;
        files::check_service_name(&instance.service)?;
        let dir = files::service_dir(&self.settings.root, &instance.service);
        let path = dir.join(files::file_name(instance.address));
        let record = files::Record {
            instance: instance.clone(),
            owner: rpc_ext_registry::kit::registration_id(),
            heartbeat_unix_ms: 0,
        };
        let record = keeper::write_first(&self.settings, &dir, &path, record).await?;
        // Listed in health only once the file is there.
        let (mut registration, stop) = Registration::new(instance);
        let keeper = keeper::Keeper {
            settings: self.settings.clone(),
            dir,
            path,
            record,
            probe: registration.track(BACKEND, &self.health),
        };
        tokio::spawn(keeper.run(stop));
        Ok(registration)
    }
}

impl Resolver for DirectoryRegistry {
    /// Follows `service`, polling its directory; fails like
    /// [`register`](Registry::register) for a name that is not one plain
    /// directory name.
    async fn subscribe(&self, service: &str) -> Result<ServiceWatch> {
        files::check_service_name(service)?;
        let follower = follower::Follower {
            settings: self.settings.clone(),
            service: service.to_owned(),
        };
        self.subscriptions
            .subscribe(service, |publisher| follower.run(publisher))
            .await
    }
}

/// A file operation that failed: the source of the directory backend's
/// [`Error::Backend`].
#[derive(Debug, thiserror::Error)]
#[error("cannot {operation} {}: {source}", path.display())]
pub struct DirectoryError {
    /// What was attempted (`open root`, `list`, `read`, `write`...).
    pub operation: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The file system's error.
    #[source]
    pub source: io::Error,
}

impl DirectoryError {
    fn new(operation: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            operation,
            path: path.to_owned(),
            source,
        }
    }

    /// A file task that panicked or was cancelled by the runtime shutting
    /// down.
    fn panicked(join: tokio::task::JoinError) -> Self {
        Self::new(
            "run file task",
            Path::new(""),
            io::Error::other(join.to_string()),
        )
    }
}

impl From<DirectoryError> for Error {
    fn from(error: DirectoryError) -> Self {
        Error::backend(BACKEND, error)
    }
}
