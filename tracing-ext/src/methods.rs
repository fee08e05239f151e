//! The methods a server is known to serve, so that a span names the method
//! a call asked for only once the server showed it serves it.
//!
//! A gRPC server's tracing layer runs before the router: the path it sees
//! is whatever the client sent. Named by it, spans would carry as many
//! names as clients care to make up. A method joins the set when a call to
//! it ends OK (or when the application lists it up front: then its failed
//! first calls are named too), and from then on its spans carry
//! `rpc.method` from the start. The set is bounded: past its cap, new
//! methods are recorded as `_OTHER` with the name in `rpc.method_original`.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        PoisonError, RwLock,
    },
};

/// The default cap on methods learned from traffic.
pub const DEFAULT_MAX_METHODS: usize = 1_000;

/// Ids start at 1: 0 marks a name no set recognized (see `recent.rs`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A bounded set of full method names (`echo.Echo/Say`).
#[derive(Debug)]
pub(crate) struct MethodSet {
    id: u64,
    /// Most names held: the ones given up front plus the cap.
    capacity: usize,
    names: RwLock<HashSet<Box<str>>>,
}

impl MethodSet {
    /// A set holding `given` (a leading `/` is dropped) and room for `cap`
    /// more.
    pub(crate) fn new(given: Vec<String>, cap: usize) -> Self {
        let names: HashSet<Box<str>> = given
            .into_iter()
            .map(|name| match name.strip_prefix('/') {
                Some(stripped) => stripped.into(),
                None => name.into_boxed_str(),
            })
            .collect();
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            capacity: names.len().saturating_add(cap),
            names: RwLock::new(names),
        }
    }

    /// Tells this set from every other one of the process.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether `full` is in the set.
    pub(crate) fn contains(&self, full: &str) -> bool {
        // Nothing in here panics; a poisoned set is still a valid set.
        let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
        names.contains(full)
    }

    /// Adds `full` if there is room; whether it is in the set now.
    pub(crate) fn learn(&self, full: &str) -> bool {
        {
            let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
            if names.contains(full) {
                return true;
            }
            if names.len() >= self.capacity {
                return false;
            }
        }
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        if names.contains(full) {
            return true;
        }
        if names.len() >= self.capacity {
            return false;
        }
        names.insert(full.into());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_is_bounded_and_given_names_do_not_count() {
        let set = MethodSet::new(vec!["/echo.Echo/Say".into()], 2);
        assert!(set.contains("echo.Echo/Say"));
        assert!(!set.contains("a.B/C"));
        assert!(set.learn("a.B/C"));
        assert!(set.learn("a.B/C"));
        assert!(set.learn("a.B/D"));
        assert!(!set.learn("a.B/E"), "past the cap");
        assert!(!set.contains("a.B/E"));
        assert_ne!(set.id(), MethodSet::new(Vec::new(), 1).id());
    }
}
