//! A real Prometheus server (Debian package `prometheus`) scraping given targets.

use std::{process::Command, time::Duration};

use anyhow::{bail, Context};
use serde_json::Value;
use tempfile::TempDir;

use crate::{free_port, require_binary, ChildGuard};

/// The job `rpc` scraping `targets` (`host:port`, path `/metrics`) every
/// second.
fn rpc_job(targets: &[String]) -> String {
    let targets = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "  - job_name: rpc\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
         static_configs:\n      - targets: [{targets}]\n"
    )
}

/// A Prometheus that scrapes its targets every second.
#[derive(Debug)]
pub struct PrometheusServer {
    port: u16,
    http: reqwest::Client,
    process: ChildGuard,
    _dir: TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`)
    /// under the job name `rpc`, and waits until it is ready.
    pub async fn start(targets: &[String]) -> anyhow::Result<Self> {
        Self::start_with_jobs(&rpc_job(targets)).await
    }

    /// Starts Prometheus with `jobs`, the YAML list under `scrape_configs:`
    /// (each entry indented by two spaces), scraping every second, and
    /// waits until it is ready.
    pub async fn start_with_jobs(jobs: &str) -> anyhow::Result<Self> {
        Self::start_with_jobs_and_flags(jobs, &[]).await
    }

    /// Like [`PrometheusServer::start`], with exemplar storage on
    /// (`--enable-feature=exemplar-storage`): exemplars in the targets'
    /// OpenMetrics expositions are kept, for
    /// [`PrometheusServer::query_exemplars`].
    pub async fn start_with_exemplars(targets: &[String]) -> anyhow::Result<Self> {
        Self::start_with_jobs_and_flags(&rpc_job(targets), &["--enable-feature=exemplar-storage"])
            .await
    }

    /// Like [`PrometheusServer::start_with_jobs`], with more command-line
    /// flags (`--enable-feature=...`).
    pub async fn start_with_jobs_and_flags(jobs: &str, flags: &[&str]) -> anyhow::Result<Self> {
        let binary = require_binary("prometheus", "prometheus")?;
        let dir = TempDir::with_prefix("prometheus-test-")?;
        let port = free_port()?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n{jobs}"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .args(flags);
        let process = ChildGuard::spawn("prometheus", command, &dir.path().join("log"))?;
        let mut server = Self {
            port,
            http: reqwest::Client::new(),
            process,
            _dir: dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/-/ready", self.url());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.process.check_running()?;
            if let Ok(response) = self.http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "prometheus not ready after 30 s; log:\n{}",
                    self.process.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs an instant PromQL query and returns `data.result`.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let body: Value = self
            .http
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .await?
            .json()
            .await?;
        if body["status"] != "success" {
            bail!("query {promql:?} failed: {body}");
        }
        body["data"]["result"]
            .as_array()
            .cloned()
            .context("query result is not a vector")
    }

    /// Runs `/api/v1/query_exemplars` for `promql` over the last
    /// `lookback` and returns `data`: one entry per series, its
    /// `seriesLabels` and its `exemplars` (`labels`, `value`, `timestamp`).
    /// Needs [`PrometheusServer::start_with_exemplars`].
    pub async fn query_exemplars(
        &self,
        promql: &str,
        lookback: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        let body: Value = self
            .http
            .get(format!("{}/api/v1/query_exemplars", self.url()))
            .query(&[
                ("query", promql.to_owned()),
                ("start", format!("{:.3}", now - lookback.as_secs_f64())),
                // A little ahead: exemplars carry the targets' own clock.
                ("end", format!("{:.3}", now + 60.0)),
            ])
            .send()
            .await?
            .json()
            .await?;
        if body["status"] != "success" {
            bail!("exemplar query {promql:?} failed: {body}");
        }
        body["data"]
            .as_array()
            .cloned()
            .context("exemplar query result is not a list")
    }

    /// The scalar value of the first sample of a query, if any.
    pub async fn query_value(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        Ok(self
            .query(promql)
            .await?
            .first()
            .and_then(|sample| sample["value"][1].as_str())
            .and_then(|v| v.parse().ok()))
    }

    /// Waits until the `rpc` job's target is up and `metric` was scraped
    /// with `value`: proof that a scrape got through, not a stale sample.
    pub async fn wait_for_scrape(&self, metric: &str, value: f64) -> anyhow::Result<()> {
        crate::eventually(
            Duration::from_secs(30),
            "prometheus scrapes the endpoint",
            || async {
                let up = self.query_value("up{job=\"rpc\"}").await.ok()??;
                let seen = self
                    .query_value(&format!("{metric}{{job=\"rpc\"}}"))
                    .await
                    .ok()??;
                (up == 1.0 && seen == value).then_some(())
            },
        )
        .await
    }

    /// The active scrape targets with their health.
    pub async fn targets(&self) -> anyhow::Result<Vec<Value>> {
        let body: Value = self
            .http
            .get(format!("{}/api/v1/targets", self.url()))
            .send()
            .await?
            .json()
            .await?;
        body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .context("no activeTargets in response")
    }
}
