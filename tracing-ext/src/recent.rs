//! Per-thread caches of the values a server's calls repeat: its span names,
//! service and method names, and the hosts it is reached at.
//!
//! A sampled span copies these into owned attribute strings on every call;
//! serving the same few methods, a thread finds them here instead and
//! shares one `Arc<str>` or one interned `&'static str` (a reference
//! count or nothing, not an allocation and a copy). Each cache is a handful
//! of entries replaced in turn, so memory is fixed whatever the traffic.

use std::{borrow::Cow, cell::RefCell, net::IpAddr, sync::Arc};

use opentelemetry::StringValue;

use crate::{intern, RpcSystem, OTHER};

const ENTRIES: usize = 8;

/// A few recent values of one kind.
struct Recent<T> {
    entries: [Option<T>; ENTRIES],
    next: usize,
}

impl<T> Recent<T> {
    const fn new() -> Self {
        Self {
            entries: [None, None, None, None, None, None, None, None],
            next: 0,
        }
    }

    fn find_mut(&mut self, matches: impl Fn(&T) -> bool) -> Option<&mut T> {
        self.entries
            .iter_mut()
            .flatten()
            .find(|entry| matches(entry))
    }

    fn insert(&mut self, value: T) {
        self.entries[self.next] = Some(value);
        self.next = (self.next + 1) % ENTRIES;
    }
}

impl<T: Clone> Recent<T> {
    fn get_or_insert(&mut self, matches: impl Fn(&T) -> bool, make: impl FnOnce() -> T) -> T {
        if let Some(found) = self.find_mut(matches) {
            return found.clone();
        }
        let made = make();
        self.insert(made.clone());
        made
    }
}

/// The names the spans of one method (for HTTP, one route and request
/// method) repeat from call to call.
#[derive(Clone)]
pub(crate) struct CallNames {
    system: RpcSystem,
    /// RPC: the service (`rpc.service` before v1.38). HTTP: the route.
    pub(crate) service: Arc<str>,
    /// RPC: the short method (`rpc.method` before v1.38). HTTP: the
    /// normalized request method.
    pub(crate) method: Arc<str>,
    /// RPC: the full method, `service/method`: the span name and the
    /// current `rpc.method`. HTTP: the span name. Interned while the
    /// interned set has room.
    pub(crate) full: Cow<'static, str>,
    /// The id of the method set that last recognized `full` on this
    /// thread; 0 for none.
    recognized_by: u64,
}

impl CallNames {
    fn new(system: RpcSystem, service: &str, method: &str, full: String) -> Self {
        Self {
            system,
            service: service.into(),
            method: method.into(),
            full: intern::span_name(full),
            recognized_by: 0,
        }
    }

    fn is(&self, system: RpcSystem, service: &str, method: &str) -> bool {
        self.system == system && *self.method == *method && *self.service == *service
    }
}

thread_local! {
    static CALLS: RefCell<Recent<CallNames>> = const { RefCell::new(Recent::new()) };
    static IPS: RefCell<Recent<(IpAddr, Arc<str>)>> = const { RefCell::new(Recent::new()) };
    static TEXTS: RefCell<Recent<Arc<str>>> = const { RefCell::new(Recent::new()) };
}

/// The full name of a call: `service/method` for RPC; for HTTP the span
/// name, `{method} {route}`, the method alone without a route, and `HTTP`
/// for a method that is not a standard one.
pub(crate) fn full_name(system: RpcSystem, service: &str, method: &str) -> String {
    // Joined by hand: `format!` costs several times the copy, per call.
    let join = |first: &str, separator: char, second: &str| {
        let mut name = String::with_capacity(first.len() + 1 + second.len());
        name.push_str(first);
        name.push(separator);
        name.push_str(second);
        name
    };
    match system {
        RpcSystem::Http => {
            let method = if method == OTHER { "HTTP" } else { method };
            if service.is_empty() {
                method.to_owned()
            } else {
                join(method, ' ', service)
            }
        }
        _ => join(service, '/', method),
    }
}

/// The names of calls to `service`/`method`, from this thread's recent
/// calls if there. Only for names that are known to be real (a client's
/// own, a recognized server method, a route template): a made-up name
/// would take a place in the interned set for good.
pub(crate) fn call_names(system: RpcSystem, service: &str, method: &str) -> CallNames {
    let make = || CallNames::new(system, service, method, full_name(system, service, method));
    CALLS
        .try_with(|calls| {
            calls
                .borrow_mut()
                .get_or_insert(|seen| seen.is(system, service, method), make)
        })
        .unwrap_or_else(|_| make())
}

/// The names of calls to `service`/`method` if `in_set` (asked about the
/// full method) says the method set `set_id` holds it; else the full
/// method. The answer "yes" is remembered with the names, so a thread asks
/// the set once per method, not once per call.
pub(crate) fn recognized_names(
    system: RpcSystem,
    service: &str,
    method: &str,
    set_id: u64,
    in_set: impl Fn(&str) -> bool,
) -> Result<CallNames, String> {
    let ask = |calls: &mut Recent<CallNames>| {
        if let Some(seen) = calls.find_mut(|seen| seen.is(system, service, method)) {
            if seen.recognized_by != set_id {
                if !in_set(&seen.full) {
                    return Err(seen.full.to_string());
                }
                seen.recognized_by = set_id;
            }
            return Ok(seen.clone());
        }
        let full = full_name(system, service, method);
        if !in_set(&full) {
            return Err(full);
        }
        let mut names = CallNames::new(system, service, method, full);
        names.recognized_by = set_id;
        calls.insert(names.clone());
        Ok(names)
    };
    CALLS
        .try_with(|calls| ask(&mut calls.borrow_mut()))
        // Only while the thread is being torn down: a cache of its own.
        .unwrap_or_else(|_| ask(&mut Recent::new()))
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

/// `text` as a shared string, from this thread's recent ones if there: the
/// host names a server is addressed by, a client's targets.
pub(crate) fn text(text: &str) -> StringValue {
    let shared = TEXTS
        .try_with(|texts| {
            texts
                .borrow_mut()
                .get_or_insert(|seen| **seen == *text, || text.into())
        })
        .unwrap_or_else(|_| text.into());
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
        let a = call_names(RpcSystem::Grpc, "echo.Echo", "Say");
        let b = call_names(RpcSystem::Grpc, "echo.Echo", "Say");
        assert!(Arc::ptr_eq(&a.service, &b.service));
        assert_eq!((&*b.service, &*b.method), ("echo.Echo", "Say"));
        assert_eq!(b.full, "echo.Echo/Say");
        assert!(matches!(b.full, Cow::Borrowed(_)));
        let thrift = call_names(RpcSystem::Thrift, "echo.Echo", "Say");
        assert_eq!(thrift.system, RpcSystem::Thrift);
        for n in 0..100 {
            let names = call_names(RpcSystem::Grpc, &format!("svc{n}"), "M");
            assert_eq!(&*names.service, format!("svc{n}"));
        }
        CALLS.with(|calls| assert_eq!(calls.borrow().entries.iter().flatten().count(), ENTRIES));
        let local: IpAddr = "10.0.0.7".parse().unwrap();
        let first = ip(local);
        assert_eq!(first.as_str(), "10.0.0.7");
        assert_eq!(ip(local).as_str(), "10.0.0.7");
        IPS.with(|ips| assert_eq!(ips.borrow().entries.iter().flatten().count(), 1));
        assert_eq!(text("echo.internal").as_str(), "echo.internal");
        assert_eq!(text("echo.internal").as_str(), "echo.internal");
        TEXTS.with(|texts| assert_eq!(texts.borrow().entries.iter().flatten().count(), 1));
    }

    #[test]
    fn recognition_is_asked_once_per_set_and_thread() {
        let asked = std::cell::Cell::new(0);
        let ask = |set: u64, answer: bool| {
            recognized_names(RpcSystem::Grpc, "r.R", "M", set, |full| {
                assert_eq!(full, "r.R/M");
                asked.set(asked.get() + 1);
                answer
            })
            .is_ok()
        };
        assert!(!ask(7, false));
        assert!(ask(7, true));
        assert!(ask(7, false), "remembered");
        assert!(ask(8, true), "another set asks again");
        assert_eq!(asked.get(), 3);
    }

    #[test]
    fn http_names_use_the_route_when_there_is_one() {
        assert_eq!(
            full_name(RpcSystem::Http, "/users/{id}", "GET"),
            "GET /users/{id}"
        );
        assert_eq!(full_name(RpcSystem::Http, "", "GET"), "GET");
        assert_eq!(full_name(RpcSystem::Http, "", OTHER), "HTTP");
        assert_eq!(full_name(RpcSystem::Http, "/a", OTHER), "HTTP /a");
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
