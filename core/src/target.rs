//! The target a client was configured with, as `server.address` and
//! `server.port` take it.

use std::sync::Arc;

/// A client's configured target: what its layers record as
/// `server.address` and `server.port` when they are told the target
/// instead of reading it from each request (a tonic client made with
/// `Client::new(channel)` sends URIs without a host).
///
/// [`parse`](Self::parse) takes an authority, `host[:port]`: a name
/// (`echo`), an address and port (`127.0.0.1:50051`), a bracketed IPv6
/// address (`[::1]:50051`, recorded without its brackets). Text that is not
/// an authority is the address as it stands, with no port.
///
/// ```
/// use rpc_ext_core::ServerTarget;
///
/// let name = ServerTarget::parse("echo");
/// assert_eq!((name.address(), name.port()), ("echo", None));
/// let v4 = ServerTarget::parse("127.0.0.1:50051");
/// assert_eq!((v4.address(), v4.port()), ("127.0.0.1", Some(50051)));
/// let v6 = ServerTarget::parse("[::1]:50051");
/// assert_eq!((v6.address(), v6.port()), ("::1", Some(50051)));
/// let junk = ServerTarget::parse("echo service");
/// assert_eq!((junk.address(), junk.port()), ("echo service", None));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    address: Arc<str>,
    port: Option<u16>,
}

impl ServerTarget {
    /// The target named by `authority` (see the type's documentation).
    #[must_use]
    pub fn parse(authority: &str) -> Self {
        let parsed = authority.parse::<http::uri::Authority>().ok();
        match parsed.as_ref().and_then(host_and_port) {
            Some((host, port)) => Self {
                address: host.into(),
                port,
            },
            None => Self {
                address: authority.into(),
                port: None,
            },
        }
    }

    /// `server.address`: the host, IPv6 without brackets.
    #[must_use]
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `server.port`, when the authority has one.
    #[must_use]
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

/// The host (IPv6 without brackets) and port of `authority`; `None` if
/// its port is not one (`http` takes any digits, 70000 included).
fn host_and_port(authority: &http::uri::Authority) -> Option<(&str, Option<u16>)> {
    let text = authority.as_str();
    let host = authority.host();
    // What follows the host: nothing, a bare `:`, or `:port`.
    let after = text.rfind(host).map_or("", |at| &text[at + host.len()..]);
    let port = authority.port_u16();
    if after.len() > 1 && port.is_none() {
        return None;
    }
    // The attribute takes the bare IPv6 address.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::ServerTarget;

    #[test]
    fn user_info_is_left_out_and_an_empty_port_is_none() {
        let target = ServerTarget::parse("user:secret@echo.internal:");
        assert_eq!((target.address(), target.port()), ("echo.internal", None));
    }

    #[test]
    fn an_out_of_range_port_is_not_an_authority() {
        let target = ServerTarget::parse("echo:70000");
        assert_eq!((target.address(), target.port()), ("echo:70000", None));
    }
}
