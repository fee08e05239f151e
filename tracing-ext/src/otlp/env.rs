//! The OpenTelemetry SDK environment variables this module reads itself
//! (opentelemetry-otlp reads the endpoint, headers, timeout and compression).
//!
//! Each trace-specific `OTEL_EXPORTER_OTLP_TRACES_*` variable wins over its
//! general `OTEL_EXPORTER_OTLP_*` form, as the specification says.

use std::path::PathBuf;

use super::{Error, Transport};

/// `OTEL_SDK_DISABLED=true` (case-insensitive): nothing is exported.
pub(super) fn sdk_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"))
}

/// An OTLP exporter setting: the `TRACES_` form, else the general one.
pub(super) fn otlp_var(setting: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{setting}"),
        format!("OTEL_EXPORTER_OTLP_{setting}"),
    ]
    .into_iter()
    .find_map(|name| {
        let value = std::env::var(&name).ok()?;
        (!value.trim().is_empty()).then_some((name, value.trim().to_owned()))
    })
}

/// The transport of `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`; HTTP/protobuf
/// when unset, as the specification's default.
pub(super) fn transport() -> Result<Transport, Error> {
    let Some((variable, value)) = otlp_var("PROTOCOL") else {
        return Ok(Transport::HttpProtobuf);
    };
    match value.as_str() {
        "grpc" => Ok(Transport::Grpc),
        "http/protobuf" => Ok(Transport::HttpProtobuf),
        _ => Err(Error::Unsupported {
            variable,
            value,
            supported: "grpc, http/protobuf",
        }),
    }
}

/// One entry of `OTEL_TRACES_EXPORTER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExporterKind {
    Otlp,
    Console,
}

/// The exporters of `OTEL_TRACES_EXPORTER` (default `otlp`), without
/// duplicates; empty for `none`. Unknown names are skipped with a warning
/// that says what is used instead.
pub(super) fn exporters() -> Vec<ExporterKind> {
    let Ok(value) = std::env::var("OTEL_TRACES_EXPORTER") else {
        return vec![ExporterKind::Otlp];
    };
    let mut kinds = Vec::new();
    let mut none = false;
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let kind = match name {
            "otlp" => ExporterKind::Otlp,
            "console" => ExporterKind::Console,
            "none" => {
                none = true;
                continue;
            }
            other => {
                tracing::warn!(
                    exporter = other,
                    "OTEL_TRACES_EXPORTER names an exporter this build does not have \
                     (supported: otlp, console, none); skipped"
                );
                continue;
            }
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if none {
        return Vec::new();
    }
    if kinds.is_empty() {
        tracing::warn!(%value, "OTEL_TRACES_EXPORTER names no supported exporter; using otlp");
        kinds.push(ExporterKind::Otlp);
    }
    kinds
}

/// The PEM files of `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`,
/// `_CLIENT_CERTIFICATE` and `_CLIENT_KEY`.
#[derive(Debug, Default)]
pub(super) struct TlsFiles {
    /// Trusted certificate(s) to verify the collector with.
    pub(super) certificate: Option<PathBuf>,
    /// The client's certificate chain and key, for mutual TLS.
    pub(super) client: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    pub(super) fn from_env() -> Result<Self, Error> {
        let path = |setting| otlp_var(setting).map(|(_, value)| PathBuf::from(value));
        let client = match (path("CLIENT_CERTIFICATE"), path("CLIENT_KEY")) {
            (Some(certificate), Some(key)) => Some((certificate, key)),
            (None, None) => None,
            _ => {
                return Err(Error::Tls(
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY \
                     must be set together"
                        .into(),
                ))
            }
        };
        Ok(Self {
            certificate: path("CERTIFICATE"),
            client,
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.certificate.is_none() && self.client.is_none()
    }
}

/// The collector endpoint of `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`.
#[cfg(not(feature = "tls"))]
pub(super) fn endpoint() -> Option<String> {
    otlp_var("ENDPOINT").map(|(_, value)| value)
}

/// Reads a PEM file named by a variable, with the path in the error.
#[cfg(feature = "tls")]
pub(super) fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|error| Error::Tls(format!("reading {}: {error}", path.display())))
}

/// `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` in milliseconds (default 10 s), for
/// the HTTP client this module builds itself.
pub(super) fn export_timeout() -> std::time::Duration {
    otlp_var("TIMEOUT")
        .and_then(|(_, value)| value.parse().ok())
        .map_or(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis,
        )
}
