//! Mesh mode's naming: which host and port a service name stands for, and
//! the Kubernetes namespace its Service DNS name is in.
//!
//! A name is read in the Kubernetes resolver's target syntax,
//! `[k8s://]name[.namespace][:port]`, so that one name works with both:
//! with the `k8s://` prefix always, without it when the name fits (one
//! label, or two labels joined by a `.`); other names are hosts, used as
//! they are.

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

/// The prefix of the Kubernetes resolver's targets.
const K8S_SCHEME: &str = "k8s://";

/// Where the calls to one service go in mesh mode: the host the mesh routes
/// by (looked up in DNS) and the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The host without a trailing dot: the host of the `:authority`.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `host` is fully qualified (a Service DNS name made here, or a host
    /// given with a trailing dot): it is looked up with the trailing dot,
    /// so the resolver asks for it alone instead of trying the pod's search
    /// list first (Kubernetes sets `ndots:5`: a name with fewer dots goes
    /// through every search domain, several failed queries per lookup).
    pub(crate) fqdn: bool,
}

impl Target {
    /// `host:port`, the `:authority` a sidecar routes by (an IPv6 literal in
    /// brackets, no trailing dot).
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The name to look up in DNS: the host, with a trailing dot when it is
    /// fully qualified.
    pub(crate) fn lookup_name(&self) -> String {
        if self.fqdn {
            format!("{}.", self.host)
        } else {
            self.host.clone()
        }
    }
}

/// How service names become [`Target`]s: the builder's settings.
#[derive(Debug, Clone)]
pub(crate) struct Naming {
    pub(crate) namespace: String,
    /// Without a trailing dot.
    pub(crate) cluster_domain: String,
    pub(crate) default_port: Option<u16>,
    /// Port name → number, for named ports.
    pub(crate) named_ports: BTreeMap<String, u16>,
    /// Service name → `host[:port]` (hosts used as they are) or a
    /// `k8s://` target.
    pub(crate) routes: BTreeMap<String, String>,
}

/// A port as written: none, a number, or a Service port's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port<'a> {
    Unset,
    Number(u16),
    Name(&'a str),
}

/// What a name (or route) stands for, before its port is settled.
#[derive(Debug, PartialEq, Eq)]
enum Parsed<'a> {
    /// A Kubernetes Service; `None`: of the builder's namespace.
    Service {
        name: &'a str,
        namespace: Option<&'a str>,
        port: Port<'a>,
    },
    /// A host used as it is (an IP, or a DNS name; `fqdn`: it was written
    /// with a trailing dot, which `host` no longer has).
    Host {
        host: &'a str,
        fqdn: bool,
        port: Port<'a>,
    },
}

impl Naming {
    /// The target of `service`: its route if it has one, else `service`
    /// itself, read as [`parse`] says.
    ///
    /// # Errors
    ///
    /// [`Error::Config`], naming the target, for a name that is none of the
    /// forms, a port number that is not 1-65535, or a named port (or no
    /// port) where neither a mapping of that name nor a default port is set.
    pub(crate) fn target(&self, service: &str) -> Result<Target> {
        let (text, routed) = match self.routes.get(service) {
            Some(route) => (route.as_str(), true),
            None => (service, false),
        };
        let invalid = |reason: &str| {
            let through = if routed {
                format!(" (the route of {service:?})")
            } else {
                String::new()
            };
            Error::Config(format!("mesh mode: target {text:?}{through}: {reason}"))
        };
        let parsed = parse(text, routed).map_err(|reason| invalid(&reason))?;
        let (host, fqdn, port) = match parsed {
            Parsed::Service {
                name,
                namespace,
                port,
            } => (
                format!(
                    "{name}.{}.svc.{}",
                    namespace.unwrap_or(&self.namespace),
                    self.cluster_domain
                ),
                true,
                port,
            ),
            Parsed::Host { host, fqdn, port } => (host.to_owned(), fqdn, port),
        };
        let port = match port {
            Port::Number(number) => number,
            Port::Name(name) => self
                .named_ports
                .get(name)
                .copied()
                .or(self.default_port)
                .ok_or_else(|| {
                    invalid(&format!(
                        "port {name:?} is a name, and neither `.named_port({name:?}, ..)` \
                         nor `.port(..)` gives its number"
                    ))
                })?,
            Port::Unset => self
                .default_port
                .ok_or_else(|| invalid("no port, and no default port is set (`.port(..)`)"))?,
        };
        Ok(Target { host, port, fqdn })
    }
}

/// Reads `text`, a service name (`routed`: a route's target):
///
/// - `k8s://name[.namespace][:port]`: a Kubernetes Service, strictly in the
///   Kubernetes resolver's syntax (`name` an RFC 1035 label, `namespace`
///   an RFC 1123 label, the port a number or a port name);
/// - a route that is not `k8s://`: `host[:port]`, the host used as it is;
/// - `name` or `name.namespace` (the labels as above), with an optional
///   `:port`: a Kubernetes Service;
/// - anything else (an IP, `[v6]`, a name with two or more dots or that is
///   not two labels): `host[:port]`, the host used as it is. A host written
///   with a trailing dot (`example.com.`) is fully qualified; it is how a
///   one-dot host is told from `name.namespace`.
fn parse(text: &str, routed: bool) -> Result<Parsed<'_>, String> {
    if let Some(rest) = text.strip_prefix(K8S_SCHEME) {
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, parse_port(port)?),
            None => (rest, Port::Unset),
        };
        return service(host).map_or_else(
            || {
                Err(
                    "expected k8s://<service>[.<namespace>][:<port>], the service an \
                     RFC 1035 label and the namespace an RFC 1123 label"
                        .to_owned(),
                )
            },
            |(name, namespace)| {
                Ok(Parsed::Service {
                    name,
                    namespace,
                    port,
                })
            },
        );
    }
    let (host, port) = split_port(text)?;
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    if !routed && host.parse::<IpAddr>().is_err() {
        if let Some((name, namespace)) = service(host) {
            return Ok(Parsed::Service {
                name,
                namespace,
                port,
            });
        }
        if !host.contains('.') {
            return Err(
                "not a Kubernetes Service name (an RFC 1035 label: lowercase \
                 letters, digits and '-', starting with a letter); use `.route(..)` \
                 for a host"
                    .to_owned(),
            );
        }
    }
    let (host, fqdn) = match host.strip_suffix('.') {
        Some(bare) => (bare, true),
        None => (host, false),
    };
    if host.parse::<IpAddr>().is_ok() {
        return Ok(Parsed::Host {
            host,
            fqdn: false,
            port,
        });
    }
    if host.split('.').any(str::is_empty) {
        return Err("empty DNS label".to_owned());
    }
    Ok(Parsed::Host { host, fqdn, port })
}

/// `name` or `name.namespace`, when they are a Service name (an RFC 1035
/// label) and a namespace (an RFC 1123 label).
fn service(host: &str) -> Option<(&str, Option<&str>)> {
    let (name, namespace) = match host.split_once('.') {
        Some((name, namespace)) => (name, Some(namespace)),
        None => (host, None),
    };
    (is_rfc1035_label(name) && namespace.is_none_or(is_rfc1123_label)).then_some((name, namespace))
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address
/// (more than one `:`) has no port.
fn split_port(text: &str) -> Result<(&str, Port<'_>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed '['".to_owned())?;
        return match after {
            "" => Ok((host, Port::Unset)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, parse_port(port)?)),
                None => Err(format!("unexpected {after:?} after ']'")),
            },
        };
    }
    match text.split_once(':') {
        Some((host, port)) if !port.contains(':') => Ok((host, parse_port(port)?)),
        _ => Ok((text, Port::Unset)),
    }
}

/// A port number (1-65535) or a port name (an RFC 1123 label with a
/// letter, as Kubernetes names Service ports).
fn parse_port(text: &str) -> Result<Port<'_>, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .map(Port::Number)
            .ok_or_else(|| format!("port {text:?} is not 1-65535"));
    }
    if is_rfc1123_label(text) {
        Ok(Port::Name(text))
    } else {
        Err(format!("port {text:?} is neither a number nor a port name"))
    }
}

/// At most 63 lowercase letters, digits or `-`, starting and ending with a
/// letter or digit (a namespace, a port name).
fn is_rfc1123_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// An RFC 1123 label that starts with a letter (a Service name).
fn is_rfc1035_label(text: &str) -> bool {
    is_rfc1123_label(text) && text.as_bytes()[0].is_ascii_lowercase()
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
            rpc_ext_core::mesh::read_small_file(file, MAX)
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
            named_ports: BTreeMap::from([("grpc".to_owned(), 50051)]),
            routes: BTreeMap::from([
                ("echo-local".to_owned(), "localhost:50051".to_owned()),
                ("bare".to_owned(), "gateway".to_owned()),
                (
                    "billing".to_owned(),
                    "k8s://billing.payments:grpc".to_owned(),
                ),
                ("dotted".to_owned(), "internal.example.com.:443".to_owned()),
            ]),
        }
    }

    /// (lookup name, `mesh.authority`) of `service`.
    fn target(naming: &Naming, service: &str) -> (String, String) {
        let target = naming.target(service).unwrap();
        (target.lookup_name(), target.authority())
    }

    fn pair(lookup: &str, authority: &str) -> (String, String) {
        (lookup.to_owned(), authority.to_owned())
    }

    #[test]
    fn a_name_is_a_service_of_the_namespace_looked_up_fully_qualified() {
        let naming = naming(Some(8080));
        assert_eq!(
            target(&naming, "echo"),
            pair(
                "echo.prod.svc.cluster.local.",
                "echo.prod.svc.cluster.local:8080"
            )
        );
        assert_eq!(
            target(&naming, "echo:9000"),
            pair(
                "echo.prod.svc.cluster.local.",
                "echo.prod.svc.cluster.local:9000"
            )
        );
    }

    #[test]
    fn name_dot_namespace_is_the_service_in_that_namespace() {
        let naming = naming(Some(8080));
        assert_eq!(
            target(&naming, "echo.payments"),
            pair(
                "echo.payments.svc.cluster.local.",
                "echo.payments.svc.cluster.local:8080"
            )
        );
        assert_eq!(
            target(&naming, "echo.payments:9000"),
            pair(
                "echo.payments.svc.cluster.local.",
                "echo.payments.svc.cluster.local:9000"
            )
        );
    }

    #[test]
    fn the_kubernetes_resolvers_targets_are_read_as_it_reads_them() {
        let naming = naming(Some(8080));
        for (service, expected) in [
            (
                "k8s://echo.payments:9000",
                pair(
                    "echo.payments.svc.cluster.local.",
                    "echo.payments.svc.cluster.local:9000",
                ),
            ),
            // A named port: its mapping.
            (
                "k8s://echo.payments:grpc",
                pair(
                    "echo.payments.svc.cluster.local.",
                    "echo.payments.svc.cluster.local:50051",
                ),
            ),
            // A named port without a mapping, or no port: the default.
            (
                "k8s://echo:http",
                pair(
                    "echo.prod.svc.cluster.local.",
                    "echo.prod.svc.cluster.local:8080",
                ),
            ),
            (
                "k8s://echo",
                pair(
                    "echo.prod.svc.cluster.local.",
                    "echo.prod.svc.cluster.local:8080",
                ),
            ),
            // Without the prefix, the same.
            (
                "echo.payments:grpc",
                pair(
                    "echo.payments.svc.cluster.local.",
                    "echo.payments.svc.cluster.local:50051",
                ),
            ),
            (
                "echo:http",
                pair(
                    "echo.prod.svc.cluster.local.",
                    "echo.prod.svc.cluster.local:8080",
                ),
            ),
        ] {
            assert_eq!(target(&naming, service), expected, "{service}");
        }
    }

    #[test]
    fn a_named_port_without_a_number_is_a_config_error_naming_the_target() {
        let no_default = naming(None);
        for service in ["k8s://echo.prod:http", "echo:http", "k8s://echo", "echo"] {
            let error = no_default.target(service).unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{service}: {error}");
            assert!(
                error.to_string().contains(&format!("{service:?}")),
                "{error}"
            );
        }
        // A mapped name needs no default.
        assert_eq!(
            no_default.target("k8s://echo.prod:grpc").unwrap().port,
            50051
        );
    }

    #[test]
    fn other_hosts_and_ips_are_used_as_they_are() {
        let naming = naming(Some(8080));
        assert_eq!(
            target(&naming, "api.example.com:443"),
            pair("api.example.com", "api.example.com:443")
        );
        assert_eq!(
            target(&naming, "api.example.com"),
            pair("api.example.com", "api.example.com:8080")
        );
        // A trailing dot: fully qualified, kept for the lookup only.
        assert_eq!(
            target(&naming, "example.com.:443"),
            pair("example.com.", "example.com:443")
        );
        // One dot, but not two labels: a host.
        assert_eq!(
            target(&naming, "My_Host.lan:81"),
            pair("My_Host.lan", "My_Host.lan:81")
        );
        assert_eq!(
            target(&naming, "10.0.0.7:81"),
            pair("10.0.0.7", "10.0.0.7:81")
        );
        assert_eq!(target(&naming, "[::1]:82"), pair("::1", "[::1]:82"));
        assert_eq!(target(&naming, "::1"), pair("::1", "[::1]:8080"));
    }

    #[test]
    fn a_route_wins_and_its_host_is_used_as_is() {
        let naming = naming(Some(8080));
        assert_eq!(
            target(&naming, "echo-local"),
            pair("localhost", "localhost:50051")
        );
        assert_eq!(target(&naming, "bare"), pair("gateway", "gateway:8080"));
        assert_eq!(
            target(&naming, "dotted"),
            pair("internal.example.com.", "internal.example.com:443")
        );
        // A route may be a Kubernetes target.
        assert_eq!(
            target(&naming, "billing"),
            pair(
                "billing.payments.svc.cluster.local.",
                "billing.payments.svc.cluster.local:50051"
            )
        );
    }

    #[test]
    fn unusable_names_are_config_errors() {
        let naming = naming(Some(8080));
        for service in [
            "echo:0",
            "echo:70000",
            "echo:Grpc",
            "echo:-x",
            ":80",
            "[::1",
            "[::1]x",
            // Not a Service name, and no dot to make it a host.
            "Echo",
            "echo_v1",
            "1echo",
            // The prefix takes the Kubernetes syntax only.
            "k8s://",
            "k8s://echo.prod.svc:80",
            "k8s://Echo:80",
            "k8s://10.0.0.7:80",
            "k8s://echo.prod:0",
            "example..com",
            ".",
        ] {
            let error = naming.target(service).unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{service}: {error}");
            assert!(
                error.to_string().contains(&format!("{service:?}")),
                "{error}"
            );
        }
    }

    #[test]
    fn the_authority_brackets_ipv6() {
        let v6 = Target {
            host: "::1".to_owned(),
            port: 80,
            fqdn: false,
        };
        assert_eq!(v6.authority(), "[::1]:80");
        assert_eq!(v6.lookup_name(), "::1");
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
