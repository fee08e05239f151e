//! A soak: calls at a moderate, steady rate through etcd discovery for half
//! an hour, with a fault every 30 s, to show that nothing grows, nothing is
//! lost and no call fails but those sent to a server that was just killed.
//! Not run in CI (it takes half an hour): run it by hand.
//!
//! ```text
//! SOAK_MINUTES=30 SOAK_FAULT_SECS=30 SOAK_QPS=200 cargo bench -p tests --bench soak
//! ```
//!
//! Needs `etcd` and `prometheus` on the PATH. Settings (environment):
//! `SOAK_MINUTES` (default 30), `SOAK_FAULT_SECS` (seconds between faults,
//! default 30), `SOAK_QPS` (calls per second, default 200), `SOAK_TTL_SECS`
//! (the servers' lease TTL, default 10 s, the library's default),
//! `SOAK_SERVERS` (default 2), `RUST_LOG` (this process, default warnings
//! but Volo's per-call ones), `SOAK_CHILD_LOG` (the servers' and the
//! collector's `RUST_LOG`). Logs go to files in a temporary directory
//! (printed at the start, kept when a target is missed); the table and the
//! summary to stdout.
//!
//! What runs, all on loopback:
//! - a real etcd (the harness's), one member;
//! - `SOAK_SERVERS` Volo gRPC Echo servers, each a child process (this
//!   binary run again with `SOAK_ROLE=server`) with the rpc-ext-metrics and
//!   rpc-ext-tracing layers, `/metrics`, spans exported over OTLP/HTTP, and
//!   registered with `EtcdRegistry`;
//! - an OTLP/HTTP collector, also a child process (`SOAK_ROLE=collector`),
//!   on a fixed port. It counts the spans it decodes and keeps nothing else
//!   (the harness's `OtlpReceiver` keeps every span, about 700,000 in half
//!   an hour at the default rate, and cannot come back on the same port);
//! - the client, in this process: Volo gRPC through `EtcdResolver` and
//!   `VoloDiscover`, with the metrics and tracing layers (spans to the
//!   collector, `/metrics` served), driven by 8 tasks that pace
//!   `SOAK_QPS` calls per second between them;
//! - a real Prometheus scraping the client's and every server's `/metrics`
//!   every second, throughout.
//!
//! Faults, one every `SOAK_FAULT_SECS`, in rotation:
//! - etcd killed (SIGKILL), restarted with its data 3 s later;
//! - one server killed (SIGKILL; the slots take turns), a new one started
//!   2 s later on a new port (a rescheduled instance gets a new address), so
//!   the killed one's key stays in etcd until its lease expires;
//! - the collector killed (SIGKILL), restarted on the same port 5 s later.
//!
//! One row per minute: calls that succeeded and that failed (to a killed
//! server within its kill window, or otherwise); this process's resident
//! memory, tokio tasks and open file descriptors (medians of one sample a
//! second); each server's resident memory; what etcd held at the minute's
//! end (live servers' keys present / live servers, keys of killed servers
//! not yet expired) and how many of the 4-a-second reads failed (etcd
//! down); Prometheus's `up` for each target (scrapes that succeeded /
//! scrapes); spans the collector received; the faults of the minute.
//!
//! Then a summary against the targets; the exit status is non-zero if one
//! is missed:
//! - RSS, tasks and fds of this process flat after warm-up: their mean over
//!   the run's last fault rotation (three periods, one fault of each kind)
//!   at most 5% above their mean over the warm-up's last rotation. Windows
//!   that hold the same faults compare alike, where single minutes would
//!   not (a minute holds two faults, not always of the same kinds). The
//!   warm-up is 2 minutes (1 for runs under 10 minutes), longer if needed
//!   for every kind of fault to have happened once before its last rotation
//!   (the first of each grows connection pools and buffers once): 3 minutes
//!   at the defaults;
//! - no lost registration: no live server's key missing from etcd for
//!   longer than the lease TTL + 1 s (read with a plain etcd client);
//! - no failed call but those caused by a server kill: a failure is the
//!   kill's when the load balancer had picked the killed instance and it
//!   came within the lease TTL + 1 s of the kill (the 1 s: etcd revokes
//!   expired leases every 500 ms, then the watch and the load balancer).
//!   Kill failures are reported, per kill: how many, and how long after the
//!   kill the last one came.
//!
//! The summary also says how many spans never reached the collector (one
//! client span per call made, one server span per call answered): those
//! exported while it was down are dropped, not retried. That is no target.
//!
//! Every figure is an effect seen from outside the libraries: the replies
//! the client got, the keys etcd holds, what Prometheus scraped, the spans
//! the collector decoded, what `/proc` says of the processes. This process
//! also runs the soak's own instruments (the etcd reader, the Prometheus
//! queries, the collector's handle), the same from start to end.

// The parts live in `soak/`; this file is a crate root, whose modules
// would otherwise be looked for next to it, among the other benches.
#[path = "soak/client.rs"]
mod client;
#[path = "soak/collector.rs"]
mod collector;
#[path = "soak/ledger.rs"]
mod ledger;
#[path = "soak/proc_stats.rs"]
mod proc_stats;
#[path = "soak/registrations.rs"]
mod registrations;
#[path = "soak/report.rs"]
mod report;
#[path = "soak/server.rs"]
mod server;

use std::{
    net::SocketAddr,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use rpc_ext_metrics::{MetricsEndpoint, RpcMetrics};
use rpc_ext_registry::etcd::{EtcdResolver, DEFAULT_PREFIX};
use rpc_ext_tracing::{
    otlp::{OtlpTracing, Transport},
    RpcTracing,
};
use tests::{EtcdServer, PrometheusServer};
use tokio::sync::watch;

use collector::{Collector, SpanCounts};
use ledger::{FaultKind, Ledger};
use registrations::Registrations;
use report::{Growth, MinuteRow};
use server::{Fleet, FleetConfig};

/// The name servers register under and the client calls.
const DISCOVERY_SERVICE: &str = "echo-soak";
/// `service.name` of the client's spans.
const CLIENT_SERVICE_NAME: &str = "soak-client";
/// `service.name` of the servers' spans.
const SERVER_SERVICE_NAME: &str = "soak-server";

/// How long each fault keeps its victim down.
const ETCD_DOWN: Duration = Duration::from_secs(3);
const SERVER_DOWN: Duration = Duration::from_secs(2);
const COLLECTOR_DOWN: Duration = Duration::from_secs(5);

/// After a lease's TTL: etcd's lessor revokes expired leases every 500 ms,
/// then the deletion crosses the watch to the load balancer.
const PROPAGATION_GRACE: Duration = Duration::from_secs(1);

/// Tasks sending calls; each paces its share of the rate.
const LOAD_TASKS: u32 = 8;

/// How much RSS, tasks and fds may grow after warm-up.
const FLAT_TOLERANCE_PERCENT: f64 = 5.0;

/// How often etcd is read for the registrations.
const ETCD_READ_EVERY: Duration = Duration::from_millis(250);

struct Config {
    minutes: u64,
    fault_period: Duration,
    qps: u32,
    ttl: Duration,
    servers: usize,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
            match std::env::var(name) {
                Ok(value) => value
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name}={value:?} is not a number")),
                Err(_) => Ok(default),
            }
        }
        let config = Self {
            minutes: var("SOAK_MINUTES", 30)?,
            fault_period: Duration::from_secs(var("SOAK_FAULT_SECS", 30)?),
            qps: var("SOAK_QPS", 200)?,
            ttl: Duration::from_secs(var("SOAK_TTL_SECS", 10)?),
            servers: var("SOAK_SERVERS", 2)?,
        };
        anyhow::ensure!(
            config.minutes > config.warm_up_minutes(),
            "SOAK_MINUTES must leave at least one minute after the warm-up"
        );
        anyhow::ensure!(
            config.fault_period >= Duration::from_secs(10),
            "SOAK_FAULT_SECS must be at least 10: a fault lasts several seconds"
        );
        anyhow::ensure!(config.qps > 0, "SOAK_QPS must be positive");
        anyhow::ensure!(config.servers >= 2, "SOAK_SERVERS must be at least 2");
        Ok(config)
    }

    /// One fault of each kind.
    fn rotation(&self) -> Duration {
        self.fault_period * FaultKind::ROTATION.len() as u32
    }

    /// 2 minutes (1 for runs under 10 minutes), and at least until every
    /// kind of fault has happened once (the first of each grows connection
    /// pools and buffers once) and one more rotation has passed: the
    /// flatness targets compare the last rotation of the warm-up with the
    /// last rotation of the run, windows that hold one fault of each kind
    /// at the same offsets.
    fn warm_up_minutes(&self) -> u64 {
        let by_length = if self.minutes >= 10 { 2 } else { 1 };
        let first_rotation =
            self.fault_period + self.rotation() + ETCD_DOWN.max(SERVER_DOWN).max(COLLECTOR_DOWN);
        by_length.max(first_rotation.as_secs().div_ceil(60))
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.minutes * 60)
    }

    /// How long after a kill a failed call to the killed instance is the
    /// kill's, and how long a live key may be missing before it is lost.
    fn kill_window(&self) -> Duration {
        self.ttl + PROPAGATION_GRACE
    }
}

fn main() -> anyhow::Result<()> {
    match std::env::var("SOAK_ROLE").as_deref() {
        Ok("server") => return server::run_child(),
        Ok("collector") => return collector::run_child(),
        Ok(other) => bail!("unknown SOAK_ROLE {other:?}"),
        Err(_) => {}
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` builds and
    // runs bench targets without it: half an hour is not a test.
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("soak: run it with `cargo bench -p tests --bench soak`");
        return Ok(());
    }
    let config = Config::from_env()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(soak(config))
}

/// What a child process is started with: its role, its log filter, and no
/// `OTEL_*` setting of the caller's (each sets its exporter explicitly).
fn child_env(command: &mut Command, role: &str) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    command.env("SOAK_ROLE", role).env(
        "RUST_LOG",
        std::env::var("SOAK_CHILD_LOG")
            .unwrap_or_else(|_| "warn,volo=error,volo_grpc=error".into()),
    );
}

/// Binds `addr`, retrying for a while: the port was a killed process's a
/// moment ago.
async fn bind_retrying(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("binding {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("binding {addr}")),
        }
    }
}

/// One reading of this process and the servers.
struct Sample {
    at: Instant,
    rss_kib: Option<u64>,
    tasks: usize,
    fds: Option<usize>,
    server_rss_kib: Vec<Option<u64>>,
}

/// This process's use over one window: the means of its samples.
#[derive(Clone, Copy, Default)]
struct WindowMeans {
    rss_kib: Option<f64>,
    tasks: Option<f64>,
    fds: Option<f64>,
}

impl WindowMeans {
    fn of<'a>(samples: impl Iterator<Item = &'a Reading> + Clone) -> Self {
        fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
            let (sum, count) = values.fold((0.0, 0u32), |(sum, n), v| (sum + v, n + 1));
            (count > 0).then(|| sum / f64::from(count))
        }
        Self {
            rss_kib: mean(samples.clone().filter_map(|s| s.rss_kib).map(|v| v as f64)),
            tasks: mean(samples.clone().map(|s| s.tasks as f64)),
            fds: mean(samples.filter_map(|s| s.fds).map(|v| v as f64)),
        }
    }
}

/// The part of a [`Sample`] the flatness targets compare.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    rss_kib: Option<u64>,
    tasks: usize,
    fds: Option<usize>,
}

/// Everything the concurrent parts of the soak share.
struct Soak {
    config: Config,
    start: Instant,
    ledger: Ledger,
    registrations: Arc<Registrations>,
    collector: tokio::sync::Mutex<Collector>,
    /// The running servers' pids by slot, for the sampler.
    server_pids: Mutex<Vec<Option<u32>>>,
    /// This minute's samples, for its row.
    samples: Mutex<Vec<Sample>>,
    /// The samples of the last fault rotation (allocated once: the soak's
    /// own bookkeeping must not grow the memory it measures).
    recent: Mutex<std::collections::VecDeque<Reading>>,
    prometheus: PrometheusServer,
    /// Prometheus `instance` labels, client first, then the slots.
    targets: Vec<String>,
}

async fn soak(config: Config) -> anyhow::Result<()> {
    // Kept after the run: a few small logs and the samples.
    let dir = tempfile::TempDir::with_prefix("soak-")?.keep();
    // The libraries' warnings (etcd reconnecting...) go to a file, not
    // between the rows of the table.
    let client_log = std::fs::File::create(dir.join("client.log"))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,volo=error,volo_grpc=error".into()),
        )
        .with_writer(Mutex::new(client_log))
        .with_ansi(false)
        .try_init();
    eprintln!(
        "soak: {} min, a fault every {} s, {} calls/s, lease TTL {} s, {} servers; logs and \
         samples in {}",
        config.minutes,
        config.fault_period.as_secs(),
        config.qps,
        config.ttl.as_secs(),
        config.servers,
        dir.display()
    );
    run(config, &dir).await
}

/// The soak itself; `dir` holds the logs.
async fn run(config: Config, dir: &std::path::Path) -> anyhow::Result<()> {
    let mut etcd = EtcdServer::start().await?;
    let collector = Collector::start(dir).await?;
    let registrations = Arc::new(Registrations::new(config.kill_window()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor = tokio::spawn(read_etcd(
        etcd.endpoint(),
        registrations.clone(),
        stop_rx.clone(),
    ));

    let mut fleet = Fleet::new(
        FleetConfig {
            etcd_endpoint: etcd.endpoint(),
            otlp_endpoint: collector.endpoint(),
            ttl: config.ttl,
            dir: dir.to_owned(),
        },
        config.servers,
    )?;
    fleet.reserve(collector.port());
    for slot in 0..fleet.len() {
        fleet.start(slot, &registrations).await?;
    }

    let metrics = RpcMetrics::builder().build()?;
    let client_metrics = MetricsEndpoint::serve(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics.registry().clone(),
    )
    .await?;
    let tracing_guard = OtlpTracing::new()
        .service_name(CLIENT_SERVICE_NAME)
        .transport(Transport::HttpProtobuf)
        .endpoint(collector.endpoint())
        .scheduled_delay(Duration::from_secs(1))
        .install_global(false)
        .install()?;
    let tracing = RpcTracing::builder()
        .tracer_provider(tracing_guard.provider())
        .build();
    let resolver = EtcdResolver::builder([etcd.endpoint()]).build().await?;
    let client = client::build(resolver, &metrics, &tracing);

    let mut targets = vec![client_metrics.local_addr().to_string()];
    targets.extend(fleet.metrics_targets());
    let prometheus = PrometheusServer::start(&targets).await?;
    wait_until_every_server_answers(&client, &fleet).await?;

    let start = Instant::now();
    let soak = Arc::new(Soak {
        ledger: Ledger::new(start, config.kill_window()),
        registrations,
        collector: tokio::sync::Mutex::new(collector),
        server_pids: Mutex::new(fleet.pids()),
        samples: Mutex::new(Vec::with_capacity(64)),
        recent: Mutex::new(std::collections::VecDeque::with_capacity(
            usize::try_from(config.rotation().as_secs())? + 8,
        )),
        prometheus,
        targets,
        start,
        config,
    });
    println!("{}", report::header(fleet.len()));
    let load: Vec<_> = (0..LOAD_TASKS)
        .map(|task| {
            tokio::spawn(send_calls(
                soak.clone(),
                client.clone(),
                task,
                stop_rx.clone(),
            ))
        })
        .collect();
    let sampler = tokio::spawn(sample(
        soak.clone(),
        dir.join("samples.csv"),
        stop_rx.clone(),
    ));

    let outcome = tokio::try_join!(
        inject_faults(&soak, &mut etcd, &mut fleet),
        report_minutes(&soak)
    );
    let _ = stop_tx.send(true);
    for task in load {
        task.await?;
    }
    sampler.await?;
    monitor.await?;
    let (_, windows) = outcome?;
    let verdict = summarize(&soak, windows).await;

    drop(client);
    if let Err(e) = tracing_guard.shutdown() {
        eprintln!("client tracing shutdown: {e}");
    }
    client_metrics.shutdown().await;
    verdict.map_err(|missed| anyhow::anyhow!("targets missed: {missed}"))
}

/// Reads etcd's keys for the service until stopped.
async fn read_etcd(
    endpoint: String,
    registrations: Arc<Registrations>,
    mut stop: watch::Receiver<bool>,
) {
    let prefix = format!("{DEFAULT_PREFIX}/{DISCOVERY_SERVICE}/");
    let mut etcd = loop {
        match etcd_client::Client::connect([endpoint.as_str()], None).await {
            Ok(etcd) => break etcd,
            Err(e) => {
                eprintln!("connecting to etcd to read the keys: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut ticks = tokio::time::interval(ETCD_READ_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => registrations.read(&mut etcd, &prefix).await,
        }
    }
}

/// Calls until every running server has answered, so that the soak starts
/// with the client spread over all of them.
async fn wait_until_every_server_answers(
    client: &echo::volo_gen::echo::EchoClient,
    fleet: &Fleet,
) -> anyhow::Result<()> {
    let want: std::collections::BTreeSet<SocketAddr> = (0..fleet.len())
        .filter_map(|slot| fleet.address(slot))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen != want {
        let (outcome, picked) = client::call(client).await;
        if let (Ok(()), Some(picked)) = (outcome, picked) {
            seen.insert(picked);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "calls reached {seen:?} of {want:?} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// One load task: its share of the rate, paced, until stopped.
async fn send_calls(
    soak: Arc<Soak>,
    client: echo::volo_gen::echo::EchoClient,
    task: u32,
    mut stop: watch::Receiver<bool>,
) {
    let period = Duration::from_secs(1) * LOAD_TASKS / soak.config.qps;
    let first = tokio::time::Instant::from_std(soak.start) + period * task / LOAD_TASKS;
    let mut ticks = tokio::time::interval_at(first, period);
    // A slow call delays this task's next ones rather than bunching them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => {}
        }
        if soak.start.elapsed() >= soak.config.duration() {
            return;
        }
        let (outcome, picked) = client::call(&client).await;
        soak.ledger.record(outcome, picked);
    }
}

/// Samples this process and the servers every second until stopped.
async fn sample(soak: Arc<Soak>, csv: std::path::PathBuf, mut stop: watch::Receiver<bool>) {
    use std::io::Write as _;
    // Every sample, for a closer look than the per-minute medians.
    let mut csv = std::fs::File::create(csv).ok();
    if let Some(file) = csv.as_mut() {
        let _ = writeln!(file, "seconds,rss_kib,tasks,fds,server_rss_kib");
    }
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => {}
        }
        let pids = soak
            .server_pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let sample = Sample {
            at: Instant::now(),
            rss_kib: proc_stats::rss_kib("self"),
            tasks: proc_stats::alive_tasks(),
            fds: proc_stats::open_fds(),
            server_rss_kib: pids
                .iter()
                .map(|pid| proc_stats::rss_kib(&pid.as_ref()?.to_string()))
                .collect(),
        };
        if let Some(file) = csv.as_mut() {
            let servers: Vec<String> = sample
                .server_rss_kib
                .iter()
                .map(|rss| report::opt(*rss))
                .collect();
            let _ = writeln!(
                file,
                "{:.1},{},{},{},{}",
                (sample.at - soak.start).as_secs_f64(),
                report::opt(sample.rss_kib),
                sample.tasks,
                report::opt(sample.fds),
                servers.join(" ")
            );
        }
        {
            let mut recent = soak.recent.lock().unwrap_or_else(|e| e.into_inner());
            let rotation = soak.config.rotation();
            // A few seconds more than a rotation: the reporter reads the
            // window a moment after it ends.
            while recent
                .front()
                .is_some_and(|r| sample.at - r.at > rotation + Duration::from_secs(5))
            {
                recent.pop_front();
            }
            recent.push_back(Reading {
                at: sample.at,
                rss_kib: sample.rss_kib,
                tasks: sample.tasks,
                fds: sample.fds,
            });
        }
        soak.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sample);
    }
}

/// Injects a fault every period, in rotation, while a whole period still
/// fits before the end.
async fn inject_faults(
    soak: &Soak,
    etcd: &mut EtcdServer,
    fleet: &mut Fleet,
) -> anyhow::Result<()> {
    let period = soak.config.fault_period;
    let mut server_kills = 0usize;
    for n in 1u32.. {
        let at = soak.start + period * n;
        if at + period > soak.start + soak.config.duration() {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        fleet.check_running()?;
        let kind = FaultKind::ROTATION[(n as usize - 1) % FaultKind::ROTATION.len()];
        match kind {
            FaultKind::Etcd => {
                soak.ledger.fault(kind, None, None);
                etcd.kill();
                tokio::time::sleep(ETCD_DOWN).await;
                etcd.restart().await?;
            }
            FaultKind::Server => {
                let slot = server_kills % fleet.len();
                server_kills += 1;
                let killed = fleet.address(slot).context("the slot has no server")?;
                soak.ledger.fault(kind, Some(slot), Some(killed));
                soak.registrations.kill(killed, Instant::now());
                fleet.kill(slot);
                set_pids(soak, fleet);
                tokio::time::sleep(SERVER_DOWN).await;
                fleet.start(slot, &soak.registrations).await?;
                set_pids(soak, fleet);
            }
            FaultKind::Collector => {
                soak.ledger.fault(kind, None, None);
                soak.collector.lock().await.kill().await;
                tokio::time::sleep(COLLECTOR_DOWN).await;
                soak.collector.lock().await.spawn().await?;
            }
        }
    }
    Ok(())
}

fn set_pids(soak: &Soak, fleet: &Fleet) {
    *soak.server_pids.lock().unwrap_or_else(|e| e.into_inner()) = fleet.pids();
}

/// Prints a row at the end of every minute; returns this process's use
/// over the last fault rotation of the warm-up and over the last one.
async fn report_minutes(soak: &Soak) -> anyhow::Result<(WindowMeans, WindowMeans)> {
    let warm_up = usize::try_from(soak.config.warm_up_minutes())?;
    let mut after_warm_up = WindowMeans::default();
    let mut at_end = WindowMeans::default();
    let mut spans_before = SpanCounts::default();
    for minute in 0..usize::try_from(soak.config.minutes)? {
        let end = soak.start + Duration::from_secs(60) * (u32::try_from(minute)? + 1);
        // Calls still in flight at the boundary finish in the next minute.
        tokio::time::sleep_until((end + Duration::from_millis(200)).into()).await;
        let samples: Vec<Sample> = {
            let mut all = soak.samples.lock().unwrap_or_else(|e| e.into_inner());
            let (this, later) = all.drain(..).partition(|s| s.at < end);
            *all = later;
            this
        };
        let window = {
            let recent = soak.recent.lock().unwrap_or_else(|e| e.into_inner());
            let from = end - soak.config.rotation();
            WindowMeans::of(recent.iter().filter(|r| r.at >= from && r.at < end))
        };
        if minute + 1 == warm_up {
            after_warm_up = window;
        }
        at_end = window;
        let rss_kib =
            proc_stats::median(&samples.iter().filter_map(|s| s.rss_kib).collect::<Vec<_>>());
        let tasks = proc_stats::median(&samples.iter().map(|s| s.tasks).collect::<Vec<_>>());
        let fds = proc_stats::median(&samples.iter().filter_map(|s| s.fds).collect::<Vec<_>>());
        let servers = soak.targets.len() - 1;
        let server_rss_kib = (0..servers)
            .map(|slot| {
                let values: Vec<u64> = samples
                    .iter()
                    .filter_map(|s| s.server_rss_kib.get(slot).copied().flatten())
                    .collect();
                proc_stats::median(&values)
            })
            .collect();
        let spans = soak.collector.lock().await.received().await;
        let row = MinuteRow {
            minute: minute + 1,
            calls: soak.ledger.minute(minute),
            rss_kib,
            tasks,
            fds,
            server_rss_kib,
            registrations: soak.registrations.take_minute(),
            scrapes: scrapes_in_last_minute(soak).await,
            spans: spans - spans_before,
            faults: soak.ledger.faults_in(minute),
        };
        spans_before = spans;
        println!("{row}");
    }
    Ok((after_warm_up, at_end))
}

/// Per target: scrapes that succeeded and scrapes done in the last minute,
/// as Prometheus recorded them in `up`.
async fn scrapes_in_last_minute(soak: &Soak) -> Vec<Option<(u64, u64)>> {
    let by_instance = |promql: &'static str| async move {
        let result = soak.prometheus.query(promql).await.unwrap_or_default();
        let mut values = std::collections::HashMap::new();
        for sample in result {
            let instance = sample["metric"]["instance"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let value = sample["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_default();
            values.insert(instance, value.round() as u64);
        }
        values
    };
    let up = by_instance("sum_over_time(up{job=\"rpc\"}[1m])").await;
    let done = by_instance("count_over_time(up{job=\"rpc\"}[1m])").await;
    soak.targets
        .iter()
        .map(|target| Some((*up.get(target)?, *done.get(target)?)))
        .collect()
}

/// Prints the summary; `Err` lists the targets missed.
async fn summarize(soak: &Soak, (base, end): (WindowMeans, WindowMeans)) -> Result<(), String> {
    let config = &soak.config;
    let mut missed = Vec::new();
    let warm_up = config.warm_up_minutes();
    let rotation = config.rotation().as_secs();
    println!(
        "\nsummary: {} min, a fault every {} s, {} calls/s over {} servers, lease TTL {} s, \
         warm-up {warm_up} min",
        config.minutes,
        config.fault_period.as_secs(),
        config.qps,
        config.servers,
        config.ttl.as_secs()
    );
    println!(
        "- client process, means over one fault rotation ({rotation} s, one fault of each kind) \
         ending with the warm-up ({}-{} s) and ending with the run ({}-{} s):",
        warm_up * 60 - rotation,
        warm_up * 60,
        config.minutes * 60 - rotation,
        config.minutes * 60,
    );
    let growths = [
        Growth {
            what: "RSS",
            unit: " KiB",
            base: base.rss_kib,
            end: end.rss_kib,
        },
        Growth {
            what: "tokio tasks",
            unit: "",
            base: base.tasks,
            end: end.tasks,
        },
        Growth {
            what: "open fds",
            unit: "",
            base: base.fds,
            end: end.fds,
        },
    ];
    for growth in &growths {
        let percent = growth.percent();
        let met = percent.is_some_and(|p| p <= FLAT_TOLERANCE_PERCENT);
        println!(
            "  {}: {}{} then {}{} ({}; target at most +{FLAT_TOLERANCE_PERCENT}%): {}",
            growth.what,
            growth.base.map_or("-".into(), |v| format!("{v:.1}")),
            growth.unit,
            growth.end.map_or("-".into(), |v| format!("{v:.1}")),
            growth.unit,
            percent.map_or("not measured".into(), |p| format!("{p:+.1}%")),
            if met { "met" } else { "MISSED" }
        );
        if !met {
            missed.push(format!("{} flat", growth.what));
        }
    }

    let registrations = soak.registrations.summary();
    let registered_max = registrations
        .registered_after
        .iter()
        .max()
        .copied()
        .unwrap_or_default();
    println!(
        "- registrations lost: {} (a live server's key missing from etcd over {}; target 0): {}; \
         longest a live key was missing: {}; servers started: {}, in etcd at most {} after start; \
         stray keys: {}",
        registrations.lost,
        report::seconds(config.kill_window()),
        if registrations.lost == 0 {
            "met"
        } else {
            "MISSED"
        },
        report::seconds(registrations.longest_missing),
        registrations.registered_after.len(),
        report::seconds(registered_max),
        registrations.stray.len(),
    );
    if registrations.lost > 0 {
        missed.push("no lost registration".into());
    }

    let (ok, kill_failures, other) = soak.ledger.totals();
    let calls = ok + kill_failures + other.total();
    println!(
        "- calls: {calls} made ({:.0}/s), {ok} ok, {} failed: {kill_failures} to a killed server \
         within {} of its kill, {} otherwise (target 0): {}",
        calls as f64 / config.duration().as_secs_f64(),
        kill_failures + other.total(),
        report::seconds(config.kill_window()),
        other.total(),
        if other.total() == 0 { "met" } else { "MISSED" },
    );
    println!(
        "  failures otherwise, by the fault window they fell in: etcd {}, collector {}, server kill \
         (to another instance) {}, killed server after {} {}, before any fault {}",
        other.etcd,
        other.collector,
        other.server_other_instance,
        report::seconds(config.kill_window()),
        other.killed_server_late,
        other.no_fault
    );
    if other.total() > 0 {
        missed.push("no failed call but a killed server's".into());
    }

    let kills = soak.ledger.kills();
    if !kills.is_empty() {
        let lasts: Vec<Duration> = kills
            .iter()
            .map(|k| k.last_failure.unwrap_or_default())
            .collect();
        let max = lasts.iter().max().copied().unwrap_or_default();
        let mean = lasts.iter().sum::<Duration>() / u32::try_from(lasts.len()).unwrap_or(1);
        println!(
            "- server kills: {}; failed calls per kill {:?}; the last failure came after the kill: \
             max {}, mean {} (lease TTL {})",
            kills.len(),
            kills.iter().map(|k| k.failures).collect::<Vec<_>>(),
            report::seconds(max),
            report::seconds(mean),
            report::seconds(config.ttl),
        );
        for kill in &kills {
            let removed = registrations
                .removed_after
                .iter()
                .find(|(address, _)| *address == kill.address)
                .map(|(_, after)| report::seconds(*after));
            println!(
                "  kill at {} of s{} ({}): {} failed calls, the last {} after the kill; its key gone from etcd after {}",
                report::seconds(kill.at - soak.start),
                kill.slot,
                kill.address,
                kill.failures,
                kill.last_failure.map_or("-".into(), report::seconds),
                removed.unwrap_or_else(|| {
                    let age = registrations
                        .still_there
                        .iter()
                        .find(|(address, _)| *address == kill.address)
                        .map_or("-".into(), |(_, age)| report::seconds(*age));
                    format!("- (still there at the end, {age} after the kill)")
                }),
            );
        }
    }

    let spans = soak.collector.lock().await.received().await;
    // Every call makes a client span, every call that reached a server a
    // server span; those exported while the collector was down are lost,
    // by design (the export queue is bounded and export never blocks calls).
    println!(
        "- spans the collector decoded: {} client of {calls} calls made ({} missing), {} server \
         of {ok} calls answered ({} missing), {} other",
        spans.client,
        calls.saturating_sub(spans.client),
        spans.server,
        ok.saturating_sub(spans.server),
        spans.other
    );
    let scrapes = scrapes_total(soak).await;
    println!("- Prometheus scrapes up / done over the run: {scrapes}");

    let (reasons, unlisted) = soak.ledger.reasons();
    if !reasons.is_empty() {
        println!("- failure messages:");
        for (reason, count) in reasons {
            println!("  {count:>6} x {reason}");
        }
        if unlisted > 0 {
            println!("  {unlisted:>6} x (other messages)");
        }
    }
    if missed.is_empty() {
        println!("all targets met");
        Ok(())
    } else {
        Err(missed.join(", "))
    }
}

/// Scrapes that succeeded / were done per target over the whole run.
async fn scrapes_total(soak: &Soak) -> String {
    let range = format!("{}s", soak.start.elapsed().as_secs().max(1));
    let query = |function: &str| format!("{function}(up{{job=\"rpc\"}}[{range}])");
    let mut parts = Vec::new();
    let up = soak
        .prometheus
        .query(&query("sum_over_time"))
        .await
        .unwrap_or_default();
    let done = soak
        .prometheus
        .query(&query("count_over_time"))
        .await
        .unwrap_or_default();
    let value = |result: &[serde_json::Value], target: &str| {
        result
            .iter()
            .find(|s| s["metric"]["instance"] == target)
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
    };
    for (index, target) in soak.targets.iter().enumerate() {
        let name = if index == 0 {
            "client".to_owned()
        } else {
            format!("s{}", index - 1)
        };
        parts.push(format!(
            "{name} {}/{}",
            value(&up, target).map_or("-".into(), |v| format!("{v:.0}")),
            value(&done, target).map_or("-".into(), |v| format!("{v:.0}")),
        ));
    }
    parts.join(", ")
}
