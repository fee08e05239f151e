//! Scale: scrape time with 10,000+ metric series, and the etcd resolver with
//! 100,000 instances across 1,000 services.
//!
//! ```text
//! cargo bench -p tests --bench scale                      # both parts
//! SCALE_PART=scrape cargo bench -p tests --bench scale    # part 1 only
//! SCALE_PART=resolver cargo bench -p tests --bench scale  # part 2 only
//! SCALE_PART=data cargo bench -p tests --bench scale      # the breakdown alone
//! ```
//!
//! **scrape**: records calls into one [`rpc_ext_metrics::RpcMetrics`] over
//! 25 services x 4 methods x 4 status codes (10,700 series in the current
//! conventions' families: every non-comment line of the text output,
//! histogram buckets included), then
//! times `encode_text`, `encode_openmetrics` and the registry's `gather`
//! alone (median, p99, bytes, allocations per scrape). The calls are made
//! inside a sampled OpenTelemetry span, so every duration series has an
//! exemplar (400 in all; `SCALE_EXEMPLARS=0` records them outside any span:
//! none). The peer is the same
//! families, labels, buckets and help texts recorded through the `metrics`
//! facade into `metrics-exporter-prometheus` (`PrometheusBuilder::build_recorder`,
//! `PrometheusHandle::render`), timed in the same run.
//!
//! **resolver**: starts a real etcd (harness), writes 100 instance keys for
//! each of 1,000 services in the registry's layout
//! (`/registry-ext/<service>/<ip:port>`, value from
//! [`rpc_ext_registry::etcd::encode_instance`]) in one txn per service, then
//! builds an [`EtcdResolver`] and subscribes to the 1,000 services at once.
//! Reports the wall time until every snapshot has its 100 instances and
//! etcd counts 1,000 watchers, RSS and live heap before/after, CPU time
//! (utime + stime from `/proc/self/stat`), tokio tasks; then a churn of
//! 1,000 re-puts with a new weight (and the same puts to unwatched keys as
//! a control), 10 s idle, and 1,000 subscriptions to empty services to
//! separate the per-service from the per-instance cost. Needs `etcd` on
//! PATH.
//!
//! **data** (after the resolver part, or alone): where the per-instance
//! bytes go. Builds the resolver run's instances through the public API,
//! as the resolvers hold them (an `Arc<Instance>` each, the service name
//! one `Arc<str>` per service), and reports the live heap per instance of
//! the instance itself, of its two tags, of a service name not shared, and
//! of its entry in a [`ServiceSnapshot`]. After a resolver run it also
//! prints what is left of the net per-instance figure: the resolver's own
//! bookkeeping (the etcd follower's map by key).
//!
//! For profiles: `SCALE_SCRAPE=text|openmetrics|gather|peer SCALE_SCRAPES=N`
//! (with `SCALE_PART=scrape`) runs that scrape N times and nothing else, for
//! instruction counts under callgrind; `SCALE_SERVICES`, `SCALE_INSTANCES`,
//! `SCALE_TAGS`, `SCALE_CHURN` and `SCALE_IDLE_SECS` shrink the resolver run
//! (e.g. under massif).

// The counting allocator below is the only unsafe code: it forwards to the
// system allocator.
#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    hint::black_box,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use rpc_ext_metrics::{
    Call, Conventions, GrpcCode, RpcMetrics, RpcSystem, Side, DEFAULT_DURATION_BUCKETS,
    DEFAULT_SIZE_BUCKETS,
};
use rpc_ext_registry::{
    etcd::{encode_instance, EtcdResolver},
    Instance, Resolver, ServiceSnapshot, ServiceWatch,
};
use tests::EtcdServer;

/// Counts allocations and live heap bytes.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` and `cargo bench --no-run` build this; only run it for real.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return Ok(());
    }
    let part = std::env::var("SCALE_PART")
        .ok()
        .or_else(|| std::env::args().skip(1).find(|a| !a.starts_with('-')))
        .unwrap_or_else(|| "all".to_owned());
    let (scrape, resolver, data) = match part.as_str() {
        "scrape" => (true, false, false),
        "resolver" => (false, true, true),
        "data" => (false, false, true),
        "all" => (true, true, true),
        other => anyhow::bail!("unknown part {other:?}: scrape, resolver, data or all"),
    };
    if scrape {
        scrape_part()?;
    }
    let mut net_per_instance = None;
    if resolver {
        net_per_instance = Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(resolver_part())?,
        );
    }
    // After the resolver part, whose memory is all freed by now: run
    // before, its freed pages would be reused and lower the resolver's RSS.
    if data {
        data_part(&Shape::from_env(), net_per_instance);
    }
    Ok(())
}

// ---------------------------------------------------------------- scrape

const SERVICES: usize = 25;
const METHODS: usize = 4;
const STATUSES: [GrpcCode; 4] = [
    GrpcCode::OK,
    GrpcCode::UNKNOWN,
    GrpcCode::NOT_FOUND,
    GrpcCode::UNAVAILABLE,
];
const CALLS_PER_SERIES: u64 = 5;
const SCRAPES: usize = 100;

fn series_count(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

struct Timing {
    median: Duration,
    p99: Duration,
    bytes: usize,
    allocations: f64,
}

type Scrape<'a> = Box<dyn FnMut() -> usize + 'a>;

/// Runs every scrape a few times to warm up, then `SCRAPES` rounds in which
/// each runs once (the order rotating), so that the machine's noise falls on
/// all of them alike.
fn time_scrapes(scrapes: &mut [Scrape<'_>]) -> Vec<Timing> {
    for scrape in scrapes.iter_mut() {
        for _ in 0..5 {
            black_box(scrape());
        }
    }
    let n = scrapes.len();
    let mut samples = vec![Vec::with_capacity(SCRAPES); n];
    let mut bytes = vec![0; n];
    let mut allocations = vec![0; n];
    for round in 0..SCRAPES {
        for k in 0..n {
            let which = (round + k) % n;
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            let start = Instant::now();
            bytes[which] = black_box(scrapes[which]());
            samples[which].push(start.elapsed());
            allocations[which] += ALLOCATIONS.load(Ordering::Relaxed) - before;
        }
    }
    samples
        .into_iter()
        .zip(bytes)
        .zip(allocations)
        .map(|((mut samples, bytes), allocations)| {
            samples.sort();
            Timing {
                median: samples[samples.len() / 2],
                p99: samples[((samples.len() - 1) as f64 * 0.99).round() as usize],
                bytes,
                allocations: allocations as f64 / SCRAPES as f64,
            }
        })
        .collect()
}

fn scrape_part() -> anyhow::Result<()> {
    let methods = SERVICES * METHODS;
    println!(
        "== scrape: {SERVICES} services x {METHODS} methods x {} statuses, {CALLS_PER_SERIES} calls each, {SCRAPES} scrapes",
        STATUSES.len()
    );
    let metrics = RpcMetrics::builder()
        .conventions(Conventions::Current)
        .max_methods(methods + 10)
        .build()?;
    // What rpc-ext-tracing's layer makes current around the metrics layer:
    // a sampled span, so each call leaves an exemplar.
    let exemplars = std::env::var("SCALE_EXEMPLARS").map_or(true, |v| v != "0");
    let in_span = exemplars.then(|| {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        opentelemetry::Context::new()
            .with_remote_span_context(SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
                SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ))
            .attach()
    });
    for s in 0..SERVICES {
        let service = format!("bench.Service{s:02}");
        for m in 0..METHODS {
            let method = format!("Method{m}");
            for status in STATUSES {
                for c in 0..CALLS_PER_SERIES {
                    let mut call = metrics.start_call(Call::rpc(
                        Side::Server,
                        RpcSystem::Grpc,
                        &service,
                        &method,
                    ));
                    call.request_size(100 + 300 * c);
                    call.finish(status, Some(200 + 700 * c));
                }
            }
        }
    }
    drop(in_span);
    let text = rpc_ext_metrics::encode_text(metrics.registry())?;
    let ours_series = series_count(&text);
    anyhow::ensure!(ours_series >= 10_000, "only {ours_series} series");
    let exemplar_count = rpc_ext_metrics::encode_openmetrics(metrics.registry())?
        .lines()
        .filter(|line| line.contains(" # {"))
        .count();

    // The peer: the same families, labels, buckets and help texts through the
    // `metrics` facade into metrics-exporter-prometheus.
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_duration_seconds".into()),
            DEFAULT_DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Suffix("_size_bytes".into()), DEFAULT_SIZE_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        metrics::describe_histogram!(
            "rpc_server_call_duration_seconds",
            "Duration of RPCs, from the request to the end of the response."
        );
        metrics::describe_gauge!("rpc_server_active_requests", "RPCs in progress.");
        metrics::describe_histogram!(
            "rpc_server_request_size_bytes",
            "Size of request messages, where known."
        );
        metrics::describe_histogram!(
            "rpc_server_response_size_bytes",
            "Size of response messages, where known."
        );
        for s in 0..SERVICES {
            let service = format!("bench.Service{s:02}");
            for m in 0..METHODS {
                let method = format!("Method{m}");
                let per_method = vec![
                    metrics::Label::new("rpc_system_name", "grpc"),
                    metrics::Label::new("rpc_method", format!("{service}/{method}")),
                ];
                for status in STATUSES {
                    let mut per_call = per_method.clone();
                    let error = if status.is_server_error() {
                        status.name()
                    } else {
                        ""
                    };
                    per_call.push(metrics::Label::new(
                        "rpc_response_status_code",
                        status.name(),
                    ));
                    per_call.push(metrics::Label::new("error_type", error));
                    for c in 0..CALLS_PER_SERIES {
                        let start = Instant::now();
                        let in_flight =
                            metrics::gauge!("rpc_server_active_requests", per_method.clone());
                        in_flight.increment(1.0);
                        in_flight.decrement(1.0);
                        metrics::histogram!("rpc_server_request_size_bytes", per_method.clone())
                            .record((100 + 300 * c) as f64);
                        metrics::histogram!("rpc_server_response_size_bytes", per_method.clone())
                            .record((200 + 700 * c) as f64);
                        metrics::histogram!("rpc_server_call_duration_seconds", per_call.clone())
                            .record(start.elapsed().as_secs_f64());
                    }
                }
            }
        }
    });
    let peer_text = handle.render();
    let peer_series = series_count(&peer_text);

    let mut scrapes: Vec<Scrape<'_>> = vec![
        Box::new(|| {
            rpc_ext_metrics::encode_text(metrics.registry())
                .unwrap()
                .len()
        }),
        Box::new(|| {
            rpc_ext_metrics::encode_openmetrics(metrics.registry())
                .unwrap()
                .len()
        }),
        Box::new(|| metrics.registry().gather().len()),
        Box::new(|| handle.render().len()),
    ];
    // SCALE_SCRAPE=text|openmetrics|gather|peer SCALE_SCRAPES=N: that scrape
    // N times and nothing else, for instruction counts under callgrind.
    if let Ok(only) = std::env::var("SCALE_SCRAPE") {
        let index = ["text", "openmetrics", "gather", "peer"]
            .iter()
            .position(|name| *name == only)
            .ok_or_else(|| anyhow::anyhow!("unknown scrape {only:?}"))?;
        let n: usize = std::env::var("SCALE_SCRAPES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10);
        for _ in 0..n {
            black_box(scrapes[index]());
        }
        return Ok(());
    }
    let timings = time_scrapes(&mut scrapes);
    drop(scrapes);
    let [text_timing, open_timing, gather_timing, peer_timing] = &timings[..] else {
        unreachable!("four scrapes")
    };
    println!(
        "series: rpc-ext-metrics {ours_series} ({exemplar_count} exemplars in OpenMetrics), peer {peer_series}"
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10} {:>12}",
        "scrape", "median", "p99", "bytes", "allocations"
    );
    for (name, t) in [
        (
            "rpc-ext-metrics encode_text (Prometheus text 0.0.4)",
            &text_timing,
        ),
        (
            "rpc-ext-metrics encode_openmetrics (OpenMetrics 1.0)",
            &open_timing,
        ),
        (
            "  of which prometheus Registry::gather alone",
            &gather_timing,
        ),
        ("peer: metrics-exporter-prometheus render()", &peer_timing),
    ] {
        println!(
            "{name:<52} {:>10.3?} {:>10.3?} {:>10} {:>12.0}",
            t.median, t.p99, t.bytes, t.allocations
        );
    }
    let ratio = |a: &Timing, b: &Timing| a.median.as_secs_f64() / b.median.as_secs_f64();
    println!(
        "median ratio rpc-ext-metrics / peer: text {:.2}x, openmetrics {:.2}x",
        ratio(text_timing, peer_timing),
        ratio(open_timing, peer_timing)
    );
    println!(
        "per series (median / series): text {:.0} ns, openmetrics {:.0} ns, peer {:.0} ns",
        text_timing.median.as_nanos() as f64 / ours_series as f64,
        open_timing.median.as_nanos() as f64 / ours_series as f64,
        peer_timing.median.as_nanos() as f64 / peer_series as f64,
    );
    Ok(())
}

// -------------------------------------------------------------- resolver

/// The shape of the resolver run: 1,000 services x 100 instances, two tags
/// each, 1,000 updates, 10 s idle unless `SCALE_SERVICES`,
/// `SCALE_INSTANCES`, `SCALE_TAGS`, `SCALE_CHURN`, `SCALE_IDLE_SECS` say
/// otherwise (smaller runs for profiling).
#[derive(Clone, Copy)]
struct Shape {
    services: usize,
    per_service: usize,
    tags: usize,
    churn: usize,
    idle: Duration,
}

impl Shape {
    fn from_env() -> Self {
        let var = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let services = var("SCALE_SERVICES", 1_000);
        let per_service = var("SCALE_INSTANCES", 100).min(254);
        Self {
            services,
            per_service,
            tags: var("SCALE_TAGS", 2).min(2),
            churn: var("SCALE_CHURN", 1_000).min(services * per_service),
            idle: Duration::from_secs(var("SCALE_IDLE_SECS", 10) as u64),
        }
    }

    fn instance(&self, s: usize, i: usize, weight: u32) -> Instance {
        let mut instance = Instance::new(
            service_name(s),
            ([10, (s / 256) as u8, (s % 256) as u8, (i + 1) as u8], 8080).into(),
        )
        .with_weight(weight);
        if self.tags > 0 {
            instance = instance.with_tag("zone", format!("zone-{}", i % 3));
        }
        if self.tags > 1 {
            instance = instance.with_tag("version", "1.4.2");
        }
        instance
    }
}

fn service_name(s: usize) -> String {
    format!("svc-{s:04}")
}

fn instance_key(prefix: &str, instance: &Instance) -> String {
    format!("{prefix}/{}/{}", instance.service, instance.address)
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn live_heap() -> i64 {
    LIVE_BYTES.load(Ordering::Relaxed)
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// User + system CPU time of a process (all its threads, live or exited),
/// from `/proc/<pid>/stat` (clock-tick resolution, 10 ms here).
fn cpu_time(pid: &str, ticks: u64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `fields[0]` is field 3.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((tick(11) + tick(12)) * 1000 / ticks)
}

/// CPU time of a process's live threads in nanoseconds, from
/// `/proc/<pid>/task/*/schedstat`: precise, but forgets exited threads, so
/// only deltas over phases in which no thread exits mean anything.
fn cpu_time_precise(pid: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

fn tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// etcd's `/metrics` gauge `name`, or -1.
async fn etcd_gauge(http: &reqwest::Client, endpoint: &str, name: &str) -> f64 {
    let Ok(response) = http.get(format!("{endpoint}/metrics")).send().await else {
        return -1.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

/// A snapshot of the process: memory, CPU, tasks, etcd CPU.
#[derive(Clone, Copy)]
struct Probe {
    at: Instant,
    rss: u64,
    heap: i64,
    cpu: Duration,
    cpu_precise: Duration,
    etcd_cpu: Duration,
    etcd_cpu_precise: Duration,
    tasks: usize,
}

struct Prober {
    ticks: u64,
    etcd_pid: String,
}

impl Prober {
    fn probe(&self) -> Probe {
        Probe {
            at: Instant::now(),
            rss: rss(),
            heap: live_heap(),
            cpu: cpu_time("self", self.ticks),
            cpu_precise: cpu_time_precise("self"),
            etcd_cpu: cpu_time(&self.etcd_pid, self.ticks),
            etcd_cpu_precise: cpu_time_precise(&self.etcd_pid),
            tasks: tasks(),
        }
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
}

/// One line per phase: wall time; CPU of this process and of etcd, from
/// `stat` (complete, 10 ms ticks) and in parentheses from `schedstat`
/// (live threads, ns); RSS, live heap and task deltas.
fn report_delta(what: &str, from: &Probe, to: &Probe) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what:<40} wall {:>9.1} ms  cpu {:>6.0} ms ({:>7.1})  etcd cpu {:>6.0} ms ({:>7.1})  rss {:>+10}  heap {:>+10}  tasks {:>+6}",
        ms(to.at - from.at),
        ms(to.cpu.saturating_sub(from.cpu)),
        ms(to.cpu_precise.saturating_sub(from.cpu_precise)),
        ms(to.etcd_cpu.saturating_sub(from.etcd_cpu)),
        ms(to.etcd_cpu_precise.saturating_sub(from.etcd_cpu_precise)),
        mib(to.rss as f64 - from.rss as f64),
        mib((to.heap - from.heap) as f64),
        to.tasks as i64 - from.tasks as i64,
    );
}

/// Deterministic pseudo-random numbers (xorshift64*), no extra crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Puts `instances` under `prefix`, one put each, `concurrency` at a time.
async fn put_each(
    client: &etcd_client::Client,
    prefix: &str,
    instances: &[Instance],
    concurrency: usize,
) -> anyhow::Result<()> {
    futures::stream::iter(instances)
        .map(|instance| {
            let mut client = client.clone();
            let key = instance_key(prefix, instance);
            let value = encode_instance(instance);
            async move { client.put(key, value, None).await }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Subscribes to every service at once; returns the watches.
async fn subscribe_all(
    resolver: &EtcdResolver,
    services: &[String],
) -> anyhow::Result<Vec<ServiceWatch>> {
    let watches = futures::future::join_all(services.iter().map(|s| resolver.subscribe(s)))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(watches)
}

/// Waits until etcd reports at least `count` watchers (or 60 s pass).
async fn wait_watchers(http: &reqwest::Client, endpoint: &str, count: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let watchers = etcd_gauge(http, endpoint, "etcd_debugging_mvcc_watcher_total").await;
        if watchers >= count || Instant::now() > deadline {
            return watchers;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the resolver part; returns the live heap per instance net of the
/// per-service cost.
async fn resolver_part() -> anyhow::Result<f64> {
    const PREFIX: &str = rpc_ext_registry::etcd::DEFAULT_PREFIX;
    let shape = Shape::from_env();
    let total = shape.services * shape.per_service;
    println!(
        "== resolver: {total} instances, {} services x {}, {} tags each, real etcd",
        shape.services, shape.per_service, shape.tags
    );
    let etcd = EtcdServer::start().await?;
    let endpoint = etcd.endpoint();
    let http = reqwest::Client::new();
    let prober = Prober {
        ticks: clock_ticks_per_second(),
        etcd_pid: etcd.pid().map_or("0".to_owned(), |p| p.to_string()),
    };
    let loader = etcd_client::Client::connect([endpoint.as_str()], None).await?;
    let services: Vec<String> = (0..shape.services).map(service_name).collect();

    // Load: one txn of 100 puts per service (etcd's --max-txn-ops is 128),
    // 16 txns in flight.
    let value_bytes = encode_instance(&shape.instance(0, 0, 10)).len();
    let load_start = Instant::now();
    futures::stream::iter(0..shape.services)
        .map(|s| {
            let mut client = loader.clone();
            let ops: Vec<etcd_client::TxnOp> = (0..shape.per_service)
                .map(|i| {
                    let instance = shape.instance(s, i, 10);
                    etcd_client::TxnOp::put(
                        instance_key(PREFIX, &instance),
                        encode_instance(&instance),
                        None,
                    )
                })
                .collect();
            async move { client.txn(etcd_client::Txn::new().and_then(ops)).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    println!(
        "loaded {total} keys in {:.2?} (value {value_bytes} bytes, e.g. {})",
        load_start.elapsed(),
        String::from_utf8_lossy(&encode_instance(&shape.instance(0, 0, 10)))
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Subscribe to everything at once.
    let before = prober.probe();
    let resolver = EtcdResolver::builder([endpoint.as_str()]).build().await?;
    let mut watches = subscribe_all(&resolver, &services).await?;
    for watch in &mut watches {
        watch
            .wait_for(|instances| instances.len() == shape.per_service)
            .await?;
    }
    let listed = prober.probe();
    let watchers = wait_watchers(&http, &endpoint, shape.services as f64).await;
    let watching = prober.probe();
    let streams = etcd_gauge(&http, &endpoint, "etcd_debugging_mvcc_watch_stream_total").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = prober.probe();
    let instances_seen: usize = watches.iter().map(|w| w.current().instances.len()).sum();
    println!("instances in snapshots: {instances_seen}; etcd watchers {watchers}, watch streams {streams}");
    report_delta("build + subscribe -> all instances", &before, &listed);
    report_delta("build + subscribe -> all etcd watchers", &before, &watching);
    report_delta("... and 2 s later (settled)", &before, &settled);
    println!(
        "settled: rss {} -> {}, live heap {} -> {}, tasks {} -> {}",
        mib(before.rss as f64),
        mib(settled.rss as f64),
        mib(before.heap as f64),
        mib(settled.heap as f64),
        before.tasks,
        settled.tasks
    );

    // Churn: 1,000 random instances re-put with a new weight.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut picked: BTreeMap<(usize, usize), ()> = BTreeMap::new();
    while picked.len() < shape.churn {
        picked.insert(
            (rng.below(shape.services), rng.below(shape.per_service)),
            (),
        );
    }
    let updates: Vec<Instance> = picked
        .keys()
        .map(|&(s, i)| shape.instance(s, i, 20))
        .collect();
    let mut by_service: BTreeMap<usize, Vec<std::net::SocketAddr>> = BTreeMap::new();
    for &(s, i) in picked.keys() {
        by_service
            .entry(s)
            .or_default()
            .push(shape.instance(s, i, 20).address);
    }
    let churn_start = prober.probe();
    let waits = futures::future::join_all(by_service.iter().map(|(&s, addresses)| {
        let mut watch = watches[s].clone();
        async move {
            watch
                .wait_for(|instances| {
                    addresses.iter().all(|a| {
                        instances
                            .binary_search_by_key(a, |i| i.address)
                            .is_ok_and(|at| instances[at].weight == 20)
                    })
                })
                .await
                .map(|_| churn_start.at.elapsed())
        }
    }));
    let puts = async {
        put_each(&loader, PREFIX, &updates, 32).await?;
        anyhow::Ok(churn_start.at.elapsed())
    };
    let (seen, puts_done) = tokio::join!(waits, puts);
    let puts_done = puts_done?;
    let mut seen = seen.into_iter().collect::<Result<Vec<_>, _>>()?;
    let churn_end = prober.probe();
    seen.sort();
    println!(
        "churn: {} puts over {} services done in {puts_done:.2?}; last service saw its updates at {:.2?} (per-service completion p50 {:.2?}, p99 {:.2?})",
        shape.churn,
        by_service.len(),
        seen[seen.len() - 1],
        seen[seen.len() / 2],
        seen[((seen.len() - 1) as f64 * 0.99).round() as usize],
    );
    report_delta(
        "churn: watched re-puts until all seen",
        &churn_start,
        &churn_end,
    );

    // Control: the same puts to keys nobody watches (the client's own cost).
    let control_start = prober.probe();
    put_each(&loader, "/unwatched", &updates, 32).await?;
    let control_end = prober.probe();
    report_delta(
        "control: same puts, unwatched keys",
        &control_start,
        &control_end,
    );

    // Idle.
    let idle_start = prober.probe();
    tokio::time::sleep(shape.idle).await;
    let idle_end = prober.probe();
    report_delta("idle, no changes", &idle_start, &idle_end);

    // Per-service cost: 1,000 more subscriptions to services with no instances.
    let empty: Vec<String> = (0..shape.services)
        .map(|s| format!("empty-{s:04}"))
        .collect();
    let empty_start = prober.probe();
    let empty_watches = subscribe_all(&resolver, &empty).await?;
    wait_watchers(&http, &endpoint, 2.0 * shape.services as f64).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let empty_end = prober.probe();
    report_delta(
        "as many services again, 0 instances",
        &empty_start,
        &empty_end,
    );

    let full_heap = (settled.heap - before.heap) as f64;
    let empty_heap = (empty_end.heap - empty_start.heap) as f64;
    let full_rss = settled.rss as f64 - before.rss as f64;
    println!(
        "per instance (all-in, incl. per-service cost): heap {:.0} B, rss {:.0} B",
        full_heap / total as f64,
        full_rss / total as f64
    );
    println!(
        "per service with 0 instances: heap {:.0} B, tasks {:.2}; per instance net of that: heap {:.0} B",
        empty_heap / shape.services as f64,
        (empty_end.tasks as f64 - empty_start.tasks as f64) / shape.services as f64,
        (full_heap - empty_heap) / total as f64
    );
    drop(empty_watches);
    drop(watches);
    drop(resolver);
    Ok((full_heap - empty_heap) / total as f64)
}

// ------------------------------------------------------------------ data

/// Builds `make()`, keeps it while it reads the live heap it added, then
/// drops it; returns the bytes.
fn heap_of<T>(make: impl FnOnce() -> T) -> f64 {
    let before = live_heap();
    let made = black_box(make());
    let bytes = live_heap() - before;
    drop(made);
    bytes as f64
}

/// Where the per-instance bytes go (see the module docs); `net` is the
/// resolver run's per-instance heap net of the per-service cost, if it ran.
fn data_part(shape: &Shape, net: Option<f64>) {
    let total = (shape.services * shape.per_service) as f64;
    let names: Vec<std::sync::Arc<str>> = (0..shape.services)
        .map(|s| service_name(s).into())
        .collect();
    let build = |tags: bool, shared: bool| {
        let shape = Shape {
            tags: if tags { shape.tags } else { 0 },
            ..*shape
        };
        (0..shape.services)
            .map(|s| {
                (0..shape.per_service)
                    .map(|i| {
                        let mut instance = shape.instance(s, i, 10);
                        instance.service = if shared {
                            names[s].clone()
                        } else {
                            (*names[s]).into()
                        };
                        std::sync::Arc::new(instance)
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    // The vectors holding the instances here weigh 8 bytes per instance:
    // taken off, they stand for the resolver's own references.
    let holder = 8.0;
    let bare = heap_of(|| build(false, true)) / total - holder;
    let tagged = heap_of(|| build(true, true)) / total - holder;
    let unshared = heap_of(|| build(true, false)) / total - holder;
    let lists = build(true, true);
    let snapshots = heap_of(|| {
        lists
            .iter()
            .map(|list| ServiceSnapshot::new(list.clone(), 1))
            .collect::<Vec<_>>()
    }) / total;
    drop(lists);
    println!(
        "== data per instance (public types, {} services x {}, {} tags), live heap:",
        shape.services, shape.per_service, shape.tags
    );
    println!("Arc<Instance>, no tags, service name shared      {bare:>6.0} B");
    println!(
        "+ its tags (Tags)                                {:>6.0} B",
        tagged - bare
    );
    println!("snapshot entry (ServiceSnapshot::new)            {snapshots:>6.0} B");
    println!(
        "(a service name per instance instead of shared:  {:>+6.0} B)",
        unshared - tagged
    );
    if let Some(net) = net {
        println!(
            "resolver's own (net {net:.0} B less the above):      {:>6.0} B",
            net - tagged - snapshots
        );
    }
}
