//! The keeper of one registration: rewrites its file's heartbeat, writes the
//! file again when it vanished, and deletes it on stop if it is still its own.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use rpc_ext_registry::{
    health::RegistrationProbe,
    kit::{Backoff, StopSignal},
    Error, Result,
};
use tracing::{debug, warn};

use super::{
    files::{self, Record},
    DirectoryError, Settings,
};

/// What one keeper round found and did.
#[derive(Debug)]
enum Round {
    /// The file was this registration's: its heartbeat was rewritten.
    Renewed,
    /// The file was missing, unusable, or another registration's gone
    /// stale: this registration's was written in its place.
    Rewritten,
    /// Another live registration of the same address wrote the file after
    /// this one (a newer process): it is left alone, and taken back only
    /// once it vanishes or goes stale.
    StandingBy,
}

/// One registration's file and the keeper's view of it.
pub(super) struct Keeper {
    pub(super) settings: Arc<Settings>,
    pub(super) dir: PathBuf,
    pub(super) path: PathBuf,
    pub(super) record: Record,
    pub(super) probe: RegistrationProbe,
}

/// Writes a registration's file for the first time (what `register` waits
/// for) and returns the record written.
pub(super) async fn write_first(
    settings: &Settings,
    dir: &Path,
    path: &Path,
    mut record: Record,
) -> Result<Record, DirectoryError> {
    record.heartbeat_unix_ms = files::unix_ms(SystemTime::now());
    let (root, dir, path) = (settings.root.clone(), dir.to_owned(), path.to_owned());
    files::blocking(move || {
        files::check_root(&root)?;
        files::ensure_service_dir(&dir)?;
        files::write_record(&path, &record)?;
        Ok(record)
    })
    .await
}

impl Keeper {
    /// Keeps the file until `stop` resolves, then deletes it if it is
    /// still this registration's and replies.
    pub(super) async fn run(mut self, mut stop: StopSignal) {
        let heartbeat = self.settings.heartbeat;
        let mut backoff = Backoff::new(heartbeat / 4, heartbeat);
        let mut delay = heartbeat;
        loop {
            tokio::select! {
                reason = stop.wait() => {
                    let deleted = self.delete_if_own().await;
                    if let Err(error) = &deleted {
                        warn!(path = %self.path.display(), %error, "directory registry: cannot deregister");
                    }
                    return reason.reply(deleted);
                }
                () = tokio::time::sleep(delay) => {}
            }
            delay = match self.round().await {
                Ok(round) => {
                    debug!(path = %self.path.display(), ?round, "directory registry: heartbeat");
                    backoff.reset();
                    heartbeat
                }
                Err(error) => {
                    warn!(path = %self.path.display(), %error, "directory registry: heartbeat failed");
                    self.probe.renewal_failed();
                    // Until the directory is back, retry sooner than a
                    // heartbeat, so that the file is back soon after it.
                    backoff.next_delay()
                }
            };
        }
    }

    /// One heartbeat: renews, restores, or stands by, and records it.
    ///
    /// The file is read, then this registration's record is renamed over
    /// it: not one atomic compare-and-swap (a portable rename cannot
    /// compare). A newer registration of the address that writes its file
    /// between the read and the rename is overwritten; its next heartbeat
    /// then finds this registration's live record and stands by, so this
    /// older registration keeps the file until it stops (its
    /// deregistration deletes its own file, and the newer one writes
    /// its file again at its next heartbeat). The window is the time
    /// between two system calls, against a registration made in it.
    async fn round(&mut self) -> Result<Round, DirectoryError> {
        self.record.heartbeat_unix_ms = files::unix_ms(SystemTime::now());
        let (root, dir, path, record, stale_after) = (
            self.settings.root.clone(),
            self.dir.clone(),
            self.path.clone(),
            self.record.clone(),
            self.settings.stale_after,
        );
        let probe = self.probe.clone();
        files::blocking(move || {
            files::check_root(&root)?;
            let found =
                files::read_record(&path).map_err(|e| DirectoryError::new("read", &path, e))?;
            let round = match found {
                Some(Ok(found)) if found.owner == record.owner => Round::Renewed,
                Some(Ok(found)) if found.age(SystemTime::now()) <= stale_after => {
                    return Ok(Round::StandingBy);
                }
                // Gone (the directory lost its data, or someone deleted
                // it), unusable, or left by a registration that stopped
                // renewing: the backend no longer holds this one.
                _ => {
                    probe.lost();
                    Round::Rewritten
                }
            };
            files::ensure_service_dir(&dir)?;
            files::write_record(&path, &record)?;
            match round {
                Round::Renewed => probe.renewed(),
                _ => probe.reregistered(),
            }
            Ok(round)
        })
        .await
    }

    /// Deletes the file if it still holds this registration's owner id: a
    /// newer registration of the same address keeps its file. (A newer
    /// write landing between the read and the delete is lost until that
    /// registration's next heartbeat, which writes it again.)
    async fn delete_if_own(&self) -> Result<()> {
        let (root, path, owner) = (
            self.settings.root.clone(),
            self.path.clone(),
            self.record.owner.clone(),
        );
        files::blocking(move || {
            files::check_root(&root)?;
            let found =
                files::read_record(&path).map_err(|e| DirectoryError::new("read", &path, e))?;
            if matches!(&found, Some(Ok(record)) if record.owner == owner) {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(DirectoryError::new("delete", &path, e));
                    }
                    _ => {}
                }
            }
            Ok(())
        })
        .await
        .map_err(Error::from)
    }
}
