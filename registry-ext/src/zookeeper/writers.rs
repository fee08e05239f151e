//! Which registration of a registry writes each node path: the newest of
//! the registry's registrations of that address. Each path has a lock of
//! its own, held across every write to the path and its deletion, so that
//! two registrations of one address never write in turn, while
//! registrations of other addresses go on.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::MutexGuard;

/// The generation of the registration that writes a path, or `None` once
/// none does (deleted, handed over to another registry).
type Writer = tokio::sync::Mutex<Option<u64>>;

type Paths = Mutex<HashMap<String, Arc<Writer>>>;

/// A registry's writers, by node path: one entry per path some live
/// registration of the registry holds a [`PathSlot`] of.
#[derive(Debug, Default)]
pub(super) struct Writers {
    paths: Arc<Paths>,
}

impl Writers {
    /// A hold on `path`'s writer, added if no registration holds one.
    pub(super) fn slot(&self, path: &str) -> PathSlot {
        let mut paths = lock(&self.paths);
        let writer = paths.entry(path.to_owned()).or_default().clone();
        PathSlot {
            path: path.to_owned(),
            writer,
            paths: self.paths.clone(),
        }
    }
}

/// One registration's hold on its node path's writer. The path is
/// forgotten when the last hold goes.
#[derive(Debug)]
pub(super) struct PathSlot {
    path: String,
    writer: Arc<Writer>,
    paths: Arc<Paths>,
}

impl PathSlot {
    /// Waits for the path's lock; the guard holds the generation of the
    /// registration that writes the path.
    pub(super) async fn lock(&self) -> MutexGuard<'_, Option<u64>> {
        self.writer.lock().await
    }
}

impl Drop for PathSlot {
    fn drop(&mut self) {
        let mut paths = lock(&self.paths);
        // Holds are only made under this lock: with the map's reference and
        // this one the last two, no other registration holds the path.
        let last = paths
            .get(&self.path)
            .is_some_and(|w| Arc::ptr_eq(w, &self.writer) && Arc::strong_count(w) == 2);
        if last {
            paths.remove(&self.path);
        }
    }
}

/// The map is consistent whatever panicked while it was locked: each
/// change is one insert or remove.
fn lock(paths: &Paths) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Writer>>> {
    paths.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_share_one_writer_per_path_and_the_last_forgets_it() {
        let writers = Writers::default();
        let first = writers.slot("/a");
        *first.lock().await = Some(1);
        let second = writers.slot("/a");
        assert_eq!(*second.lock().await, Some(1), "one writer per path");
        let other = writers.slot("/b");
        assert_eq!(*other.lock().await, None);
        // A path's lock leaves other paths alone.
        let held = first.lock().await;
        assert!(other.writer.try_lock().is_ok());
        drop(held);

        drop(first);
        assert_eq!(lock(&writers.paths).len(), 2, "still held by the second");
        drop(second);
        drop(other);
        assert!(lock(&writers.paths).is_empty());
        assert_eq!(*writers.slot("/a").lock().await, None, "a fresh writer");
    }
}
