//! What a call is ([`Call`]) and how it ended ([`Outcome`]): the two
//! things a layer tells [`RpcMetrics`](crate::RpcMetrics).

use rpc_ext_core::{semconv, thrift, CallEnd, GrpcCode, RpcSystem, Side, OTHER};

/// One call as the metrics see it: the side, the RPC system and the label
/// values it is recorded under. Built with [`Call::rpc`] or [`Call::http`]
/// and passed to [`RpcMetrics::start_call`](crate::RpcMetrics::start_call).
///
/// Only what the chosen [`Conventions`](rpc_ext_core::semconv::Conventions)
/// label by is kept: the server address on clients in the current names,
/// the peer service on clients in the old ones.
///
/// ```
/// use rpc_ext_metrics::{Call, RpcSystem, Side};
///
/// let grpc = Call::rpc(Side::Client, RpcSystem::Grpc, "echo.Echo", "Say")
///     .server_address("echo.internal", Some(50051));
/// let http = Call::http(Side::Server, &http::Method::GET).route("/users/{id}");
/// # let _ = (grpc, http);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Call<'a> {
    pub(crate) side: Side,
    pub(crate) system: RpcSystem,
    /// The RPC service (`echo.Echo`), or an HTTP server's route template.
    pub(crate) service: &'a str,
    /// The RPC method (`Say`), or the normalized HTTP method.
    pub(crate) method: &'a str,
    pub(crate) server_address: &'a str,
    pub(crate) server_port: Option<u16>,
    pub(crate) peer_service: &'a str,
    pub(crate) url_scheme: &'static str,
}

impl<'a> Call<'a> {
    /// A gRPC or Thrift call of `method` of `service` (`echo.Echo`, `Say`;
    /// Thrift: the service name and the method name). Recorded with
    /// `rpc.method` = `service/method`.
    ///
    /// Given [`RpcSystem::Http`], `service` is taken as the route template
    /// and `method` as the HTTP method, normalized like [`Call::http`].
    #[must_use]
    pub fn rpc(side: Side, system: RpcSystem, service: &'a str, method: &'a str) -> Self {
        let (method, url_scheme) = match system {
            RpcSystem::Http => (
                http::Method::from_bytes(method.as_bytes())
                    .map_or(OTHER, |method| semconv::http_method(&method)),
                "http",
            ),
            RpcSystem::Grpc | RpcSystem::Thrift => (method, ""),
        };
        Self {
            side,
            system,
            service,
            method,
            server_address: "",
            server_port: None,
            peer_service: "",
            url_scheme,
        }
    }

    /// An HTTP request with `method`, normalized by
    /// [`semconv::http_method`] (a method that is not standard is recorded
    /// as `_OTHER`). Its route is [`OTHER`] until [`route`](Self::route)
    /// names the template; its scheme `http` until
    /// [`url_scheme`](Self::url_scheme) says otherwise.
    #[must_use]
    pub fn http(side: Side, method: &http::Method) -> Self {
        Self {
            side,
            system: RpcSystem::Http,
            service: OTHER,
            method: semconv::http_method(method),
            server_address: "",
            server_port: None,
            peer_service: "",
            url_scheme: "http",
        }
    }

    /// The route template an HTTP server matched (`/users/{id}`): from the
    /// server's route table, never the raw path.
    #[must_use]
    pub fn route(mut self, template: &'a str) -> Self {
        self.service = template;
        self
    }

    /// The URI scheme of an HTTP request: `https` if `scheme` is, else
    /// `http` (two values, whatever a client sends).
    #[must_use]
    pub fn url_scheme(mut self, scheme: &str) -> Self {
        self.url_scheme = if scheme.eq_ignore_ascii_case("https") {
            "https"
        } else {
            "http"
        };
        self
    }

    /// The target a client was configured with: `server.address` and
    /// `server.port` (clients only; a low-cardinality name or address
    /// from the client's configuration, not a resolved peer).
    #[must_use]
    pub fn server_address(mut self, address: &'a str, port: Option<u16>) -> Self {
        self.server_address = address;
        self.server_port = port;
        self
    }

    /// The callee's service name as the client knows it: the
    /// `peer_service` label of [`Conventions::Old`](rpc_ext_core::semconv::Conventions::Old)
    /// (clients only).
    #[must_use]
    pub fn peer_service(mut self, name: &'a str) -> Self {
        self.peer_service = name;
        self
    }

    /// The same call filed under the overflow labels: what a call is
    /// recorded as once the method cap is reached, or while its name,
    /// read from the wire, is not yet trusted.
    pub(crate) fn overflow(self) -> Self {
        Self {
            service: OTHER,
            method: OTHER,
            server_address: if self.server_address.is_empty() {
                ""
            } else {
                OTHER
            },
            server_port: None,
            peer_service: if self.peer_service.is_empty() {
                ""
            } else {
                OTHER
            },
            ..self
        }
    }

    pub(crate) fn is_overflow(&self) -> bool {
        self.service == OTHER && self.method == OTHER
    }
}

/// How a call ended: what sets the status and `error.type` labels.
///
/// ```
/// use rpc_ext_metrics::{GrpcCode, Outcome};
///
/// assert_eq!(Outcome::from(GrpcCode::OK), Outcome::Grpc(GrpcCode::OK));
/// assert!(Outcome::Thrift(rpc_ext_metrics::thrift::OK).is_ok());
/// assert!(!Outcome::Http(503).is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A gRPC call ended with this status.
    Grpc(GrpcCode),
    /// A Thrift call ended: [`thrift::OK`] or an error kind
    /// ([`thrift::APPLICATION_EXCEPTION`]...).
    Thrift(&'static str),
    /// An HTTP request was answered with this status.
    Http(u16),
    /// No response at all: a transport failure (`error.type` `transport`).
    Failed,
    /// The caller went away before the end: what a dropped
    /// [`CallRecorder`](crate::CallRecorder) records.
    Cancelled,
}

impl Outcome {
    /// Whether the call succeeded: gRPC OK, Thrift OK, an HTTP status
    /// below 400.
    #[must_use]
    pub fn is_ok(self) -> bool {
        match self {
            Self::Grpc(code) => code == GrpcCode::OK,
            Self::Thrift(kind) => kind == thrift::OK,
            Self::Http(status) => status < 400,
            Self::Failed | Self::Cancelled => false,
        }
    }
}

impl From<GrpcCode> for Outcome {
    fn from(code: GrpcCode) -> Self {
        Self::Grpc(code)
    }
}

impl From<CallEnd> for Outcome {
    fn from(end: CallEnd) -> Self {
        match end {
            CallEnd::Grpc(code) => Self::Grpc(code),
            CallEnd::Http(status) => Self::Http(status),
            CallEnd::Failed => Self::Failed,
        }
    }
}
