//! Per-thread caches of the values a server's calls repeat: its service
//! and method names and the addresses it is reached at.
//!
//! A sampled span copies these into owned attribute strings on every call;
//! serving the same few methods, a thread finds them here instead and
//! shares one `Arc<str>` (a reference count, not an allocation and a copy).
//! Each cache is a handful of entries replaced in turn, so memory is fixed
//! whatever the traffic.

use std::{cell::RefCell, net::IpAddr, sync::Arc};

use opentelemetry::StringValue;

const ENTRIES: usize = 8;

/// A few recent values of one kind, with the text each maps to.
struct Recent<K> {
    entries: [Option<(K, Arc<str>)>; ENTRIES],
    next: usize,
}

impl<K> Recent<K> {
    const fn new() -> Self {
        Self {
            entries: [None, None, None, None, None, None, None, None],
            next: 0,
        }
    }

    fn get_or_insert(
        &mut self,
        matches: impl Fn(&K) -> bool,
        make: impl FnOnce() -> (K, Arc<str>),
    ) -> Arc<str> {
        for (key, text) in self.entries.iter().flatten() {
            if matches(key) {
                return text.clone();
            }
        }
        let (key, text) = make();
        self.entries[self.next] = Some((key, text.clone()));
        self.next = (self.next + 1) % ENTRIES;
        text
    }
}

thread_local! {
    static NAMES: RefCell<Recent<Arc<str>>> = const { RefCell::new(Recent::new()) };
    static IPS: RefCell<Recent<IpAddr>> = const { RefCell::new(Recent::new()) };
}

/// `text` as a shared string, from this thread's recent names if there.
pub(crate) fn name(text: &str) -> StringValue {
    let shared = NAMES
        .try_with(|names| {
            names.borrow_mut().get_or_insert(
                |key| **key == *text,
                || {
                    let shared: Arc<str> = text.into();
                    (shared.clone(), shared)
                },
            )
        })
        .unwrap_or_else(|_| text.into());
    shared.into()
}

/// `ip` as text, from this thread's recent addresses if there.
pub(crate) fn ip(ip: IpAddr, write: impl Fn(IpAddr) -> String) -> StringValue {
    let shared = IPS
        .try_with(|ips| {
            ips.borrow_mut()
                .get_or_insert(|key| *key == ip, || (ip, write(ip).into()))
        })
        .unwrap_or_else(|_| write(ip).into());
    shared.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_share_one_string_and_the_cache_stays_small() {
        let a = name("echo.Echo");
        let b = name("echo.Echo");
        assert_eq!(a.as_str(), "echo.Echo");
        assert_eq!(b.as_str(), "echo.Echo");
        for n in 0..100 {
            assert_eq!(name(&format!("svc{n}")).as_str(), format!("svc{n}"));
        }
        NAMES.with(|names| assert_eq!(names.borrow().entries.iter().flatten().count(), ENTRIES));
        let local: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(ip(local, |ip| ip.to_string()).as_str(), "10.0.0.7");
        assert_eq!(ip(local, |_| unreachable!("cached")).as_str(), "10.0.0.7");
    }
}
