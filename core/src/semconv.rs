//! The OpenTelemetry semantic-convention names every layer emits, defined
//! once: span attributes, OpenTelemetry metric attributes and, mapped the
//! way the OpenTelemetry-to-Prometheus translation maps them
//! ([`prometheus_label`]), the Prometheus label names.
//!
//! The names follow semantic conventions [`SEMCONV_VERSION`]. RPC names
//! changed after v1.37 (`rpc.system` → `rpc.system.name`, a full
//! `rpc.method`, `rpc.response.status_code` as a string); which set is
//! emitted is chosen by [`Conventions`], read from
//! `OTEL_SEMCONV_STABILITY_OPT_IN` as the conventions' migration guide
//! describes. HTTP names are stable and the same in every mode.

/// The semantic-conventions release the current names come from.
pub const SEMCONV_VERSION: &str = "1.44.0";

/// The value of `rpc.method`, `http.request.method` and `error.type` for
/// anything not known: a method the server does not serve, a non-standard
/// HTTP method, methods beyond a cardinality cap. Never a raw name read
/// from the wire.
pub const OTHER: &str = "_OTHER";

/// Attribute names of the current conventions.
pub mod attr {
    /// `rpc.system.name`: `grpc`, `apache_thrift`.
    pub const RPC_SYSTEM_NAME: &str = "rpc.system.name";
    /// `rpc.method`: the full method, `echo.Echo/Say`, or `_OTHER`.
    pub const RPC_METHOD: &str = "rpc.method";
    /// `rpc.method_original`: the name the client sent when `rpc.method` is `_OTHER`.
    pub const RPC_METHOD_ORIGINAL: &str = "rpc.method_original";
    /// `rpc.response.status_code`: the status name, `OK`, `DEADLINE_EXCEEDED`.
    pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";
    /// `error.type`: the status name, or a low-cardinality error class.
    pub const ERROR_TYPE: &str = "error.type";
    /// `server.address`: the target the client was configured with.
    pub const SERVER_ADDRESS: &str = "server.address";
    /// `server.port`
    pub const SERVER_PORT: &str = "server.port";
    /// `network.peer.address`: the address actually connected to.
    pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
    /// `network.peer.port`
    pub const NETWORK_PEER_PORT: &str = "network.peer.port";
    /// `service.peer.name`: the logical name of the called service, where
    /// the user names it.
    pub const SERVICE_PEER_NAME: &str = "service.peer.name";
    /// `http.request.method`: a standard method, or `_OTHER`.
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    /// `http.request.method_original`: the method sent, when not standard.
    pub const HTTP_REQUEST_METHOD_ORIGINAL: &str = "http.request.method_original";
    /// `http.route`: the matched route template (server spans only).
    pub const HTTP_ROUTE: &str = "http.route";
    /// `http.response.status_code`
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    /// `url.scheme`
    pub const URL_SCHEME: &str = "url.scheme";
    /// `url.path` (server spans)
    pub const URL_PATH: &str = "url.path";
    /// `url.query` (server spans, when the request has one)
    pub const URL_QUERY: &str = "url.query";
    /// `url.full` (client spans)
    pub const URL_FULL: &str = "url.full";
}

/// Attribute names of the conventions up to v1.37, emitted in
/// [`Conventions::Old`] and [`Conventions::Dup`].
pub mod old_attr {
    /// `rpc.system`
    pub const RPC_SYSTEM: &str = "rpc.system";
    /// `rpc.service`: `echo.Echo`.
    pub const RPC_SERVICE: &str = "rpc.service";
    /// `rpc.method`: the short method, `Say`.
    pub const RPC_METHOD: &str = "rpc.method";
    /// `rpc.grpc.status_code`: the number.
    pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
    /// `peer.service`
    pub const PEER_SERVICE: &str = "peer.service";
}

/// Metric instrument names of the current conventions.
pub mod metric {
    /// `rpc.server.call.duration` (s)
    pub const RPC_SERVER_CALL_DURATION: &str = "rpc.server.call.duration";
    /// `rpc.client.call.duration` (s)
    pub const RPC_CLIENT_CALL_DURATION: &str = "rpc.client.call.duration";
    /// `http.server.request.duration` (s)
    pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";
    /// `http.client.request.duration` (s)
    pub const HTTP_CLIENT_REQUEST_DURATION: &str = "http.client.request.duration";
    /// `http.server.active_requests` ({request})
    pub const HTTP_SERVER_ACTIVE_REQUESTS: &str = "http.server.active_requests";
    /// `rpc.server.active_requests` ({request}): not in the conventions
    /// (this suite's addition, named the way they name such instruments).
    pub const RPC_SERVER_ACTIVE_REQUESTS: &str = "rpc.server.active_requests";
    /// `rpc.client.active_requests` ({request}): this suite's addition.
    pub const RPC_CLIENT_ACTIVE_REQUESTS: &str = "rpc.client.active_requests";
    /// `rpc.server.request.size` (By): deprecated in v1.38 without a
    /// replacement; kept as this suite's addition.
    pub const RPC_SERVER_REQUEST_SIZE: &str = "rpc.server.request.size";
    /// `rpc.server.response.size` (By): as [`RPC_SERVER_REQUEST_SIZE`].
    pub const RPC_SERVER_RESPONSE_SIZE: &str = "rpc.server.response.size";
    /// `rpc.client.request.size` (By): as [`RPC_SERVER_REQUEST_SIZE`].
    pub const RPC_CLIENT_REQUEST_SIZE: &str = "rpc.client.request.size";
    /// `rpc.client.response.size` (By): as [`RPC_SERVER_REQUEST_SIZE`].
    pub const RPC_CLIENT_RESPONSE_SIZE: &str = "rpc.client.response.size";
}

/// The Prometheus label name of an attribute, as the OpenTelemetry to
/// Prometheus translation writes it: every character that is not a letter,
/// digit or `_` becomes `_` (`rpc.system.name` → `rpc_system_name`).
///
/// ```
/// use rpc_ext_core::semconv::{attr, prometheus_label};
///
/// assert_eq!(prometheus_label(attr::RPC_RESPONSE_STATUS_CODE), "rpc_response_status_code");
/// ```
#[must_use]
pub fn prometheus_label(attribute: &str) -> String {
    attribute
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Which RPC attribute names a layer emits.
///
/// The default is the current conventions ([`SEMCONV_VERSION`]);
/// `OTEL_SEMCONV_STABILITY_OPT_IN`, a comma-separated list, selects the
/// others: `rpc/dup` emits both sets (it wins over `rpc` when both are
/// listed), `rpc/old` (this suite's value, not the conventions') only the
/// names of v1.37 and before. `rpc` asks for the current names, which are
/// the default anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Conventions {
    /// `rpc.system.name`, full `rpc.method`, `rpc.response.status_code`
    /// (the status name): what the current conventions define.
    #[default]
    Current,
    /// `rpc.system`, `rpc.service`, short `rpc.method`,
    /// `rpc.grpc.status_code` (the number): the names before v1.38.
    Old,
    /// Both sets.
    Dup,
}

/// The environment variable of the conventions' migration plan.
pub const STABILITY_OPT_IN: &str = "OTEL_SEMCONV_STABILITY_OPT_IN";

impl Conventions {
    /// The set `OTEL_SEMCONV_STABILITY_OPT_IN` asks for; unset means
    /// [`Conventions::Current`].
    #[must_use]
    pub fn from_env() -> Self {
        std::env::var(STABILITY_OPT_IN)
            .map(|value| Self::parse(&value))
            .unwrap_or_default()
    }

    /// The set a value of `OTEL_SEMCONV_STABILITY_OPT_IN` asks for.
    ///
    /// ```
    /// use rpc_ext_core::semconv::Conventions;
    ///
    /// assert_eq!(Conventions::parse("http,rpc/dup"), Conventions::Dup);
    /// assert_eq!(Conventions::parse("rpc, rpc/dup"), Conventions::Dup);
    /// assert_eq!(Conventions::parse("rpc/old"), Conventions::Old);
    /// assert_eq!(Conventions::parse("rpc"), Conventions::Current);
    /// assert_eq!(Conventions::parse("database"), Conventions::Current);
    /// ```
    #[must_use]
    pub fn parse(value: &str) -> Self {
        let listed = |wanted: &str| value.split(',').any(|item| item.trim() == wanted);
        if listed("rpc/dup") {
            Self::Dup
        } else if listed("rpc") {
            Self::Current
        } else if listed("rpc/old") {
            Self::Old
        } else {
            Self::Current
        }
    }

    /// Whether the current names are emitted.
    #[must_use]
    pub fn current(self) -> bool {
        self != Self::Old
    }

    /// Whether the names before v1.38 are emitted.
    #[must_use]
    pub fn old(self) -> bool {
        self != Self::Current
    }
}

/// The `http.request.method` value of a method: the method itself when it
/// is one of the standard ones (RFC 9110, PATCH, QUERY), else [`OTHER`]
/// (the original then goes in `http.request.method_original`).
///
/// ```
/// use rpc_ext_core::semconv::http_method;
///
/// assert_eq!(http_method(&http::Method::GET), "GET");
/// assert_eq!(http_method(&http::Method::from_bytes(b"PURGE").unwrap()), "_OTHER");
/// ```
#[must_use]
pub fn http_method(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::CONNECT => "CONNECT",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::TRACE => "TRACE",
        http::Method::PATCH => "PATCH",
        _ if method.as_str() == "QUERY" => "QUERY",
        _ => OTHER,
    }
}

/// The full gRPC method of a request path, `/echo.Echo/Say` →
/// `echo.Echo/Say`, when the path has that shape.
///
/// ```
/// assert_eq!(rpc_ext_core::semconv::grpc_full_method("/echo.Echo/Say"), Some("echo.Echo/Say"));
/// assert_eq!(rpc_ext_core::semconv::grpc_full_method("/nope"), None);
/// ```
#[must_use]
pub fn grpc_full_method(path: &str) -> Option<&str> {
    crate::grpc_service_method(path).map(|_| &path[1..])
}

/// Whether a gRPC method is the standard health service's
/// (`grpc.health.v1.Health/Check`, `/Watch`), which the tracing layers
/// leave out by default.
///
/// ```
/// assert!(rpc_ext_core::semconv::is_grpc_health("grpc.health.v1.Health/Check"));
/// assert!(!rpc_ext_core::semconv::is_grpc_health("echo.Echo/Say"));
/// ```
#[must_use]
pub fn is_grpc_health(full_method: &str) -> bool {
    full_method
        .strip_prefix("grpc.health.v1.Health/")
        .is_some_and(|method| !method.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_map_like_the_otel_prometheus_translation() {
        assert_eq!(prometheus_label(attr::RPC_SYSTEM_NAME), "rpc_system_name");
        assert_eq!(prometheus_label(attr::ERROR_TYPE), "error_type");
        assert_eq!(
            prometheus_label(attr::HTTP_RESPONSE_STATUS_CODE),
            "http_response_status_code"
        );
    }

    #[test]
    fn grpc_full_method_keeps_the_package() {
        assert_eq!(grpc_full_method("/a.b.C/D"), Some("a.b.C/D"));
        assert_eq!(grpc_full_method("/a/b/c"), None);
    }
}
