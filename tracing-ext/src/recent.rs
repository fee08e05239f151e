//! Per-thread caches of the values a server's calls repeat: its span names,
//! service and method names, and the addresses it is reached at.
//!
//! A sampled span copies these into owned attribute strings on every call;
//! serving the same few methods, a thread finds them here instead and
//! shares one `Arc<str>` (a reference count, not an allocation and a copy).
//! Each cache is a handful of entries replaced in turn, so memory is fixed
//! whatever the traffic.

use std::{borrow::Cow, cell::RefCell, net::IpAddr, sync::Arc};

use opentelemetry::StringValue;

use crate::{intern, RpcSystem};

const ENTRIES: usize = 8;

/// A few recent values of one kind.
struct Recent<T> {
    entries: [Option<T>; ENTRIES],
    next: usize,
}

impl<T: Clone> Recent<T> {
    const fn new() -> Self {
        Self {
            entries: [None, None, None, None, None, None, None, None],
            next: 0,
        }
    }

    fn get_or_insert(&mut self, matches: impl Fn(&T) -> bool, make: impl FnOnce() -> T) -> T {
        if let Some(found) = self.entries.iter().flatten().find(|entry| matches(entry)) {
            return found.clone();
        }
        let made = make();
        self.entries[self.next] = Some(made.clone());
        self.next = (self.next + 1) % ENTRIES;
        made
    }
}

/// What a call's span repeats from call to call.
#[derive(Clone)]
pub(crate) struct CallNames {
    system: RpcSystem,
    /// The default span name, interned; empty when not asked for.
    pub(crate) span_name: Cow<'static, str>,
    /// `rpc.service` (for HTTP, the route).
    pub(crate) service: Arc<str>,
    /// `rpc.method` (for HTTP, the request method).
    pub(crate) method: Arc<str>,
}

thread_local! {
    static CALLS: RefCell<Recent<CallNames>> = const { RefCell::new(Recent::new()) };
    static IPS: RefCell<Recent<(IpAddr, Arc<str>)>> = const { RefCell::new(Recent::new()) };
}

/// The names of a call to `service`/`method`, from this thread's recent
/// calls if there; `span_name` makes the default span name (`None`: the
/// layer names spans itself).
pub(crate) fn call_names(
    system: RpcSystem,
    service: &str,
    method: &str,
    span_name: Option<fn(RpcSystem, &str, &str) -> String>,
) -> CallNames {
    let make = || CallNames {
        system,
        span_name: span_name.map_or(Cow::Borrowed(""), |name| {
            intern::span_name(name(system, service, method))
        }),
        service: service.into(),
        method: method.into(),
    };
    CALLS
        .try_with(|calls| {
            calls.borrow_mut().get_or_insert(
                |seen| {
                    seen.system == system
                        && *seen.method == *method
                        && *seen.service == *service
                        && seen.span_name.is_empty() == span_name.is_none()
                },
                make,
            )
        })
        .unwrap_or_else(|_| make())
}

/// `ip` as text, from this thread's recent addresses if there.
pub(crate) fn ip(ip: IpAddr) -> StringValue {
    let shared = IPS
        .try_with(|ips| {
            ips.borrow_mut()
                .get_or_insert(|(key, _)| *key == ip, || (ip, ip_text(ip).into()))
                .1
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
        let join = |_: RpcSystem, service: &str, method: &str| format!("{service}/{method}");
        let a = call_names(RpcSystem::Grpc, "echo.Echo", "Say", Some(join));
        let b = call_names(RpcSystem::Grpc, "echo.Echo", "Say", Some(join));
        assert!(Arc::ptr_eq(&a.service, &b.service));
        assert_eq!((&*b.service, &*b.method), ("echo.Echo", "Say"));
        assert_eq!(b.span_name, "echo.Echo/Say");
        let unnamed = call_names(RpcSystem::Grpc, "echo.Echo", "Say", None);
        assert_eq!(unnamed.span_name, "");
        let thrift = call_names(RpcSystem::Thrift, "echo.Echo", "Say", None);
        assert_eq!(thrift.system, RpcSystem::Thrift);
        for n in 0..100 {
            let names = call_names(RpcSystem::Grpc, &format!("svc{n}"), "M", None);
            assert_eq!(&*names.service, format!("svc{n}"));
        }
        CALLS.with(|calls| assert_eq!(calls.borrow().entries.iter().flatten().count(), ENTRIES));
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
