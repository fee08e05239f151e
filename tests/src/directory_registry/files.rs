//! The on-disk layout: where an instance's file lives, what it holds, and
//! how it is read and written.

use std::{
    fs,
    io::{self, Read},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rpc_ext_registry::{Error, Instance, Result};
use serde::{Deserialize, Serialize};

use super::DirectoryError;

/// Largest instance file read: a record is a few hundred bytes, so this
/// only bounds what a stray or hostile file can make a poll allocate.
pub(super) const MAX_FILE_BYTES: u64 = 16 * 1024;

/// Longest service name: one path component, which Linux and macOS file
/// systems cap at 255 bytes.
const MAX_SERVICE_NAME_BYTES: usize = 255;

/// What one instance file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    /// The registered instance.
    pub(super) instance: Instance,
    /// The registration that wrote the file: only it deletes the file.
    pub(super) owner: String,
    /// When the owner last wrote the file, in milliseconds since the Unix
    /// epoch: wall-clock time, since the readers are other processes.
    pub(super) heartbeat_unix_ms: u64,
}

impl Record {
    /// How long ago the heartbeat was written; zero if it lies in the
    /// future (the clock was set back), so such a file counts as fresh.
    pub(super) fn age(&self, now: SystemTime) -> Duration {
        Duration::from_millis(unix_ms(now).saturating_sub(self.heartbeat_unix_ms))
    }
}

/// Milliseconds since the Unix epoch (zero before it).
pub(super) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Refuses service names that are not one plain path component, before
/// any file is touched: a name must not reach outside its directory.
pub(super) fn check_service_name(service: &str) -> Result<()> {
    let refusal = if service.is_empty() {
        Some("is empty")
    } else if service == "." || service == ".." {
        Some("is a relative directory")
    } else if service.contains(['/', '\\', '\0']) {
        Some("contains '/', '\\' or NUL")
    } else if service.len() > MAX_SERVICE_NAME_BYTES {
        Some("is longer than 255 bytes")
    } else {
        None
    };
    match refusal {
        Some(why) => Err(Error::InvalidInstance(format!(
            "service name {service:?} {why}: the directory backend stores it as a directory name"
        ))),
        None => Ok(()),
    }
}

/// The file name of the instance at `address`: the address with `:` made
/// `-` (IPv6) and the port after `_`, so it is valid on every file system.
/// Distinct addresses give distinct names (IPv6 text has no `.`-only
/// form and IPv4 text no `-`), except that an IPv6 flow label is ignored.
pub(super) fn file_name(address: SocketAddr) -> String {
    match address {
        SocketAddr::V4(v4) => format!("{}_{}.json", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => {
            let ip = IpAddr::V6(*v6.ip()).to_string().replace(':', "-");
            match v6.scope_id() {
                0 => format!("{ip}_{}.json", v6.port()),
                scope => format!("{ip}%{scope}_{}.json", v6.port()),
            }
        }
    }
}

/// Whether a directory entry may be an instance file: temporary files
/// (written before a rename) and other hidden files are not.
pub(super) fn is_instance_file(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(".json")
}

/// A file that is there but is not a record a reader can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Unusable {
    /// Not a regular file: a directory, a FIFO, a device, a socket, or a
    /// symbolic link (this backend writes none). Never opened: opening a
    /// FIFO for reading blocks until a writer comes.
    NotAFile,
    /// Larger than [`MAX_FILE_BYTES`].
    TooLarge,
    /// Not a record's JSON.
    Undecodable,
}

/// Reads the record at `path`: `None` if there is no such file.
///
/// Only a regular file is opened. A special file swapped in between the
/// check and the open (by someone with write access to the directory)
/// could still block the open; the file opened is checked again, so it is
/// never read.
pub(super) fn read_record(path: &Path) -> io::Result<Option<Result<Record, Unusable>>> {
    let absent = |e: io::Error| {
        if e.kind() == io::ErrorKind::NotFound {
            Ok(None)
        } else {
            Err(e)
        }
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(Some(Err(Unusable::NotAFile))),
        Err(e) => return absent(e),
    }
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) => return absent(e),
    };
    if !file.metadata()?.is_file() {
        return Ok(Some(Err(Unusable::NotAFile)));
    }
    let mut bytes = Vec::new();
    // One byte past the cap tells a file at the cap from a larger one.
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Ok(Some(Err(Unusable::TooLarge)));
    }
    Ok(Some(
        serde_json::from_slice(&bytes).map_err(|_| Unusable::Undecodable),
    ))
}

/// Writes `record` to `path` atomically: readers see the old file or the
/// new one, never a part. No fsync: the readers share this host's page
/// cache, and a host crash ends every registrant anyway.
pub(super) fn write_record(path: &Path, record: &Record) -> Result<(), DirectoryError> {
    let bytes = serde_json::to_vec(record).map_err(|e| {
        DirectoryError::new(
            "encode",
            path,
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })?;
    // Hidden, so resolvers skip it; named after the owner, so two writers
    // of one address never share a temporary file.
    let temp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        record.owner
    ));
    let written = fs::write(&temp, bytes)
        .map_err(|e| DirectoryError::new("write", &temp, e))
        .and_then(|()| fs::rename(&temp, path).map_err(|e| DirectoryError::new("rename", path, e)));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Checks that the root directory is there: when it is not, the backend
/// is down, and nothing re-creates it (that would hide the outage and
/// split writers from readers).
pub(super) fn check_root(root: &Path) -> Result<(), DirectoryError> {
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(DirectoryError::new(
            "open root",
            root,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        )),
        Err(e) => Err(DirectoryError::new("open root", root, e)),
    }
}

/// Creates `<root>/<service>` if missing (never the root itself).
pub(super) fn ensure_service_dir(dir: &Path) -> Result<(), DirectoryError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(DirectoryError::new("create", dir, e)),
    }
}

/// `<root>/<service>`.
pub(super) fn service_dir(root: &Path, service: &str) -> PathBuf {
    root.join(service)
}

/// Runs file work off the async threads (file systems block), as one
/// backend request.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DirectoryError> + Send + 'static,
) -> Result<T, DirectoryError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| Err(DirectoryError::panicked(join)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_plain_and_distinct() {
        let name = |a: &str| file_name(a.parse().unwrap());
        assert_eq!(name("10.0.0.7:8080"), "10.0.0.7_8080.json");
        assert_eq!(name("[::1]:80"), "--1_80.json");
        assert_eq!(name("[fe80::1%3]:80"), "fe80--1%3_80.json");
        assert_ne!(name("[::ffff:1.2.3.4]:80"), name("1.2.3.4:80"));
        assert!(!name("[2001:db8::7]:443").contains([':', '/', '[', ']']));
    }

    #[test]
    fn service_names_stay_one_component() {
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", &"x".repeat(256)] {
            assert!(check_service_name(bad).is_err(), "{bad:?}");
        }
        for good in ["echo", "team.payments", "..x", &"x".repeat(255)] {
            assert!(check_service_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_record_survives_the_round_trip_and_junk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        let record = Record {
            instance: Instance::new("echo", "10.0.0.7:8080".parse().unwrap()).with_tag("zone", "a"),
            owner: rpc_ext_registry::kit::registration_id(),
            heartbeat_unix_ms: 7,
        };
        write_record(&path, &record).unwrap();
        let read = read_record(&path).unwrap().unwrap().unwrap();
        assert_eq!((read.instance, read.owner), (record.instance, record.owner));
        // Only the file itself is left: the temporary file was renamed.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        fs::write(&path, b"{not json").unwrap();
        assert_eq!(
            read_record(&path).unwrap().unwrap().unwrap_err(),
            Unusable::Undecodable
        );
        fs::write(&path, vec![b' '; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert_eq!(
            read_record(&path).unwrap().unwrap().unwrap_err(),
            Unusable::TooLarge
        );
        assert!(read_record(&dir.path().join("gone.json"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn special_files_are_left_unopened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("127.0.0.1_1.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let directory = dir.path().join("127.0.0.1_2.json");
        fs::create_dir(&directory).unwrap();
        let link = dir.path().join("127.0.0.1_3.json");
        let target = dir.path().join("target.json");
        fs::write(&target, b"{}").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();

        // On a thread: opening the FIFO would block it until a writer
        // comes, which never happens.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let read = [fifo, directory, link].map(|path| read_record(&path).map_err(|e| e.kind()));
            let _ = tx.send(read);
        });
        let read = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("reading a special file blocked");
        for outcome in read {
            assert!(
                matches!(outcome, Ok(Some(Err(Unusable::NotAFile)))),
                "{outcome:?}"
            );
        }
    }
}
