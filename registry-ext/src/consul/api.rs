//! The few Consul HTTP API calls this backend makes, and their JSON.

use std::{collections::BTreeMap, time::Duration};

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::{
    builder::Check,
    health::{decode_health, decode_index, INDEX_HEADER},
    ConsulBuilder, BACKEND,
};
use crate::{Error, Instance, Result};

/// Meta key carrying the weight (Consul's own `Weights` cannot be 0).
pub(crate) const WEIGHT_META: &str = "weight";

pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
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

impl Registration {
    pub(crate) fn of(instance: &Instance, check: &Check, deregister_after: Duration) -> Self {
        let address = instance.address;
        let mut meta = instance.tags.clone();
        meta.insert(WEIGHT_META.to_owned(), instance.weight.to_string());
        Self {
            id: format!("{}-{}-{}", instance.service, address.ip(), address.port())
                .replace([':', '[', ']', '/'], "-"),
            name: instance.service.clone(),
            address: address.ip().to_string(),
            port: address.port(),
            tags: instance
                .tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            meta,
            weights: Weights {
                passing: instance.weight.max(1),
                warning: 1,
            },
            check: CheckDefinition::new(check, deregister_after),
        }
    }

    /// The ID Consul gives the check of a service registered with one check.
    pub(crate) fn check_id(&self) -> String {
        format!("service:{}", self.id)
    }
}

/// What the agent said to a TTL pass.
pub(crate) enum Pass {
    Passed,
    /// The agent does not know the check: it forgot the service.
    Unknown,
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
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            namespace: builder.namespace.clone(),
            partition: builder.partition.clone(),
            datacenter: builder.datacenter.clone(),
            request_timeout: builder.request_timeout,
        })
    }

    fn request(&self, method: Method, path: &str, timeout: Duration) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
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

    async fn expect_success(response: reqwest::Response, what: &str) -> Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(200).collect();
        Err(Error::backend(
            BACKEND,
            format!("{what}: HTTP {status}: {body}"),
        ))
    }

    pub(crate) async fn register(&self, registration: &Registration) -> Result<()> {
        let request = self
            .request(
                Method::PUT,
                "/v1/agent/service/register",
                self.request_timeout,
            )
            .query(&[("replace-existing-checks", "true")])
            .json(registration);
        let response = self.send(request).await?;
        Self::expect_success(response, "register").await.map(drop)
    }

    pub(crate) async fn deregister(&self, id: &str) -> Result<()> {
        let path = format!("/v1/agent/service/deregister/{id}");
        let response = self
            .send(self.request(Method::PUT, &path, self.request_timeout))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(()); // already gone
        }
        Self::expect_success(response, "deregister").await.map(drop)
    }

    pub(crate) async fn pass(&self, check_id: &str) -> Result<Pass> {
        let path = format!("/v1/agent/check/pass/{check_id}");
        let response = self
            .send(self.request(Method::PUT, &path, self.request_timeout))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(Pass::Unknown);
        }
        // Older agents answer 500 "does not have associated TTL" or "unknown
        // check" for a check they lost.
        if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
            let body = response.text().await.unwrap_or_default();
            if body.contains("Unknown check")
                || body.contains("unknown check")
                || body.contains("does not exist")
            {
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
        let path = format!("/v1/agent/service/{id}");
        let response = self
            .send(self.request(Method::GET, &path, self.request_timeout))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        Self::expect_success(response, "service lookup")
            .await
            .map(|_| true)
    }

    /// One (blocking, when `index` > 0) health query: the passing instances
    /// of `service` and the index to wait on next.
    pub(crate) async fn healthy(
        &self,
        service: &str,
        tags: &[String],
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<Instance>, u64)> {
        let path = format!("/v1/health/service/{service}");
        // The agent may wait `wait` plus up to 1/16 of it in jitter.
        let timeout = self.request_timeout + wait + wait / 16;
        let mut request = self
            .request(Method::GET, &path, timeout)
            .query(&[("passing", "true")]);
        if index > 0 {
            request = request.query(&[
                ("index", index.to_string()),
                ("wait", format!("{}ms", wait.as_millis())),
            ]);
        }
        if let Some(dc) = &self.datacenter {
            request = request.query(&[("dc", dc)]);
        }
        for tag in tags {
            request = request.query(&[("tag", tag)]);
        }
        let response = Self::expect_success(self.send(request).await?, "health query").await?;
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
        Ok((decode_health(&path, &body)?, next_index))
    }
}
