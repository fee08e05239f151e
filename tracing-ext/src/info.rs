//! What a layer tells the tracing core about a call as it starts.

use std::net::{IpAddr, SocketAddr};

use crate::RpcSystem;

/// A host a call is addressed to, as the `server.address` attribute takes
/// it: an IP address, or a name (a DNS name, a discovery target, an IP
/// literal as written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    /// An IP address.
    Ip(IpAddr),
    /// A name, written without IPv6 brackets.
    Name(&'a str),
}

/// The URL of an HTTP request, in the parts the `url.*` attributes take.
/// Servers record the scheme, path and query; clients the whole URL
/// (`url.full`, any user info replaced with `REDACTED:REDACTED`).
///
/// ```
/// use rpc_ext_tracing::UrlParts;
///
/// let uri: http::Uri = "https://example.com:8443/orders/7?full=1".parse().unwrap();
/// let url = UrlParts::of(&uri);
/// assert_eq!(url.scheme, Some("https"));
/// assert_eq!(url.authority, Some("example.com:8443"));
/// assert_eq!((url.path, url.query), ("/orders/7", Some("full=1")));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlParts<'a> {
    /// `http`, `https`; `None` for the origin-form URIs servers see
    /// (`url.scheme` is then `http`).
    pub scheme: Option<&'a str>,
    /// `host[:port]`, possibly with user info, for absolute URLs.
    pub authority: Option<&'a str>,
    /// The path, `/` when empty.
    pub path: &'a str,
    /// The query, without the `?`.
    pub query: Option<&'a str>,
}

impl<'a> UrlParts<'a> {
    /// The parts of a request URI.
    #[must_use]
    pub fn of(uri: &'a http::Uri) -> Self {
        Self {
            scheme: uri.scheme_str(),
            authority: uri.authority().map(http::uri::Authority::as_str),
            path: if uri.path().is_empty() {
                "/"
            } else {
                uri.path()
            },
            query: uri.query(),
        }
    }
}

/// What a layer knows about a call when it starts; also what
/// [`filter`](crate::RpcTracingBuilder::filter),
/// [`span_name`](crate::RpcTracingBuilder::span_name) and
/// [`extra_attributes`](crate::RpcTracingBuilder::extra_attributes) are
/// given.
///
/// ```
/// use rpc_ext_tracing::{CallInfo, Host, RpcSystem};
///
/// let info = CallInfo::grpc("/echo.Echo/Say").with_server(Host::Name("echo.internal"), Some(50051));
/// assert_eq!((info.system, info.service, info.method), (RpcSystem::Grpc, "echo.Echo", "Say"));
///
/// // A path that is not `/package.Service/Method`: no service, the raw name.
/// let junk = CallInfo::grpc("/nope");
/// assert_eq!((junk.service, junk.method), ("", "nope"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CallInfo<'a> {
    /// The RPC system.
    pub system: RpcSystem,
    /// RPC: the service, `echo.Echo` (Thrift: the IDL service,
    /// `ThriftEcho`); empty when not known, and the span then carries
    /// `rpc.method = _OTHER` with [`method`](Self::method) as
    /// `rpc.method_original`. HTTP: the route template the router
    /// matched, empty when none (yet).
    pub service: &'a str,
    /// RPC: the method, `Say`. HTTP: the request method as sent.
    pub method: &'a str,
    /// `server.address`: on clients the target they were configured with,
    /// on servers the host the request was addressed to.
    pub server_address: Option<Host<'a>>,
    /// `server.port`, where known.
    pub server_port: Option<u16>,
    /// The other end's address (`network.peer.*`), where known at the start.
    pub peer_addr: Option<SocketAddr>,
    /// Request size in bytes, where known (recorded with `record_sizes`).
    pub request_size: Option<u64>,
    /// HTTP: the request URL (`url.*`).
    pub url: Option<UrlParts<'a>>,
}

impl<'a> CallInfo<'a> {
    /// A call to `service`'s `method` (an empty `service`: not known).
    #[must_use]
    pub fn rpc(system: RpcSystem, service: &'a str, method: &'a str) -> Self {
        Self {
            system,
            service,
            method,
            server_address: None,
            server_port: None,
            peer_addr: None,
            request_size: None,
            url: None,
        }
    }

    /// A gRPC call by its request path, `/package.Service/Method`. Any
    /// other path has no service, and the path without its leading `/` as
    /// the method: the span records it as `_OTHER`.
    #[must_use]
    pub fn grpc(path: &'a str) -> Self {
        match rpc_ext_core::grpc_service_method(path) {
            Some((service, method)) => Self::rpc(RpcSystem::Grpc, service, method),
            None => Self::rpc(RpcSystem::Grpc, "", path.strip_prefix('/').unwrap_or(path)),
        }
    }

    /// An HTTP request: `method` as sent, `route` the template the router
    /// matched (empty when none, or not yet: clients never have one).
    #[must_use]
    pub fn http(method: &'a str, route: &'a str) -> Self {
        Self::rpc(RpcSystem::Http, route, method)
    }

    /// With `server.address` and `server.port`.
    #[must_use]
    pub fn with_server(mut self, host: Host<'a>, port: Option<u16>) -> Self {
        self.server_address = Some(host);
        self.server_port = port;
        self
    }

    /// With the other end's address, if known.
    #[must_use]
    pub fn with_peer(mut self, addr: Option<SocketAddr>) -> Self {
        self.peer_addr = addr;
        self
    }

    /// With the request's size, if known.
    #[must_use]
    pub fn with_request_size(mut self, size: Option<u64>) -> Self {
        self.request_size = size;
        self
    }

    /// With the request's URL (HTTP).
    #[must_use]
    pub fn with_url(mut self, url: UrlParts<'a>) -> Self {
        self.url = Some(url);
        self
    }
}
