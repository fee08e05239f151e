//! What kind of call a request is, and reading gRPC statuses.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Request, Response, Uri};

use crate::GrpcCode;

/// True for gRPC requests (`content-type: application/grpc...`).
pub fn is_grpc<B>(request: &Request<B>) -> bool {
    // Bytes, not `to_str`: validating the whole value first is wasted work.
    first_value(request.headers(), &http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The first value of `name`, as `HeaderMap::get` gives it. Requests and
/// responses carry a handful of headers: comparing names costs less than a
/// lookup, which hashes (a custom name byte by byte).
///
/// ```
/// let mut headers = http::HeaderMap::new();
/// headers.insert("grpc-status", http::HeaderValue::from_static("0"));
/// let name = http::HeaderName::from_static("grpc-status");
/// assert_eq!(rpc_ext_core::first_value(&headers, &name), headers.get(&name));
/// ```
#[must_use]
pub fn first_value<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a HeaderValue> {
    if headers.len() <= SCANNED_HEADERS {
        headers
            .iter()
            .find_map(|(seen, value)| (seen == name).then_some(value))
    } else {
        headers.get(name)
    }
}

/// Up to this many entries, [`first_value`] compares names instead of
/// looking the name up (a tuning constant, not API).
#[doc(hidden)]
pub const SCANNED_HEADERS: usize = 12;

/// `/package.Service/Method` → (`package.Service`, `Method`); `None` for
/// anything else.
///
/// ```
/// assert_eq!(rpc_ext_core::grpc_service_method("/echo.Echo/Say"), Some(("echo.Echo", "Say")));
/// assert_eq!(rpc_ext_core::grpc_service_method("/a/b/c"), None);
/// ```
#[must_use]
pub fn grpc_service_method(path: &str) -> Option<(&str, &str)> {
    // One pass over the bytes: paths are short, a `memchr` set-up per
    // search costs more than the scan.
    let rest = path.strip_prefix('/')?;
    let slash = rest.bytes().position(|b| b == b'/')?;
    let (service, method) = (&rest[..slash], &rest[slash + 1..]);
    (!service.is_empty() && !method.is_empty() && !method.bytes().any(|b| b == b'/'))
        .then_some((service, method))
}

/// The `content-length` of a message, when present and well-formed.
#[must_use]
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The server address a request was sent to: the URI's authority, else the
/// `Host` header, when it is an `ip:port`.
#[must_use]
pub fn server_addr(uri: &Uri, headers: &HeaderMap) -> Option<SocketAddr> {
    let text = uri
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| headers.get(http::header::HOST)?.to_str().ok())?;
    // A server sees the same authority on call after call: remember the
    // last one parsed on this thread instead of parsing it every time.
    thread_local! {
        static LAST: std::cell::RefCell<Option<(String, SocketAddr)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.try_with(|last| {
        let mut last = last.borrow_mut();
        if let Some((seen, addr)) = last.as_ref() {
            if seen == text {
                return Some(*addr);
            }
        }
        let addr: SocketAddr = text.parse().ok()?;
        *last = Some((text.to_owned(), addr));
        Some(addr)
    })
    .unwrap_or_else(|_| text.parse().ok())
}

/// Pre-parsed: looking a header up by `&str` parses the name on every call.
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// A `grpc-status` value as a code; junk reads as UNKNOWN.
#[must_use]
pub fn parse_grpc_status(value: &HeaderValue) -> GrpcCode {
    // What servers send: one or two digits, read without the string checks.
    match *value.as_bytes() {
        [digit @ b'0'..=b'9'] => return GrpcCode::new(i32::from(digit - b'0')),
        [b'1', digit @ b'0'..=b'6'] => return GrpcCode::new(10 + i32::from(digit - b'0')),
        _ => {}
    }
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .map_or(GrpcCode::UNKNOWN, GrpcCode::new)
}

/// The gRPC status a response already carries: `grpc-status` in the headers
/// (trailers-only responses), or the code the gRPC HTTP mapping gives a
/// non-200 status. `None` when the status will come in the trailers.
pub fn grpc_status_from_headers<B>(response: &Response<B>) -> Option<GrpcCode> {
    if let Some(code) = grpc_status(response.headers()) {
        return Some(parse_grpc_status(code));
    }
    Some(match response.status().as_u16() {
        200 => return None,
        400 => GrpcCode::INTERNAL,
        401 => GrpcCode::UNAUTHENTICATED,
        403 => GrpcCode::PERMISSION_DENIED,
        404 => GrpcCode::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => GrpcCode::UNAVAILABLE,
        _ => GrpcCode::UNKNOWN,
    })
}

pub(crate) fn grpc_status_from_trailers(trailers: &HeaderMap) -> Option<GrpcCode> {
    grpc_status(trailers).map(parse_grpc_status)
}

fn grpc_status(headers: &HeaderMap) -> Option<&HeaderValue> {
    first_value(headers, &GRPC_STATUS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            grpc_service_method("/echo.Echo/Say"),
            Some(("echo.Echo", "Say"))
        );
        assert_eq!(grpc_service_method("/echo.Echo/"), None);
        assert_eq!(grpc_service_method("//Say"), None);
        assert_eq!(grpc_service_method("/a/b/c"), None);
        assert_eq!(grpc_service_method("no-slash"), None);
    }

    #[test]
    fn grpc_status_is_found_in_small_and_large_maps() {
        for extra in [0, 3, 10] {
            let mut headers = HeaderMap::new();
            for n in 0..extra {
                headers.insert(
                    http::HeaderName::from_bytes(format!("x-{n}").as_bytes()).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            assert_eq!(grpc_status_from_trailers(&headers), None);
            headers.insert("grpc-status", HeaderValue::from_static("7"));
            assert_eq!(
                grpc_status_from_trailers(&headers),
                Some(GrpcCode::PERMISSION_DENIED),
                "{extra}"
            );
        }
    }

    #[test]
    fn junk_statuses_read_as_unknown() {
        for junk in ["", "abc", "-1", "17", "99999999999"] {
            assert_eq!(
                parse_grpc_status(&HeaderValue::from_str(junk).unwrap()),
                GrpcCode::UNKNOWN
            );
        }
        for code in 0..=16 {
            let text = code.to_string();
            assert_eq!(
                parse_grpc_status(&HeaderValue::from_str(&text).unwrap()),
                GrpcCode::new(code)
            );
            let padded = format!(" 0{text} ");
            assert_eq!(
                parse_grpc_status(&HeaderValue::from_str(&padded).unwrap()),
                GrpcCode::new(code)
            );
        }
    }
}
