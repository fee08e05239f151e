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
pub(crate) fn ip(ip: IpAddr) -> StringValue {
    let shared = IPS
        .try_with(|ips| {
            ips.borrow_mut()
                .get_or_insert(|key| *key == ip, || (ip, ip_text(ip).into()))
        })
        .unwrap_or_else(|_| ip_text(ip).into());
    shared.into()
}

/// An IP address as text. IPv4 is written digit by digit: `Display` goes
/// through the formatting machinery, a visible share of a traced call.
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                if octet >= 100 {
                    text.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    text.push(char::from(b'0' + octet / 10 % 10));
                }
                text.push(char::from(b'0' + octet % 10));
            }
            text
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

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
        let first = ip(local);
        assert_eq!(first.as_str(), "10.0.0.7");
        assert_eq!(ip(local).as_str(), "10.0.0.7");
        IPS.with(|ips| assert_eq!(ips.borrow().entries.iter().flatten().count(), 1));
    }

    #[test]
    fn ip_text_matches_display() {
        for octet in 0..=255u8 {
            for ip in [
                Ipv4Addr::new(octet, 0, 7, 255),
                Ipv4Addr::new(10, octet, 99, 1),
                Ipv4Addr::new(127, 100, octet, 10),
                Ipv4Addr::new(1, 2, 3, octet),
            ] {
                assert_eq!(ip_text(IpAddr::V4(ip)), ip.to_string());
            }
        }
        let v6: IpAddr = "fd00::8".parse().unwrap();
        assert_eq!(ip_text(v6), "fd00::8");
    }
}
