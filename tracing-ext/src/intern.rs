//! Span names kept for the life of the process, so that spans share them.
//!
//! A span's name is a `Cow<'static, str>`: an owned name costs an
//! allocation, a copy and a free per span, and a service repeats the same
//! few names. Interned names are never freed, so the set is bounded: at
//! most [`MAX_NAMES`] names of at most [`MAX_NAME_LEN`] bytes (256 KiB
//! whatever the traffic, junk paths included); past that, names are owned
//! per span as before. Names can come from the network (a gRPC path before
//! the router saw it), so a client sending a thousand made-up paths fills
//! the set for good: spans of names not kept by then cost their allocation
//! again, nothing worse. Lookups take a read lock only, so threads do not
//! wait on each other once the set is settled.

use std::{
    borrow::Cow,
    collections::HashSet,
    sync::{LazyLock, PoisonError, RwLock},
};

/// Most names kept.
pub(crate) const MAX_NAMES: usize = 1024;
/// Longest name kept.
pub(crate) const MAX_NAME_LEN: usize = 256;

static NAMES: LazyLock<RwLock<HashSet<&'static str>>> = LazyLock::new(RwLock::default);

/// `name` as a shared `'static` name if it is, or can be, kept.
pub(crate) fn span_name(name: String) -> Cow<'static, str> {
    if name.len() > MAX_NAME_LEN {
        return Cow::Owned(name);
    }
    // Nothing in here panics; a poisoned set is still a valid set.
    {
        let names = NAMES.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(&kept) = names.get(name.as_str()) {
            return Cow::Borrowed(kept);
        }
        if names.len() >= MAX_NAMES {
            return Cow::Owned(name);
        }
    }
    let mut names = NAMES.write().unwrap_or_else(PoisonError::into_inner);
    // Another thread may have kept it, or filled the set, meanwhile.
    if let Some(&kept) = names.get(name.as_str()) {
        return Cow::Borrowed(kept);
    }
    if names.len() >= MAX_NAMES {
        return Cow::Owned(name);
    }
    let kept: &'static str = Box::leak(name.into_boxed_str());
    names.insert(kept);
    Cow::Borrowed(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shared_and_the_set_stays_bounded() {
        let first = span_name("echo.Echo/Say".to_owned());
        let again = span_name("echo.Echo/Say".to_owned());
        match (&first, &again) {
            (Cow::Borrowed(a), Cow::Borrowed(b)) => assert!(std::ptr::eq(*a, *b)),
            other => panic!("not interned: {other:?}"),
        }
        assert!(matches!(
            span_name("x".repeat(MAX_NAME_LEN + 1)),
            Cow::Owned(_)
        ));
        for n in 0..MAX_NAMES + 10 {
            assert_eq!(span_name(format!("junk{n}/M")), format!("junk{n}/M"));
        }
        assert_eq!(NAMES.read().unwrap().len(), MAX_NAMES);
        assert!(matches!(span_name("late/Name".to_owned()), Cow::Owned(_)));
        // Names kept before the set filled up are still shared.
        assert!(matches!(
            span_name("echo.Echo/Say".to_owned()),
            Cow::Borrowed(_)
        ));
    }
}
