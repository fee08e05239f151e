//! The labels of every family, named once: each [`Label`] is a semantic
//! conventions attribute, which gives both the OpenTelemetry attribute and,
//! through [`prometheus_label`], the Prometheus label, so the two never
//! drift apart. Values are worked out once per method ([`KeyValues`]) and
//! once per outcome ([`OutcomeValues`]), never per call.

use rpc_ext_core::{
    semconv::{attr, old_attr, prometheus_label},
    thrift, GrpcCode, RpcSystem, Side, OTHER,
};

use crate::{cache::OwnedKey, call::Outcome, status::http_status_label};

/// One label of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    /// `rpc.system.name`
    SystemName,
    /// `rpc.method`, the full method: `echo.Echo/Say`.
    Method,
    /// `rpc.response.status_code`: the gRPC status name.
    ResponseStatusCode,
    /// `error.type`
    ErrorType,
    /// `server.address`
    ServerAddress,
    /// `server.port`
    ServerPort,
    /// `http.request.method`
    HttpRequestMethod,
    /// `http.route`
    HttpRoute,
    /// `http.response.status_code`
    HttpResponseStatusCode,
    /// `url.scheme`
    UrlScheme,
    /// `rpc.system` (old names)
    OldSystem,
    /// `rpc.service` (old names)
    OldService,
    /// `rpc.method`, the short method (old names)
    OldMethod,
    /// `peer.service` (old names)
    OldPeerService,
    /// This suite's old `status_code` label: the gRPC code number, the HTTP
    /// status or the Thrift outcome.
    OldStatusCode,
}

impl Label {
    /// The Prometheus label name.
    pub(crate) fn prometheus_name(self) -> String {
        match self {
            Self::OldStatusCode => "status_code".to_owned(),
            other => prometheus_label(other.attribute()),
        }
    }

    /// The attribute name (for [`Label::OldStatusCode`], the attribute the
    /// OpenTelemetry mirror used for it with a gRPC status).
    fn attribute(self) -> &'static str {
        match self {
            Self::SystemName => attr::RPC_SYSTEM_NAME,
            Self::Method => attr::RPC_METHOD,
            Self::ResponseStatusCode => attr::RPC_RESPONSE_STATUS_CODE,
            Self::ErrorType => attr::ERROR_TYPE,
            Self::ServerAddress => attr::SERVER_ADDRESS,
            Self::ServerPort => attr::SERVER_PORT,
            Self::HttpRequestMethod => attr::HTTP_REQUEST_METHOD,
            Self::HttpRoute => attr::HTTP_ROUTE,
            Self::HttpResponseStatusCode => attr::HTTP_RESPONSE_STATUS_CODE,
            Self::UrlScheme => attr::URL_SCHEME,
            Self::OldSystem => old_attr::RPC_SYSTEM,
            Self::OldService => old_attr::RPC_SERVICE,
            Self::OldMethod => old_attr::RPC_METHOD,
            Self::OldPeerService => old_attr::PEER_SERVICE,
            Self::OldStatusCode => old_attr::RPC_GRPC_STATUS_CODE,
        }
    }
}

/// The Prometheus label names of a family.
pub(crate) fn prometheus_names(labels: &[Label]) -> Vec<String> {
    labels.iter().map(|label| label.prometheus_name()).collect()
}

/// The label values of one method's handles, formatted once.
pub(crate) struct KeyValues<'a> {
    key: &'a OwnedKey,
    /// `service/method`, or `_OTHER`.
    full_method: String,
    port: String,
}

impl<'a> KeyValues<'a> {
    pub(crate) fn new(key: &'a OwnedKey) -> Self {
        let full_method = if key.service.as_ref() == OTHER || key.method.as_ref() == OTHER {
            OTHER.to_owned()
        } else {
            format!("{}/{}", key.service, key.method)
        };
        Self {
            key,
            full_method,
            port: key.server_port.map(|p| p.to_string()).unwrap_or_default(),
        }
    }

    fn value<'s>(&'s self, label: Label, outcome: Option<&OutcomeValues>) -> &'s str {
        let key = self.key;
        match label {
            Label::SystemName | Label::OldSystem => key.system.as_str(),
            Label::Method => &self.full_method,
            Label::ServerAddress => &key.server_address,
            Label::ServerPort => &self.port,
            Label::HttpRequestMethod | Label::OldMethod => &key.method,
            Label::HttpRoute | Label::OldService => &key.service,
            Label::UrlScheme => key.url_scheme,
            Label::OldPeerService => &key.peer_service,
            Label::ResponseStatusCode | Label::HttpResponseStatusCode => {
                outcome.map_or("", |o| o.status)
            }
            Label::ErrorType => outcome.map_or("", |o| o.error),
            Label::OldStatusCode => outcome.map_or("", |o| o.old_status),
        }
    }

    /// The Prometheus label values of `labels`, in order.
    pub(crate) fn values<'s>(
        &'s self,
        labels: &[Label],
        outcome: Option<&OutcomeValues>,
    ) -> Vec<&'s str> {
        labels.iter().map(|&l| self.value(l, outcome)).collect()
    }

    /// The OpenTelemetry attributes of `labels`: the same names and values,
    /// minus those that are empty (an absent attribute, not an empty one);
    /// ports and HTTP statuses are integers, as the conventions type them.
    #[cfg(feature = "otel")]
    pub(crate) fn attributes(
        &self,
        labels: &[Label],
        outcome: Option<&OutcomeValues>,
    ) -> Vec<opentelemetry::KeyValue> {
        use opentelemetry::KeyValue;

        labels
            .iter()
            .filter_map(|&label| {
                let value = self.value(label, outcome);
                if value.is_empty() {
                    return None;
                }
                let integer = value.parse::<i64>().ok();
                Some(match (label, integer) {
                    (Label::ServerPort | Label::HttpResponseStatusCode, Some(n)) => {
                        KeyValue::new(label.attribute(), n)
                    }
                    // The old mirror: the status as gRPC and HTTP number it,
                    // else the Thrift outcome as a string.
                    (Label::OldStatusCode, Some(n)) => match self.key.system {
                        RpcSystem::Grpc => KeyValue::new(old_attr::RPC_GRPC_STATUS_CODE, n),
                        _ => KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, n),
                    },
                    (Label::OldStatusCode, None) => {
                        KeyValue::new(attr::RPC_RESPONSE_STATUS_CODE, value.to_owned())
                    }
                    _ => KeyValue::new(label.attribute(), value.to_owned()),
                })
            })
            .collect()
    }
}

/// The outcome labels of one (method, outcome).
pub(crate) struct OutcomeValues {
    /// `rpc.response.status_code` or `http.response.status_code`.
    status: &'static str,
    /// `error.type`; empty when the call did not fail.
    error: &'static str,
    /// The old `status_code` label.
    old_status: &'static str,
}

impl OutcomeValues {
    pub(crate) fn new(side: Side, system: RpcSystem, outcome: Outcome) -> Self {
        let grpc = system == RpcSystem::Grpc;
        match outcome {
            Outcome::Grpc(code) => {
                let failed = match side {
                    // The conventions' server errors; the other codes are
                    // the caller's doing.
                    Side::Server => code.is_server_error(),
                    Side::Client => code != GrpcCode::OK,
                };
                Self {
                    status: code.name(),
                    error: if failed { code.name() } else { "" },
                    old_status: code.as_label(),
                }
            }
            Outcome::Thrift(kind) => Self {
                status: "",
                error: if kind == thrift::OK { "" } else { kind },
                old_status: kind,
            },
            Outcome::Http(code) => {
                let label = http_status_label(code);
                let failed = match side {
                    Side::Server => code >= 500,
                    Side::Client => code >= 400,
                };
                Self {
                    status: label,
                    error: if failed { label } else { "" },
                    old_status: label,
                }
            }
            Outcome::Failed => Self {
                status: "",
                error: "transport",
                old_status: match system {
                    // What a gRPC client reports when no response came.
                    RpcSystem::Grpc => GrpcCode::UNAVAILABLE.as_label(),
                    RpcSystem::Http | RpcSystem::Thrift => thrift::ERROR,
                },
            },
            Outcome::Cancelled => Self {
                status: if grpc { GrpcCode::CANCELLED.name() } else { "" },
                error: if grpc {
                    GrpcCode::CANCELLED.name()
                } else {
                    "cancelled"
                },
                old_status: match system {
                    RpcSystem::Grpc => GrpcCode::CANCELLED.as_label(),
                    RpcSystem::Http => crate::status::HTTP_CANCELLED,
                    RpcSystem::Thrift => thrift::CANCELLED,
                },
            },
        }
    }
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use opentelemetry::{KeyValue, Value};

    use super::*;
    use crate::Call;

    #[test]
    fn empty_attributes_are_left_out_and_ports_are_integers() {
        use Label::*;
        let labels = &[
            SystemName,
            Method,
            ResponseStatusCode,
            ErrorType,
            ServerAddress,
            ServerPort,
        ];
        let call = Call::rpc(Side::Client, RpcSystem::Grpc, "echo.Echo", "Say");
        let ok = OutcomeValues::new(Side::Client, RpcSystem::Grpc, Outcome::Grpc(GrpcCode::OK));
        let key = OwnedKey::new(&call.server_address("echo", None));
        assert_eq!(
            KeyValues::new(&key).attributes(labels, Some(&ok)),
            vec![
                KeyValue::new(attr::RPC_SYSTEM_NAME, "grpc"),
                KeyValue::new(attr::RPC_METHOD, "echo.Echo/Say"),
                KeyValue::new(attr::RPC_RESPONSE_STATUS_CODE, "OK"),
                KeyValue::new(attr::SERVER_ADDRESS, "echo"),
            ]
        );
        let key = OwnedKey::new(&call.server_address("echo", Some(50051)));
        let port = KeyValues::new(&key)
            .attributes(labels, Some(&ok))
            .into_iter()
            .find(|kv| kv.key.as_str() == attr::SERVER_PORT)
            .map(|kv| kv.value);
        assert_eq!(port, Some(Value::I64(50051)));
    }
}
