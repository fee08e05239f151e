//! Hosts and ports from URI authorities and `Host` headers, and `url.full`
//! as a client records it.

use std::{cell::RefCell, ops::Range};

use crate::UrlParts;

/// `[userinfo@]host[:port]` → the host (IPv6 without its brackets) and the
/// port; a port that is not a number reads as absent. Only the framework
/// layers (features `tower`, `volo`) read authorities.
#[cfg_attr(not(any(feature = "tower", feature = "volo")), allow(dead_code))]
pub(crate) fn split_authority(authority: &str) -> (&str, Option<u16>) {
    // A server sees the same authority on call after call: remember where
    // the last one split on this thread instead of scanning it again.
    thread_local! {
        static LAST: RefCell<(String, Range<usize>, Option<u16>)> =
            const { RefCell::new((String::new(), 0..0, None)) };
    }
    let (host, port) = LAST
        .try_with(|last| {
            let mut last = last.borrow_mut();
            let (seen, host, port) = &mut *last;
            if *seen != authority {
                (*host, *port) = split(authority);
                // Reuses the buffer: no allocation once it is long enough.
                seen.clear();
                seen.push_str(authority);
            }
            (host.clone(), *port)
        })
        .unwrap_or_else(|_| split(authority));
    (authority.get(host).unwrap_or_default(), port)
}

/// Where the host is in an authority, and the port.
#[cfg_attr(not(any(feature = "tower", feature = "volo")), allow(dead_code))]
fn split(authority: &str) -> (Range<usize>, Option<u16>) {
    let bytes = authority.as_bytes();
    let host_start = bytes
        .iter()
        .rposition(|byte| *byte == b'@')
        .map_or(0, |at| at + 1);
    let hostport = &bytes[host_start..];
    let digits = hostport
        .iter()
        .rev()
        .take(6)
        .take_while(|byte| byte.is_ascii_digit())
        .count();
    let (host_len, port) = match hostport.len().checked_sub(digits + 1) {
        Some(colon) if digits > 0 && hostport[colon] == b':' => {
            (colon, port(&hostport[colon + 1..]))
        }
        // No port, or a junk one: cut at the last `:` outside brackets.
        _ => match hostport
            .iter()
            .rposition(|byte| matches!(byte, b':' | b']'))
        {
            Some(colon) if hostport[colon] == b':' => (colon, None),
            _ => (hostport.len(), None),
        },
    };
    let host = host_start..host_start + host_len;
    let bracketed = bytes.get(host.clone()).is_some_and(|host| {
        host.len() >= 2 && host.first() == Some(&b'[') && host.last() == Some(&b']')
    });
    if bracketed {
        (host.start + 1..host.end - 1, port)
    } else {
        (host, port)
    }
}

#[cfg_attr(not(any(feature = "tower", feature = "volo")), allow(dead_code))]
fn port(digits: &[u8]) -> Option<u16> {
    // Digits only (`u16::from_str` would take a `+`), at most 65535.
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    let mut port: u32 = 0;
    for digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        port = port * 10 + u32::from(digit - b'0');
    }
    u16::try_from(port).ok()
}

/// The port a scheme implies when the URL names none.
pub(crate) fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else {
        None
    }
}

/// The authority a request was addressed to: the URI's (HTTP/2
/// `:authority`, absolute URIs), else the `Host` header.
#[cfg(any(feature = "tower", feature = "volo"))]
pub(crate) fn request_authority<'a>(
    uri: &'a http::Uri,
    headers: &'a http::HeaderMap,
) -> Option<&'a str> {
    uri.authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| {
            rpc_ext_core::first_value(headers, &http::header::HOST)?
                .to_str()
                .ok()
        })
}

/// `url.full` of an absolute URL, user info replaced by
/// `REDACTED:REDACTED` (the conventions' rule: credentials never reach a
/// span); `None` without an authority.
pub(crate) fn full_url(url: &UrlParts<'_>) -> Option<String> {
    let authority = url.authority?;
    let scheme = url.scheme.unwrap_or("http");
    let hostport = match authority.rsplit_once('@') {
        Some((_, hostport)) => hostport,
        None => authority,
    };
    let redacted = hostport.len() != authority.len();
    let mut full = String::with_capacity(
        scheme.len()
            + 3
            + if redacted { 18 } else { 0 }
            + hostport.len()
            + url.path.len()
            + url.query.map_or(0, |query| query.len() + 1),
    );
    full.push_str(scheme);
    full.push_str("://");
    if redacted {
        full.push_str("REDACTED:REDACTED@");
    }
    full.push_str(hostport);
    full.push_str(url.path);
    if let Some(query) = url.query {
        full.push('?');
        full.push_str(query);
    }
    Some(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        // Twice each: once scanned, once remembered.
        for _ in 0..2 {
            assert_eq!(split_authority("10.0.0.1:80"), ("10.0.0.1", Some(80)));
        }
        assert_eq!(
            split_authority("127.0.0.1:50051"),
            ("127.0.0.1", Some(50051))
        );
        assert_eq!(
            split_authority("echo.internal:80"),
            ("echo.internal", Some(80))
        );
        assert_eq!(split_authority("echo.internal"), ("echo.internal", None));
        assert_eq!(split_authority("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_authority("[fd00::8]"), ("fd00::8", None));
        assert_eq!(split_authority("user:pw@host:7"), ("host", Some(7)));
        assert_eq!(split_authority("host:+7"), ("host", None));
        assert_eq!(split_authority("host:99999"), ("host", None));
        // Junk (unbalanced brackets) splits somehow, without panicking.
        assert!("[::1".starts_with(split_authority("[::1").0));
        assert_eq!(split_authority("h:65535"), ("h", Some(65535)));
        assert_eq!(split_authority("h:65536"), ("h", None));
        assert_eq!(split_authority("h:"), ("h", None));
        assert_eq!(split_authority(""), ("", None));
    }

    #[test]
    fn full_urls_hide_credentials() {
        let uri: http::Uri = "https://alice:secret@example.com:8443/a/b?x=1"
            .parse()
            .unwrap();
        assert_eq!(
            full_url(&UrlParts::of(&uri)).as_deref(),
            Some("https://REDACTED:REDACTED@example.com:8443/a/b?x=1")
        );
        let plain: http::Uri = "http://example.com".parse().unwrap();
        assert_eq!(
            full_url(&UrlParts::of(&plain)).as_deref(),
            Some("http://example.com/")
        );
        let relative: http::Uri = "/a".parse().unwrap();
        assert_eq!(full_url(&UrlParts::of(&relative)), None);
        assert_eq!(default_port("HTTPS"), Some(443));
        assert_eq!(default_port("ftp"), None);
    }
}
