//! `k8s://<service>.<namespace>:<port>` targets.

use crate::Error;

/// Which port of the Service to use, as in the Service's spec.
///
/// EndpointSlices carry each Service port's *name* with the *target* port
/// number the pods listen on; the Service port's own number is in the
/// Service object only. So a name is looked up in the slices directly,
/// while a number is first mapped to its port's name by reading the
/// Service (RBAC: `get` on `services`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// The Service port of this name: the slice port of the same name.
    Name(String),
    /// The Service port with this number (`port` in the Service's spec, for
    /// example 80 of a Service mapping 80 to target port 8080): resolved to
    /// the port's name through the Service, then to the slice port of that
    /// name (so to 8080).
    Number(u16),
}

/// A parsed resolver target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The Service name.
    pub service: String,
    /// The namespace; `None` means the client's default.
    pub namespace: Option<String>,
    /// The port.
    pub port: PortSpec,
}

impl Target {
    /// Parses `k8s://echo.default:grpc`, `echo.default:50051` or `echo:grpc`.
    ///
    /// ```
    /// use rpc_ext_registry::k8s::{PortSpec, Target};
    ///
    /// let target = Target::parse("k8s://echo.prod:grpc").unwrap();
    /// assert_eq!(target.service, "echo");
    /// assert_eq!(target.namespace.as_deref(), Some("prod"));
    /// assert_eq!(target.port, PortSpec::Name("grpc".into()));
    /// assert!(Target::parse("k8s://no-port").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, Error> {
        let invalid = |why: &str| Error::Config(format!("k8s target {text:?}: {why}"));
        let rest = text.strip_prefix("k8s://").unwrap_or(text);
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| invalid("expected <service>.<namespace>:<port>"))?;
        let (service, namespace) = match host.split_once('.') {
            Some((service, namespace)) => (service, Some(namespace)),
            None => (host, None),
        };
        let valid_name = |name: &str| {
            !name.is_empty()
                && name.len() <= 253
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        if !valid_name(service) || namespace.is_some_and(|ns| !valid_name(ns) || ns.contains('.')) {
            return Err(invalid("service and namespace must be DNS labels"));
        }
        let port = match port.parse::<u16>() {
            Ok(0) => return Err(invalid("port 0")),
            Ok(number) => PortSpec::Number(number),
            Err(_) if valid_name(port) => PortSpec::Name(port.to_owned()),
            Err(_) => return Err(invalid("port must be a name or a number")),
        };
        Ok(Self {
            service: service.to_owned(),
            namespace: namespace.map(str::to_owned),
            port,
        })
    }
}

/// Whether `name` can name a Service: an RFC 1035 label (at most 63
/// lowercase alphanumerics or `-`, starting with a letter, ending with an
/// alphanumeric), which the API server requires of Service names. It also
/// makes a valid `kubernetes.io/service-name` label value.
pub(crate) fn is_service_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_rfc_1035_labels() {
        for good in ["echo", "e", "echo-volo", "a1", &"a".repeat(63)] {
            assert!(is_service_name(good), "{good}");
        }
        for bad in [
            "",
            "Echo",
            "1echo",
            "echo-",
            "echo.v1",
            "echo_v1",
            &"a".repeat(64),
        ] {
            assert!(!is_service_name(bad), "{bad}");
        }
    }
}
