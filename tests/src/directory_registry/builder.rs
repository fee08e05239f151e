//! The options of a [`DirectoryRegistry`].

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rpc_ext_registry::{health::RegistryHealth, kit::Subscriptions, Error, Result};

use super::{DirectoryRegistry, Settings, BACKEND};

/// How often a keeper rewrites its file's heartbeat by default.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How often a resolver lists a followed service by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How many instance files a resolver reads per service and poll by default.
pub const DEFAULT_MAX_FILES: usize = 1024;

/// Builds a [`DirectoryRegistry`]; start from
/// [`DirectoryRegistry::builder`].
///
/// ```
/// use std::time::Duration;
/// use tests::directory_registry::DirectoryRegistry;
///
/// let registry = DirectoryRegistry::builder("/run/services")
///     .heartbeat(Duration::from_secs(2))
///     .stale_after(Duration::from_secs(10))
///     .poll_interval(Duration::from_millis(500))
///     .max_files(256)
///     .build()
///     .unwrap();
/// assert_eq!(registry.root(), std::path::Path::new("/run/services"));
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct DirectoryRegistryBuilder {
    root: PathBuf,
    heartbeat: Duration,
    poll_interval: Duration,
    stale_after: Option<Duration>,
    max_files: usize,
    advertise_ip: Option<IpAddr>,
    health: Option<RegistryHealth>,
}

impl DirectoryRegistryBuilder {
    pub(super) fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            heartbeat: DEFAULT_HEARTBEAT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            stale_after: None,
            max_files: DEFAULT_MAX_FILES,
            advertise_ip: None,
            health: None,
        }
    }

    /// How often each registration rewrites its file's heartbeat, and
    /// checks that the file is still there (default [`DEFAULT_HEARTBEAT`]).
    /// A file that vanished is written again within this time.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// How often a resolver lists each followed service (default
    /// [`DEFAULT_POLL_INTERVAL`]): changes reach subscribers within it.
    /// After a failed poll, retries back off from this up to eight times it
    /// (saturating at [`Duration::MAX`]).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// How old a file's heartbeat may be before resolvers leave the
    /// instance out as a crashed process's (default three heartbeats,
    /// saturating at [`Duration::MAX`]).
    /// Must exceed the heartbeat; the processes of one directory should
    /// agree on both.
    pub fn stale_after(mut self, age: Duration) -> Self {
        self.stale_after = Some(age);
        self
    }

    /// How many instance files a resolver reads per service and poll
    /// (default [`DEFAULT_MAX_FILES`]): the first by name; the rest are
    /// left out, with a warning. Files are read one at a time and at most
    /// 16 KiB each, so a poll holds at most this many instances however
    /// many files the directory holds.
    pub fn max_files(mut self, max: usize) -> Self {
        self.max_files = max;
        self
    }

    /// The IP registered for instances that listen on an unspecified
    /// address (`0.0.0.0`, `::`); see
    /// [`advertise_address`](rpc_ext_registry::advertise_address).
    pub fn advertise_ip(mut self, ip: IpAddr) -> Self {
        self.advertise_ip = Some(ip);
        self
    }

    /// Reports registrations and subscriptions into `health` (default: a
    /// handle of this registry's own, see [`DirectoryRegistry::health`]).
    pub fn health(mut self, health: RegistryHealth) -> Self {
        self.health = Some(health);
        self
    }

    /// The registry and resolver. Touches no file: a missing root
    /// directory is an outage its users see, not a build error.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the heartbeat or poll interval is zero,
    /// `max_files` is zero, or `stale_after` does not exceed the heartbeat.
    pub fn build(self) -> Result<DirectoryRegistry> {
        let stale_after = self.stale_after.unwrap_or(self.heartbeat.saturating_mul(3));
        if self.heartbeat.is_zero() || self.poll_interval.is_zero() {
            return Err(Error::Config(
                "directory registry: heartbeat and poll_interval must be above zero".to_owned(),
            ));
        }
        if self.max_files == 0 {
            return Err(Error::Config(
                "directory registry: max_files must be above zero".to_owned(),
            ));
        }
        if stale_after <= self.heartbeat {
            return Err(Error::Config(format!(
                "directory registry: stale_after ({stale_after:?}) must exceed the heartbeat ({:?}), \
                 or live instances would be left out between heartbeats",
                self.heartbeat
            )));
        }
        let health = self.health.unwrap_or_default();
        Ok(DirectoryRegistry {
            settings: Arc::new(Settings {
                root: self.root,
                heartbeat: self.heartbeat,
                poll_interval: self.poll_interval,
                stale_after,
                max_files: self.max_files,
                advertise_ip: self.advertise_ip,
            }),
            subscriptions: Arc::new(Subscriptions::new(BACKEND, health.clone())),
            health,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_options_are_refused() {
        let builder = || DirectoryRegistry::builder("/nonexistent");
        assert!(
            builder().build().is_ok(),
            "the defaults, and no file touched"
        );
        assert!(builder().heartbeat(Duration::ZERO).build().is_err());
        assert!(builder().poll_interval(Duration::ZERO).build().is_err());
        assert!(builder().max_files(0).build().is_err());
        let stale_at_heartbeat = builder()
            .heartbeat(Duration::from_secs(2))
            .stale_after(Duration::from_secs(2))
            .build();
        assert!(matches!(stale_at_heartbeat, Err(Error::Config(_))));
        // Three of the longest heartbeat saturate at the heartbeat itself:
        // refused, not an overflow.
        let longest = builder().heartbeat(Duration::MAX).build();
        assert!(matches!(longest, Err(Error::Config(_))), "{longest:?}");
        assert!(builder()
            .heartbeat(Duration::MAX / 2)
            .poll_interval(Duration::MAX)
            .build()
            .is_ok());
    }
}
