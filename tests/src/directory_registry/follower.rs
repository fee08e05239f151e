//! The follower of one service: lists its directory every poll interval
//! and publishes the live instances found there.

use std::{
    collections::{hash_map::DefaultHasher, BTreeMap, BinaryHeap},
    hash::{Hash, Hasher},
    io,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::SystemTime,
};

use rpc_ext_registry::{
    kit::{Backoff, Publisher},
    Error, Instance,
};
use tracing::warn;

use super::{
    files::{self, Unusable},
    DirectoryError, Settings,
};

/// After a failed poll, retries back off from one poll interval up to this
/// many.
const MAX_BACKOFF_POLLS: u32 = 8;

/// Why a file in the service's directory was left out of the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Skip {
    /// It could not be read (permissions...).
    Unreadable(io::ErrorKind),
    /// It is not a record (too large to be one, or not a regular file:
    /// a directory or a FIFO named `*.json`...).
    Unusable(Unusable),
    /// Its record names another service, or an address nobody can dial.
    Misplaced,
    /// Its heartbeat is older than `stale_after`: its process stopped
    /// renewing it (crashed, or hung).
    Stale,
}

/// One poll's outcome.
struct Listing {
    instances: Vec<Arc<Instance>>,
    /// The files left out, by name (at most the cap's worth).
    skipped: Vec<(String, Skip)>,
    /// Instance files beyond the cap, not read.
    beyond_cap: usize,
    /// Whether the service's directory was there.
    dir_present: bool,
}

/// Follows one service.
pub(super) struct Follower {
    pub(super) settings: Arc<Settings>,
    pub(super) service: String,
}

impl Follower {
    /// Polls until every subscriber is gone.
    pub(super) async fn run(self, publisher: Publisher) {
        let poll = self.settings.poll_interval;
        let mut backoff = Backoff::new(poll, poll.saturating_mul(MAX_BACKOFF_POLLS));
        // What the last warning was about: the same skipped files are not
        // warned about again on every poll, only when that changes.
        let mut warned = None;
        let mut hold = DataLossHold::default();
        loop {
            let delay = match self.poll().await {
                Ok(listing) => {
                    warn_once(&self.service, &listing, &mut warned);
                    if hold.holds(&self.service, &listing, self.settings.stale_after) {
                        // The backend answers: an error shown from before
                        // goes, the held set stays.
                        publisher.publish_recovered();
                    } else {
                        publisher.publish_instances(listing.instances);
                    }
                    backoff.reset();
                    poll
                }
                Err(error) => {
                    warn!(service = %self.service, %error, "directory resolver: poll failed");
                    publisher.publish_error(Error::from(error));
                    publisher.watch_restarted();
                    backoff.next_delay()
                }
            };
            if !publisher.pause(delay).await {
                return;
            }
        }
    }

    async fn poll(&self) -> Result<Listing, DirectoryError> {
        let settings = self.settings.clone();
        let service = self.service.clone();
        files::blocking(move || list(&settings, &service)).await
    }
}

/// Lists `<root>/<service>/`: the live instances of its first
/// `max_files` instance files in name order.
fn list(settings: &Settings, service: &str) -> Result<Listing, DirectoryError> {
    files::check_root(&settings.root)?;
    let dir = files::service_dir(&settings.root, service);
    let mut dir_present = true;
    let (names, beyond_cap) = match first_names(&dir, settings.max_files) {
        Ok(found) => found,
        // No directory yet: nothing was ever registered under this name,
        // unless the root itself just went, which is an outage.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            files::check_root(&settings.root)?;
            dir_present = false;
            (Vec::new(), 0)
        }
        Err(e) => return Err(DirectoryError::new("list", &dir, e)),
    };
    let now = SystemTime::now();
    let mut live: BTreeMap<SocketAddr, (u64, Instance)> = BTreeMap::new();
    let mut skipped = Vec::new();
    for name in names {
        let record = match files::read_record(&dir.join(&name)) {
            // Deleted since it was listed: deregistered.
            Ok(None) => continue,
            Ok(Some(Ok(record))) => record,
            Ok(Some(Err(unusable))) => {
                skipped.push((name, Skip::Unusable(unusable)));
                continue;
            }
            Err(e) => {
                skipped.push((name, Skip::Unreadable(e.kind())));
                continue;
            }
        };
        if *record.instance.service != *service || record.instance.validate().is_err() {
            skipped.push((name, Skip::Misplaced));
        } else if record.age(now) > settings.stale_after {
            skipped.push((name, Skip::Stale));
        } else {
            // Two files claiming one address: the fresher one stands.
            let address = record.instance.address;
            let fresher = live
                .get(&address)
                .is_none_or(|(heartbeat, _)| record.heartbeat_unix_ms > *heartbeat);
            if fresher {
                live.insert(address, (record.heartbeat_unix_ms, record.instance));
            }
        }
    }
    Ok(Listing {
        instances: live.into_values().map(|(_, i)| Arc::new(i)).collect(),
        skipped,
        beyond_cap,
        dir_present,
    })
}

/// Keeps the last set shown when the service's directory vanished: no
/// deregistration removes it (only its files), so a directory that was
/// there and is gone is a backend that lost its data, whose keepers write
/// their files again within a heartbeat. Showing the empty set meanwhile
/// would send clients nowhere; the set is held until some file is back,
/// or for `stale_after` at most (then the empty set is the answer).
#[derive(Debug, Default)]
struct DataLossHold {
    /// The directory was there at some poll.
    had_dir: bool,
    /// The last set published was not empty.
    shown_any: bool,
    /// While holding: when to stop.
    until: Option<tokio::time::Instant>,
}

impl DataLossHold {
    /// Whether to skip publishing `listing`, which was just polled.
    fn holds(&mut self, service: &str, listing: &Listing, grace: std::time::Duration) -> bool {
        let lost = self.had_dir && self.shown_any && !listing.dir_present;
        if lost {
            let now = tokio::time::Instant::now();
            let until = *self.until.get_or_insert_with(|| {
                warn!(service, ?grace, "directory resolver: the service's directory vanished; keeping the last set until its files are back");
                now + grace
            });
            if now < until {
                return true;
            }
        }
        self.until = None;
        self.had_dir |= listing.dir_present;
        self.shown_any = !listing.instances.is_empty();
        false
    }
}

/// The `cap` smallest instance file names in `dir`, sorted, and how many
/// more there were: memory stays bounded by the cap however many files the
/// directory holds, and the same files are chosen on every poll.
fn first_names(dir: &Path, cap: usize) -> io::Result<(Vec<String>, usize)> {
    let mut kept = BinaryHeap::with_capacity(cap.saturating_add(1).min(4096));
    let mut beyond_cap = 0;
    for entry in std::fs::read_dir(dir)? {
        let Ok(name) = entry?.file_name().into_string() else {
            continue; // Not UTF-8: no name this backend writes.
        };
        if !files::is_instance_file(&name) {
            continue;
        }
        kept.push(name);
        if kept.len() > cap {
            kept.pop();
            beyond_cap += 1;
        }
    }
    Ok((kept.into_sorted_vec(), beyond_cap))
}

/// Warns about the files left out, unless the last poll left out the same.
fn warn_once(service: &str, listing: &Listing, warned: &mut Option<u64>) {
    let mut hasher = DefaultHasher::new();
    listing.skipped.hash(&mut hasher);
    listing.beyond_cap.hash(&mut hasher);
    let fingerprint = hasher.finish();
    if *warned == Some(fingerprint) {
        return;
    }
    *warned = Some(fingerprint);
    for (file, why) in &listing.skipped {
        warn!(service, file, reason = ?why, "directory resolver: file left out");
    }
    if listing.beyond_cap > 0 {
        warn!(
            service,
            files_not_read = listing.beyond_cap,
            "directory resolver: more instance files than max_files; the first by name are read"
        );
    }
}
