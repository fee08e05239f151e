//! Calls left out of the metrics on request: gRPC health checks
//! ([`RpcMetricsBuilder::skip_health_checks`]) and listed HTTP routes
//! ([`RpcMetricsBuilder::skip_http_routes`]).
//!
//! [`RpcMetricsBuilder::skip_health_checks`]: crate::RpcMetricsBuilder::skip_health_checks
//! [`RpcMetricsBuilder::skip_http_routes`]: crate::RpcMetricsBuilder::skip_http_routes

use crate::{Call, RpcSystem, Side, OTHER};

/// The service of the standard gRPC health checks: a call of any of its
/// methods is what [`rpc_ext_core::semconv::is_grpc_health`] recognizes.
const GRPC_HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// What is left out. Exists only when something is: a process that skips
/// nothing pays one pointer test per call.
#[derive(Debug)]
pub(crate) struct Skips {
    health_checks: bool,
    /// The route templates of HTTP server calls left out.
    routes: Box<[Box<str>]>,
    /// The templates without parameters: what a request path is compared
    /// with before routing.
    paths: Box<[Box<str>]>,
}

impl Skips {
    /// `None` when nothing is left out.
    pub(crate) fn new(health_checks: bool, routes: &[Box<str>]) -> Option<Self> {
        if !health_checks && routes.is_empty() {
            return None;
        }
        let paths = routes
            .iter()
            .filter(|route| !has_parameters(route))
            .cloned()
            .collect();
        Some(Self {
            health_checks,
            routes: routes.into(),
            paths,
        })
    }

    /// Whether `call` records nothing: a gRPC health check, when those are
    /// left out, or an HTTP server call whose route template is listed
    /// (never `_OTHER`, the route of a call no route matched).
    #[inline(never)]
    pub(crate) fn call(&self, call: &Call<'_>) -> bool {
        match call.system {
            RpcSystem::Grpc => {
                self.health_checks && call.service == GRPC_HEALTH_SERVICE && !call.method.is_empty()
            }
            RpcSystem::Http => {
                call.side == Side::Server
                    && call.service != OTHER
                    && self.routes.iter().any(|route| **route == *call.service)
            }
            RpcSystem::Thrift => false,
        }
    }

    /// Whether an HTTP server request with this path is left out before
    /// routing: the path is a listed template without parameters.
    #[cfg_attr(not(any(feature = "tower", feature = "volo")), allow(dead_code))]
    pub(crate) fn path(&self, path: &str) -> bool {
        self.paths.iter().any(|listed| **listed == *path)
    }
}

/// Whether a route template has parameters (`/users/{id}`, `/files/*rest`,
/// `/users/:id`), as `rpc-ext-tracing` tells them.
fn has_parameters(route: &str) -> bool {
    route.contains(['{', '*', ':'])
}

#[cfg(test)]
mod tests {
    use rpc_ext_core::semconv::is_grpc_health;

    use super::*;

    #[test]
    fn health_checks_are_what_the_tracing_side_leaves_out() {
        let skips = Skips::new(true, &[]).unwrap();
        for (service, method) in [
            ("grpc.health.v1.Health", "Check"),
            ("grpc.health.v1.Health", "Watch"),
            ("grpc.health.v1.Health", "List"),
            ("grpc.health.v1.Health", ""),
            ("grpc.health.v1.HealthX", "Check"),
            ("echo.Echo", "Say"),
        ] {
            let call = Call::rpc(Side::Server, RpcSystem::Grpc, service, method);
            assert_eq!(
                skips.call(&call),
                is_grpc_health(&format!("{service}/{method}")),
                "{service}/{method}"
            );
            let client = Call::rpc(Side::Client, RpcSystem::Grpc, service, method);
            assert_eq!(skips.call(&client), skips.call(&call));
        }
        let thrift = Call::rpc(
            Side::Server,
            RpcSystem::Thrift,
            GRPC_HEALTH_SERVICE,
            "Check",
        );
        assert!(!skips.call(&thrift));
    }

    #[test]
    fn routes_are_left_out_on_servers_and_paths_only_without_parameters() {
        let routes = ["/healthz", "/debug/{name}", "/files/*rest", "/u/:id", OTHER].map(Box::from);
        let skips = Skips::new(false, &routes).unwrap();
        let get = Call::http(Side::Server, &http::Method::GET);
        assert!(skips.call(&get.route("/healthz")));
        assert!(skips.call(&get.route("/debug/{name}")));
        assert!(!skips.call(&get.route("/orders")));
        // No route matched: `_OTHER` is never left out.
        assert!(!skips.call(&get));
        // Clients have no route.
        let client = Call::http(Side::Client, &http::Method::GET).route("/healthz");
        assert!(!skips.call(&client));
        // gRPC health checks are recorded unless asked.
        let health = Call::rpc(Side::Server, RpcSystem::Grpc, GRPC_HEALTH_SERVICE, "Check");
        assert!(!skips.call(&health));

        assert!(skips.path("/healthz"));
        assert!(!skips.path("/debug/{name}"));
        assert!(!skips.path("/debug/x"));
        assert!(!skips.path("/healthz/"));
        assert!(Skips::new(false, &[]).is_none());
    }
}
