//! `k8s://<service>.<namespace>:<port>` targets.

use crate::Error;

/// Which port of the endpoints to use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// The EndpointSlice port of this name (the Service port's name).
    Name(String),
    /// This port number: the slice port with this number, else this number
    /// on every endpoint address.
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
