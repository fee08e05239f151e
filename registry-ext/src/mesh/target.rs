//! Mesh mode's naming: which host and port a service name stands for, and
//! the Kubernetes namespace its Service DNS name is in.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use crate::{Error, Result};

/// Environment variable naming the pod's namespace (the Downward API's
/// `metadata.namespace`, set with `valueFrom.fieldRef`).
pub const NAMESPACE_ENV: &str = "POD_NAMESPACE";

/// The file Kubernetes mounts in every pod with a service account token,
/// holding the pod's namespace; read when [`NAMESPACE_ENV`] is unset.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The namespace used when neither [`NAMESPACE_ENV`] nor
/// [`SERVICE_ACCOUNT_NAMESPACE`] gives one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The cluster's DNS domain unless set: Kubernetes' default.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Where the calls to one service go in mesh mode: the host the mesh routes
/// by (looked up in DNS) and the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Target {
    /// `host:port`, the `:authority` a sidecar routes by (an IPv6 literal in
    /// brackets).
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// How service names become [`Target`]s: the builder's settings.
#[derive(Debug, Clone)]
pub(crate) struct Naming {
    pub(crate) namespace: String,
    pub(crate) cluster_domain: String,
    pub(crate) default_port: Option<u16>,
    /// Service name → `host[:port]`, hosts used as they are.
    pub(crate) routes: BTreeMap<String, String>,
}

impl Naming {
    /// The target of `service`: its route if it has one, else `service`
    /// as `name[:port]`, where a name without a `.` (and not an IP) is a
    /// Kubernetes Service of the namespace.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty host, a port that is not 1-65535, or
    /// no port where no default port is set.
    pub(crate) fn target(&self, service: &str) -> Result<Target> {
        let (text, routed) = match self.routes.get(service) {
            Some(route) => (route.as_str(), true),
            None => (service, false),
        };
        let (host, port) = split_port(text).map_err(|reason| {
            Error::Config(format!(
                "mesh mode: cannot route {service:?} to {text:?}: {reason}"
            ))
        })?;
        if host.is_empty() {
            return Err(Error::Config(format!(
                "mesh mode: cannot route {service:?} to {text:?}: no host"
            )));
        }
        let port = port.or(self.default_port).ok_or_else(|| {
            Error::Config(format!(
                "mesh mode: {text:?} has no port and no default port is set \
                 (MeshAware::builder(..).port(..))"
            ))
        })?;
        let host = if routed || host.contains('.') || host.parse::<IpAddr>().is_ok() {
            host.to_owned()
        } else {
            format!("{host}.{}.svc.{}", self.namespace, self.cluster_domain)
        };
        Ok(Target { host, port })
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address
/// (more than one `:`) has no port.
fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed '['".to_owned())?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(parse_port(port)?))),
                None => Err(format!("unexpected {after:?} after ']'")),
            },
        };
    }
    match text.split_once(':') {
        Some((host, port)) if !port.contains(':') => Ok((host, Some(parse_port(port)?))),
        _ => Ok((text, None)),
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("port {text:?} is not 1-65535"))
}

/// The pod's namespace: `env(NAMESPACE_ENV)`, else the first line of the
/// service-account file at `file`, else [`DEFAULT_NAMESPACE`].
pub(crate) fn namespace_from(env: &dyn Fn(&str) -> Option<String>, file: &Path) -> String {
    // A namespace is a DNS label (at most 63 bytes): a larger file is not
    // the one Kubernetes mounts and is not read.
    const MAX: u64 = 256;
    let from_env = env(NAMESPACE_ENV).map(|value| value.trim().to_owned());
    from_env
        .filter(|value| !value.is_empty())
        .or_else(|| {
            let small = std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.len() <= MAX);
            small
                .then(|| std::fs::read_to_string(file).ok())
                .flatten()
                .map(|text| text.trim().to_owned())
                .filter(|value| !value.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming(default_port: Option<u16>) -> Naming {
        Naming {
            namespace: "prod".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            default_port,
            routes: BTreeMap::from([
                ("echo-local".to_owned(), "localhost:50051".to_owned()),
                ("bare".to_owned(), "gateway".to_owned()),
            ]),
        }
    }

    fn target(naming: &Naming, service: &str) -> (String, u16) {
        let target = naming.target(service).unwrap();
        (target.host, target.port)
    }

    #[test]
    fn a_service_name_becomes_its_kubernetes_service_dns_name() {
        let naming = naming(Some(8080));
        assert_eq!(
            target(&naming, "echo"),
            ("echo.prod.svc.cluster.local".to_owned(), 8080)
        );
        assert_eq!(
            target(&naming, "echo:9000"),
            ("echo.prod.svc.cluster.local".to_owned(), 9000)
        );
    }

    #[test]
    fn a_host_with_a_dot_or_an_ip_is_used_as_is() {
        let naming = naming(Some(8080));
        assert_eq!(
            target(&naming, "echo.other"),
            ("echo.other".to_owned(), 8080)
        );
        assert_eq!(
            target(&naming, "api.example.com:443"),
            ("api.example.com".to_owned(), 443)
        );
        assert_eq!(target(&naming, "10.0.0.7:81"), ("10.0.0.7".to_owned(), 81));
        assert_eq!(target(&naming, "[::1]:82"), ("::1".to_owned(), 82));
        assert_eq!(target(&naming, "::1"), ("::1".to_owned(), 8080));
    }

    #[test]
    fn a_route_wins_and_its_host_is_used_as_is() {
        let naming = naming(Some(8080));
        assert_eq!(
            target(&naming, "echo-local"),
            ("localhost".to_owned(), 50051)
        );
        assert_eq!(target(&naming, "bare"), ("gateway".to_owned(), 8080));
    }

    #[test]
    fn unusable_names_are_config_errors() {
        let no_default = naming(None);
        for service in [
            "echo",
            "bare",
            "echo:0",
            "echo:http",
            "echo:70000",
            ":80",
            "[::1",
            "[::1]x",
        ] {
            let error = no_default.target(service).unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{service}: {error}");
        }
        assert!(no_default.target("echo:80").is_ok());
    }

    #[test]
    fn the_authority_brackets_ipv6() {
        let v4 = Target {
            host: "echo.prod.svc.cluster.local".to_owned(),
            port: 80,
        };
        assert_eq!(v4.authority(), "echo.prod.svc.cluster.local:80");
        let v6 = Target {
            host: "::1".to_owned(),
            port: 80,
        };
        assert_eq!(v6.authority(), "[::1]:80");
    }

    #[test]
    fn the_namespace_comes_from_the_env_then_the_service_account_then_default() {
        let file = std::env::temp_dir().join(format!("rpc-ext-mesh-ns-{}", std::process::id()));
        std::fs::write(&file, "staging\n").unwrap();
        let pod_namespace = |name: &str| (name == NAMESPACE_ENV).then(|| "prod".to_owned());
        let nothing = |_: &str| None;
        assert_eq!(namespace_from(&pod_namespace, &file), "prod");
        assert_eq!(namespace_from(&nothing, &file), "staging");
        let missing = Path::new("/nonexistent/namespace");
        assert_eq!(namespace_from(&nothing, missing), DEFAULT_NAMESPACE);
        std::fs::write(&file, "x".repeat(1000)).unwrap();
        assert_eq!(
            namespace_from(&nothing, &file),
            DEFAULT_NAMESPACE,
            "oversize file"
        );
        std::fs::remove_file(&file).unwrap();
    }
}
