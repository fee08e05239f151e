//! The OTLP/HTTP collector: a child process (this binary with
//! `SOAK_ROLE=collector`) on a fixed port, so that killing it is a real
//! collector going down and restarting it there a real one coming back.
//! It counts the spans it decodes, per `service.name`, and keeps nothing
//! else, so that it can run for hours.

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::header, routing::get, routing::post, Router};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::any_value::Value,
};
use prost::Message;
use tests::ChildGuard;

use super::{CLIENT_SERVICE_NAME, SERVER_SERVICE_NAME};

/// Spans received, by who sent them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpanCounts {
    pub client: u64,
    pub server: u64,
    /// Spans of another service, and export bodies that did not decode.
    pub other: u64,
}

impl std::ops::Add for SpanCounts {
    type Output = SpanCounts;
    fn add(self, rhs: SpanCounts) -> SpanCounts {
        SpanCounts {
            client: self.client + rhs.client,
            server: self.server + rhs.server,
            other: self.other + rhs.other,
        }
    }
}

impl std::ops::Sub for SpanCounts {
    type Output = SpanCounts;
    fn sub(self, rhs: SpanCounts) -> SpanCounts {
        SpanCounts {
            client: self.client.saturating_sub(rhs.client),
            server: self.server.saturating_sub(rhs.server),
            other: self.other.saturating_sub(rhs.other),
        }
    }
}

#[derive(Default)]
struct Counters {
    client: AtomicU64,
    server: AtomicU64,
    other: AtomicU64,
}

/// The child's side: serves `POST /v1/traces` and `GET /count` on
/// `SOAK_LISTEN` until killed.
pub fn run_child() -> anyhow::Result<()> {
    let listen: SocketAddr = std::env::var("SOAK_LISTEN")?.parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = super::bind_retrying(listen).await?;
            let app = Router::new()
                .route("/v1/traces", post(export))
                .route("/count", get(count))
                .with_state(Arc::new(Counters::default()));
            axum::serve(listener, app).await?;
            Ok(())
        })
}

async fn export(
    State(counters): State<Arc<Counters>>,
    body: Bytes,
) -> impl axum::response::IntoResponse {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                    .and_then(|value| match value {
                        Value::StringValue(name) => Some(name.as_str()),
                        _ => None,
                    });
                let spans: usize = resource.scope_spans.iter().map(|s| s.spans.len()).sum();
                let counter = match service {
                    Some(CLIENT_SERVICE_NAME) => &counters.client,
                    Some(SERVER_SERVICE_NAME) => &counters.server,
                    _ => &counters.other,
                };
                counter.fetch_add(spans as u64, Ordering::Relaxed);
            }
        }
        Err(_) => {
            counters.other.fetch_add(1, Ordering::Relaxed);
        }
    }
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

async fn count(State(counters): State<Arc<Counters>>) -> String {
    format!(
        "{} {} {}",
        counters.client.load(Ordering::Relaxed),
        counters.server.load(Ordering::Relaxed),
        counters.other.load(Ordering::Relaxed)
    )
}

/// The parent's handle: starts, kills and restarts the collector on one
/// port, and adds up what every run of it received.
pub struct Collector {
    port: u16,
    log: std::path::PathBuf,
    process: Option<ChildGuard>,
    http: reqwest::Client,
    /// Received by the runs already killed.
    banked: SpanCounts,
    /// Received by the current run, at the last reading.
    current: SpanCounts,
}

impl Collector {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut collector = Self {
            port: tests::free_port()?,
            log: dir.join("collector.log"),
            process: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()?,
            banked: SpanCounts::default(),
            current: SpanCounts::default(),
        };
        collector.spawn().await?;
        Ok(collector)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The base URL exporters send to (`/v1/traces` is appended).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the collector again on its port and waits until it answers.
    pub async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(std::env::current_exe()?);
        super::child_env(&mut command, "collector");
        command.env("SOAK_LISTEN", format!("127.0.0.1:{}", self.port));
        let mut process = ChildGuard::spawn("collector", command, &self.log)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            process.check_running()?;
            if let Some(counts) = self.read().await {
                self.current = counts;
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the collector did not answer within 30 s; log:\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.process = Some(process);
        Ok(())
    }

    /// Reads the counts one last time, then kills the collector (SIGKILL).
    pub async fn kill(&mut self) {
        if let Some(counts) = self.read().await {
            self.current = counts;
        }
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.banked = self.banked + self.current;
        self.current = SpanCounts::default();
    }

    /// Everything received so far, over every run (the current run as of
    /// now, if it answers, else as of its last answer).
    pub async fn received(&mut self) -> SpanCounts {
        if self.process.is_some() {
            if let Some(counts) = self.read().await {
                self.current = counts;
            }
        }
        self.banked + self.current
    }

    async fn read(&self) -> Option<SpanCounts> {
        let text = self
            .http
            .get(format!("{}/count", self.endpoint()))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let mut numbers = text.split(' ').map(|n| n.parse::<u64>());
        Some(SpanCounts {
            client: numbers.next()?.ok()?,
            server: numbers.next()?.ok()?,
            other: numbers.next()?.ok()?,
        })
    }
}
