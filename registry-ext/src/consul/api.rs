//! The few Consul HTTP API calls this backend makes, and their JSON.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::{
    builder::Check,
    health::{decode_health_sharing, decode_index, INDEX_HEADER},
    meta::{encode_tags, REGISTRATION_META, WEIGHT_META},
    ConsulBuilder, BACKEND,
};
use crate::{Error, Instance, Result};

/// The header a health answer carries when the token's ACLs removed entries
/// from it (sent only to requests with a token: the server masks it for
/// anonymous ones).
pub(crate) const FILTERED_BY_ACLS_HEADER: &str = "X-Consul-Results-Filtered-By-ACLs";
/// The largest DNS weight Consul accepts in `Weights` (`structs.ValidateWeights`).
const MAX_CONSUL_WEIGHT: u32 = 65535;

pub(crate) struct Api {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    namespace: Option<String>,
    partition: Option<String>,
    datacenter: Option<String>,
    pub(crate) request_timeout: Duration,
}

/// The body of `PUT /v1/agent/service/register`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Registration {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) tags: Vec<String>,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) weights: Weights,
    pub(crate) check: CheckDefinition,
    /// This registration's id, also in `meta` under [`REGISTRATION_META`].
    #[serde(skip)]
    pub(crate) registration: String,
}

/// The part of `GET /v1/agent/service/<id>` this crate reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AgentService {
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

impl AgentService {
    /// The registration id in the service's Meta, if any.
    pub(crate) fn registration(&self) -> Option<&str> {
        self.meta
            .as_ref()?
            .get(REGISTRATION_META)
            .map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Weights {
    pub(crate) passing: u32,
    #[serde(default)]
    pub(crate) warning: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CheckDefinition {
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    http: Option<String>,
    #[serde(rename = "GRPC", skip_serializing_if = "Option::is_none")]
    grpc: Option<String>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    tcp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    status: &'static str,
    deregister_critical_service_after: String,
}

fn go_duration(duration: Duration) -> String {
    format!("{}ms", duration.as_millis().max(1))
}

impl CheckDefinition {
    pub(crate) fn new(check: &Check, deregister_after: Duration) -> Self {
        let mut definition = Self {
            ttl: None,
            http: None,
            grpc: None,
            tcp: None,
            interval: None,
            // Passing from the start, so the instance is usable at once.
            status: "passing",
            deregister_critical_service_after: go_duration(deregister_after),
        };
        match check {
            Check::Ttl { ttl } => definition.ttl = Some(go_duration(*ttl)),
            Check::Http { url, interval } => {
                definition.http = Some(url.clone());
                definition.interval = Some(go_duration(*interval));
            }
            Check::Grpc { target, interval } => {
                definition.grpc = Some(target.clone());
                definition.interval = Some(go_duration(*interval));
            }
            Check::Tcp { target, interval } => {
                definition.tcp = Some(target.clone());
                definition.interval = Some(go_duration(*interval));
            }
        }
        definition
    }
}

/// Refuses a name Consul's HTTP API could not address. The agent decodes the
/// whole path before routing it (Go's `net/http`), so a `/` inside a name
/// works, but a path that cleans to another one (an empty, `.` or `..`
/// segment: `/a`, `a/`, `a//b`, `a/../b`, `..`) is answered with a redirect, and
/// the instance could be neither resolved nor deregistered
/// (hashicorp/consul#1096, #2813).
fn check_service_name(name: &str) -> Result<()> {
    if name.split('/').any(|s| matches!(s, "" | "." | "..")) {
        return Err(Error::InvalidInstance(format!(
            "service name {name:?} cannot be used with Consul: split at '/', no part may be \
             empty, '.' or '..'"
        )));
    }
    Ok(())
}

/// The service ID: `<service>-<ip>-<port>`, the same for the same instance in
/// every process (a successor replaces its predecessor's entry, see
/// `REGISTRATION_META`). IDs never hold a `/`: agents answer a deregistration
/// of such an ID with a redirect (hashicorp/consul#2813). A name with a `/`
/// therefore gets it replaced and a hash of the exact name appended, so that
/// `a/b` and `a-b` on one address stay two services.
fn service_id(service: &str, address: std::net::SocketAddr) -> String {
    let id =
        format!("{service}-{}-{}", address.ip(), address.port()).replace([':', '[', ']', '/'], "-");
    if service.contains('/') {
        format!("{id}-{:08x}", crate::instance::stable_hash(service) as u32)
    } else {
        id
    }
}

impl Registration {
    /// The registration of `instance`, or [`Error::InvalidInstance`] if its
    /// tags cannot be stored in Consul's service `Meta` (see `meta.rs`):
    /// refused here, before any request, rather than with an HTTP 400.
    pub(crate) fn of(
        instance: &Instance,
        check: &Check,
        deregister_after: Duration,
    ) -> Result<Self> {
        check_service_name(&instance.service)?;
        let address = instance.address;
        let registration = crate::instance::registration_id();
        let mut meta = encode_tags(&instance.tags)?;
        meta.insert(WEIGHT_META.to_owned(), instance.weight.to_string());
        meta.insert(REGISTRATION_META.to_owned(), registration.clone());
        Ok(Self {
            id: service_id(&instance.service, address),
            name: instance.service.to_string(),
            address: address.ip().to_string(),
            port: address.port(),
            tags: instance
                .tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            meta,
            // Consul's DNS weights are 1 to 65535; the exact weight, 0
            // included, is in the Meta.
            weights: Weights {
                passing: instance.weight.clamp(1, MAX_CONSUL_WEIGHT),
                warning: 1,
            },
            check: CheckDefinition::new(check, deregister_after),
            registration,
        })
    }

    /// The ID Consul gives the check of a service registered with one check.
    pub(crate) fn check_id(&self) -> String {
        format!("service:{}", self.id)
    }
}

/// How long the client waits for a blocking query with this `wait`: the
/// server answers after `wait` plus up to `wait/16` of jitter at the latest
/// (`RPCQueryTimeout`), and the answer needs time to arrive.
pub(crate) fn blocking_timeout(wait: Duration, request_timeout: Duration) -> Duration {
    wait + wait / 16 + request_timeout.max(Duration::from_secs(1))
}

/// What the agent said to a TTL pass.
pub(crate) enum Pass {
    Passed,
    /// The agent does not know the check: it forgot the service.
    Unknown,
}

/// Whether the body of an HTTP 500 to a TTL pass says the agent does not
/// know the check (what agents before 404s for unknown checks answer).
fn lost_check(body: &str) -> bool {
    let body = body.to_ascii_lowercase();
    body.contains("does not have associated ttl")
        || body.contains("unknown check")
        || body.contains("does not exist")
}

impl Api {
    pub(crate) fn new<T>(
        builder: &ConsulBuilder<T>,
        base: String,
        token: Option<String>,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(builder.request_timeout)
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        let base = Url::parse(&base)
            .ok()
            .filter(|url| !url.cannot_be_a_base())
            .ok_or_else(|| Error::Config(format!("invalid Consul address {base:?}")))?;
        Ok(Self {
            http,
            base,
            token,
            namespace: builder.namespace.clone(),
            partition: builder.partition.clone(),
            datacenter: builder.datacenter.clone(),
            request_timeout: builder.request_timeout,
        })
    }

    /// The URL of `path` under the agent's address. Each segment is
    /// percent-encoded, so a `/`, `?`, `#` or `%` in a service name or ID
    /// stays inside its segment, as Consul expects.
    fn url(&self, path: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in Api::new: the address can be a base")
            .pop_if_empty()
            .extend(path);
        url
    }

    fn request(&self, method: Method, path: &[&str], timeout: Duration) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, self.url(path)).timeout(timeout);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        let mut query = Vec::new();
        if let Some(ns) = &self.namespace {
            query.push(("ns", ns.as_str()));
        }
        if let Some(partition) = &self.partition {
            query.push(("partition", partition.as_str()));
        }
        request.query(&query)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        request.send().await.map_err(|e| {
            if e.is_timeout() {
                Error::Timeout {
                    backend: BACKEND,
                    timeout: self.request_timeout,
                }
            } else {
                Error::backend(BACKEND, e)
            }
        })
    }

    /// The response if it is a success; else the error it says. A 403 is an
    /// [`Error::PermissionDenied`]: the agent answers it to a token it does
    /// not know ("ACL not found") and to one whose policy does not allow the
    /// request ("Permission denied: token with AccessorID … lacks permission
    /// 'service:write' on …"), neither of which retrying mends.
    async fn expect_success(response: reqwest::Response, what: &str) -> Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let body: String = body.trim().chars().take(200).collect();
        if status == StatusCode::FORBIDDEN {
            return Err(Error::PermissionDenied {
                backend: BACKEND,
                operation: what.to_owned(),
                reason: format!(
                    "HTTP 403: {body} (check the ACL token and that its policy grants \
                     service:write on the service to register it, service:read and node:read \
                     to resolve it)"
                ),
            });
        }
        Err(Error::backend(
            BACKEND,
            format!("{what}: HTTP {status}: {body}"),
        ))
    }

    pub(crate) async fn register(&self, registration: &Registration) -> Result<()> {
        let request = self
            .request(
                Method::PUT,
                &["v1", "agent", "service", "register"],
                self.request_timeout,
            )
            .query(&[("replace-existing-checks", "true")])
            .json(registration);
        let response = self.send(request).await?;
        Self::expect_success(response, "register").await.map(drop)
    }

    pub(crate) async fn deregister(&self, id: &str) -> Result<()> {
        let path = ["v1", "agent", "service", "deregister", id];
        let response = self
            .send(self.request(Method::PUT, &path, self.request_timeout))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(()); // already gone
        }
        Self::expect_success(response, "deregister").await.map(drop)
    }

    pub(crate) async fn pass(&self, check_id: &str) -> Result<Pass> {
        let path = ["v1", "agent", "check", "pass", check_id];
        let response = self
            .send(self.request(Method::PUT, &path, self.request_timeout))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(Pass::Unknown);
        }
        // Older agents answer 500 for a check they lost: `CheckID "…" does
        // not have associated TTL` (no ACLs) or "Unknown check …". Either way
        // the check this crate registered as a TTL check is gone, and
        // registering the service again restores it.
        if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
            let body = response.text().await.unwrap_or_default();
            if lost_check(&body) {
                return Ok(Pass::Unknown);
            }
            return Err(Error::backend(
                BACKEND,
                format!("TTL pass: HTTP 500: {body}"),
            ));
        }
        Self::expect_success(response, "TTL pass")
            .await
            .map(|_| Pass::Passed)
    }

    /// Whether the agent still has service `id` (for agent-run checks).
    pub(crate) async fn has_service(&self, id: &str) -> Result<bool> {
        self.agent_service(id).await.map(|s| s.is_some())
    }

    /// The agent's service `id` (`GET /v1/agent/service/<id>`), `None` if
    /// the agent does not have it.
    pub(crate) async fn agent_service(&self, id: &str) -> Result<Option<AgentService>> {
        let path = ["v1", "agent", "service", id];
        let response = self
            .send(self.request(Method::GET, &path, self.request_timeout))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = Self::expect_success(response, "service lookup").await?;
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::backend(BACKEND, e))?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| Error::Decode {
                key: format!("/v1/agent/service/{id}"),
                reason: e.to_string(),
            })
    }

    /// One (blocking, when `index` > 0) health query: the passing instances
    /// of `service` and the index to wait on next.
    ///
    /// `wait` must be positive and whole milliseconds or more (the resolver
    /// keeps it within [1 s, 10 min]): the server reads `wait=0ms` as its
    /// default of 5 minutes, not as "answer now".
    pub(crate) async fn healthy(
        &self,
        service: &Arc<str>,
        tags: &[String],
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<Instance>, u64)> {
        let path = format!("/v1/health/service/{service}");
        let segments = ["v1", "health", "service", &**service];
        let mut request = if index > 0 {
            self.request(
                Method::GET,
                &segments,
                blocking_timeout(wait, self.request_timeout),
            )
            .query(&[
                ("index", index.to_string()),
                ("wait", format!("{}ms", wait.as_millis().max(1))),
            ])
        } else {
            self.request(Method::GET, &segments, self.request_timeout)
        };
        request = request.query(&[("passing", "true")]);
        if let Some(dc) = &self.datacenter {
            request = request.query(&[("dc", dc)]);
        }
        for tag in tags {
            request = request.query(&[("tag", tag)]);
        }
        let response = Self::expect_success(self.send(request).await?, "health query").await?;
        if response
            .headers()
            .get(FILTERED_BY_ACLS_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
        {
            return Err(Error::PermissionDenied {
                backend: BACKEND,
                operation: "health query".to_owned(),
                reason: format!(
                    "the answer for {service:?} was filtered by ACLs ({FILTERED_BY_ACLS_HEADER}): \
                     the token lacks service:read on the service or node:read on some of its \
                     nodes, so the instances it shows are not all there are"
                ),
            });
        }
        let next_index = decode_index(
            &path,
            response
                .headers()
                .get(INDEX_HEADER)
                .map(reqwest::header::HeaderValue::as_bytes),
        )?;
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::backend(BACKEND, e))?;
        Ok((
            decode_health_sharing(&path, &body, Some(service))?,
            next_index,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::ConsulResolver;

    #[test]
    fn registrations_hold_what_agents_accept() {
        let check = Check::Ttl {
            ttl: Duration::from_secs(10),
        };
        let instance = Instance::new("echo", "10.0.0.1:80".parse().unwrap())
            .with_weight(100_000)
            .with_tag("weight", "heavy")
            .with_tag("app.kubernetes.io/name", "echo")
            .with_tag("zone", "a");
        let body = Registration::of(&instance, &check, Duration::from_secs(60)).unwrap();
        assert_eq!(body.weights.passing, MAX_CONSUL_WEIGHT);
        assert_eq!(body.meta[WEIGHT_META], "100000", "the exact weight");
        assert_eq!(body.meta[REGISTRATION_META], body.registration);
        assert_eq!(
            body.meta["__weight"], "heavy",
            "a tag cannot shadow the weight"
        );
        assert_eq!(body.meta["__app_2Ekubernetes_2Eio_2Fname"], "echo");
        assert_eq!(body.meta["zone"], "a");
        assert!(body.meta.keys().all(|k| crate::consul::meta::valid_key(k)));
        assert!(body
            .tags
            .contains(&"app.kubernetes.io/name=echo".to_owned()));
        let zero = Registration::of(&instance.clone().with_weight(0), &check, Duration::ZERO);
        assert_eq!(zero.unwrap().weights.passing, 1);

        let too_long = instance.with_tag("k", "v".repeat(513));
        assert!(matches!(
            Registration::of(&too_long, &check, Duration::ZERO),
            Err(Error::InvalidInstance(_))
        ));
    }

    #[test]
    fn slashes_stay_out_of_ids_and_names_keep_apart() {
        let at = "127.0.0.1:8001".parse().unwrap();
        assert_eq!(service_id("echo", at), "echo-127.0.0.1-8001");
        assert_eq!(
            service_id("echo", "[::1]:8001".parse().unwrap()),
            "echo---1-8001"
        );
        let slashed = service_id("a/b", at);
        assert!(slashed.starts_with("a-b-127.0.0.1-8001-"), "{slashed}");
        assert!(!slashed.contains('/'));
        assert_ne!(slashed, service_id("a-b", at));
        assert_eq!(slashed, service_id("a/b", at), "stable across calls");
    }

    #[test]
    fn names_consul_cannot_route_are_refused() {
        for good in ["echo", "a/b", "team/payments/api", "a?c#d", "a.b/c.d"] {
            assert!(check_service_name(good).is_ok(), "{good}");
        }
        for bad in ["/a", "a/", "a//b", "a/./b", "a/../b", "/", "..", "."] {
            assert!(
                matches!(check_service_name(bad), Err(Error::InvalidInstance(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn old_agents_lost_check_answers_are_recognised() {
        assert!(lost_check(
            r#"CheckID "service:echo-127.0.0.1-8001" does not have associated TTL"#
        ));
        assert!(lost_check(r#"Unknown check "service:echo""#));
        assert!(!lost_check("rpc error: No cluster leader"));
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        let builder = ConsulResolver::builder();
        for base in ["http://127.0.0.1:8500", "http://127.0.0.1:8500/consul/"] {
            let api = Api::new(&builder, base.to_owned(), None).unwrap();
            let url = api.url(&["v1", "health", "service", "a/b?c#d %e"]);
            assert_eq!(url.query(), None);
            assert_eq!(url.fragment(), None);
            assert!(
                url.path()
                    .ends_with("/v1/health/service/a%2Fb%3Fc%23d%20%25e"),
                "{url}"
            );
            assert!(!url.path().contains("//"), "{url}");
        }
        assert!(Api::new(&builder, "mailto:x".to_owned(), None).is_err());
    }
}
