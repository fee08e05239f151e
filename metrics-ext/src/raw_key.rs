//! The handles of a thread's last calls, found by the raw text their labels
//! are read from: a gRPC path, and on clients the target. A call seen again
//! skips splitting its path, building its [`Call`](crate::Call), and the
//! label comparisons of the method cache — most of what starting a call
//! costs once its handles exist.
//!
//! Only calls whose handles are final are kept: a name read from the wire
//! that is not yet trusted, and a call left out, take the full path every
//! time. Entries are never stale: a cache's labels for a key never change
//! (methods are only ever added, and a call over the cap stays over it).
//! Keys are compared byte for byte, never by a hash or a pointer, so no two
//! calls can share an entry by accident; a key longer than
//! [`RAW_KEY_MAX`] is never kept, so an entry never allocates whatever a
//! client sends. As with the method cache's own per-thread entries, a few
//! handles per thread may outlive their [`RpcMetrics`](crate::RpcMetrics)
//! until replaced.

use std::{cell::RefCell, sync::Arc};

use crate::{cache::MethodHandles, Side};

/// Longest key kept: longer ones are looked up the full way every time, so
/// that an entry never allocates.
pub(crate) const RAW_KEY_MAX: usize = 120;

/// Entries per thread: a thread serves and calls a few methods at a time.
const ENTRIES: usize = 4;

/// A client call's key, built on the stack: a tag naming how the target is
/// given, the path's length, the path, then the target. Server keys are the
/// path alone (the side tells the two kinds apart).
pub(crate) struct KeyBuf {
    bytes: [u8; RAW_KEY_MAX],
    len: usize,
    /// Set once a part did not fit: such a key is never looked up.
    overflow: bool,
}

impl KeyBuf {
    /// An empty key, to be filled in place with [`start`](Self::start) and
    /// [`push`](Self::push): moving a filled one costs a copy of the whole
    /// buffer.
    #[inline]
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0; RAW_KEY_MAX],
            len: 0,
            overflow: false,
        }
    }

    /// Starts the key with `tag` and `path` (its length first, so that no
    /// two paths and targets run together into the same bytes).
    #[inline]
    pub(crate) fn start(&mut self, tag: u8, path: &str) {
        match u16::try_from(path.len()) {
            Ok(len) => {
                self.push(&[tag]);
                self.push(&len.to_le_bytes());
                self.push(path.as_bytes());
            }
            Err(_) => self.overflow = true,
        }
    }

    /// Appends `part`.
    #[inline]
    pub(crate) fn push(&mut self, part: &[u8]) {
        let end = self.len + part.len();
        match self.bytes.get_mut(self.len..end) {
            Some(slot) => {
                slot.copy_from_slice(part);
                self.len = end;
            }
            None => self.overflow = true,
        }
    }

    /// The key, unless a part did not fit.
    #[inline]
    pub(crate) fn get(&self) -> Option<&[u8]> {
        (!self.overflow).then(|| &self.bytes[..self.len])
    }
}

/// A new id for a client layer's configured target: keys carry it in
/// place of the target's text. Never reused, so a key never outlives the
/// meaning of its id.
pub(crate) fn target_id() -> u64 {
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Tags of client keys: how the target follows the path.
pub(crate) mod tag {
    /// A target configured on the layer: its [`target_id`](super::target_id).
    pub(crate) const CONFIGURED: u8 = 1;
    /// The request URI's authority (tower).
    pub(crate) const AUTHORITY: u8 = 2;
    /// No target known (tower, a URI without authority).
    pub(crate) const NONE: u8 = 3;
    /// The callee's IP address and port, and its service name (Volo).
    pub(crate) const CALLEE_IP: u8 = 4;
    /// The callee's service name only (Volo).
    pub(crate) const CALLEE_NAME: u8 = 5;
}

struct Entry {
    /// The [`MethodCache`](crate::cache::MethodCache) it belongs to.
    cache: u64,
    side: Side,
    len: usize,
    bytes: [u8; RAW_KEY_MAX],
    handles: Arc<MethodHandles>,
}

struct RecentKeys {
    entries: [Option<Entry>; ENTRIES],
    next: usize,
}

thread_local! {
    static RECENT_KEYS: RefCell<RecentKeys> = const {
        RefCell::new(RecentKeys {
            entries: [None, None, None, None],
            next: 0,
        })
    };
}

/// The handles kept for `key` of `side` in cache `cache` on this thread.
#[inline]
pub(crate) fn find(cache: u64, side: Side, key: &[u8]) -> Option<Arc<MethodHandles>> {
    RECENT_KEYS
        .try_with(|recent| {
            recent
                .borrow()
                .entries
                .iter()
                .flatten()
                .find(|entry| {
                    entry.cache == cache
                        && entry.len == key.len()
                        && entry.side == side
                        && entry.bytes[..entry.len] == *key
                })
                .map(|entry| entry.handles.clone())
        })
        .ok()
        .flatten()
}

/// Keeps `handles` for `key`, replacing the oldest entry. Keys longer than
/// [`RAW_KEY_MAX`] are not kept.
pub(crate) fn remember(cache: u64, side: Side, key: &[u8], handles: &Arc<MethodHandles>) {
    let mut bytes = [0; RAW_KEY_MAX];
    let Some(slot) = bytes.get_mut(..key.len()) else {
        return;
    };
    slot.copy_from_slice(key);
    let entry = Entry {
        cache,
        side,
        len: key.len(),
        bytes,
        handles: handles.clone(),
    };
    // The entry it replaces is dropped after the borrow ends.
    let _replaced = RECENT_KEYS.try_with(|recent| {
        let mut recent = recent.borrow_mut();
        let next = recent.next;
        recent.next = (next + 1) % ENTRIES;
        recent.entries[next].replace(entry)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_does_not_fit_is_none() {
        let mut key = KeyBuf::new();
        key.start(1, "/echo.Echo/Say");
        key.push(b"echo");
        let got = key.get().unwrap();
        assert_eq!(got[0], 1);
        assert_eq!(&got[1..3], &14u16.to_le_bytes());
        assert_eq!(&got[3..], b"/echo.Echo/Sayecho");
        key.push(&[b'x'; RAW_KEY_MAX]);
        assert_eq!(key.get(), None);
    }
}
