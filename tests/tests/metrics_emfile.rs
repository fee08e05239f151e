//! The `/metrics` endpoint out of file descriptors (`EMFILE`): its accept
//! loop backs off instead of spinning, and serves again once descriptors
//! are freed.
//!
//! A test binary of its own with a single test: it lowers this process's
//! open-file limit (with `prlimit`, util-linux, so no unsafe code) and fills
//! the descriptor table, which would break any other test running beside
//! it, and it measures the CPU time of the whole process.
//!
//! How the endpoint is made to fail: the clients' sockets are created
//! before the table is filled and connected after. `connect` needs no new
//! descriptor, the kernel completes the handshakes and queues the
//! connections in the listener's backlog, so the listener is readable while
//! every `accept` fails with `EMFILE` (the kernel checks for a free
//! descriptor before dequeuing, so the connections stay queued). An accept
//! loop that retried at once would spin a core; this one must wait, longer
//! each time, and serve the queued clients once descriptors are free.

use std::{
    fmt,
    fs::File,
    io::{Read, Seek, SeekFrom},
    net::SocketAddr,
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context};
use rpc_ext_metrics::{prometheus, MetricsEndpoint};
use tests::PrometheusServer;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tracing_subscriber::{layer::SubscriberExt, Layer};

/// Clients queued in the backlog while accepts fail.
const QUEUED_CLIENTS: usize = 4;
/// Descriptors left free above the highest one in use when the limit is
/// lowered; the test then fills them.
const SPARE_DESCRIPTORS: u64 = 64;
/// How long accepts are watched failing.
const WINDOW: Duration = Duration::from_secs(2);
/// At most this share of one core over the window. Backing off, the loop
/// wakes about 8 times in 2 s (measured: 0 ms of CPU, below the 10 ms
/// clock tick); retrying at once it used 78% of a core.
const MAX_CPU_SHARE: f64 = 0.05;
/// At most this many failed accepts in the window: the decisive check.
/// Backing off from 10 ms, doubling up to 1 s, any 2 s window holds at
/// most 8 (at 0, 10, 30, 70, 150, 310, 630 and 1,270 ms). Without the
/// sleep the loop made 264,915; with a zero backoff (tokio's timer rounds
/// `sleep(0)` up to its 1 ms tick) 1,564 at only 8.5% of a core, which the
/// CPU bound alone might let through.
const MAX_FAILED_ACCEPTS_IN_WINDOW: usize = 12;
/// The endpoint sleeps at most 1 s between attempts; the rest is slack for
/// a loaded machine.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(3);

const ERRNO_EMFILE: i32 = 24;

/// One "accept failed; backing off" warning of the endpoint.
#[derive(Debug, Clone)]
struct FailedAccept {
    at: Instant,
    error: String,
    backoff: String,
}

/// Every such warning is counted; the first ones are kept.
#[derive(Default)]
struct AcceptFailures {
    count: AtomicUsize,
    kept: Mutex<Vec<FailedAccept>>,
}

const KEPT_FAILURES: usize = 64;

impl AcceptFailures {
    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn kept(&self) -> Vec<FailedAccept> {
        self.kept.lock().expect("poisoned").clone()
    }
}

fn failures() -> &'static Arc<AcceptFailures> {
    static FAILURES: OnceLock<Arc<AcceptFailures>> = OnceLock::new();
    FAILURES.get_or_init(Arc::default)
}

/// Records the endpoint's accept-failure warnings (and nothing else), so
/// that no log output is written while the table is full.
struct AcceptFailureLayer(Arc<AcceptFailures>);

#[derive(Default)]
struct Fields {
    message: String,
    error: String,
    backoff: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "message" => self.message = text,
            "error" => self.error = text,
            "backoff" => self.backoff = text,
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for AcceptFailureLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let at = Instant::now();
        let metadata = event.metadata();
        if *metadata.level() != tracing::Level::WARN
            || !metadata.target().starts_with("rpc_ext_metrics")
        {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if !fields.message.contains("accept failed") {
            return;
        }
        let seen = self.0.count.fetch_add(1, Ordering::SeqCst);
        if seen < KEPT_FAILURES {
            self.0.kept.lock().expect("poisoned").push(FailedAccept {
                at,
                error: fields.error,
                backoff: fields.backoff,
            });
        }
    }
}

/// `Duration`'s `Debug` form back to a duration: `10ms`, `1s`, `1.28s`.
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1e3,
        "µs" => number / 1e6,
        "ns" => number / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// User plus system CPU time of the whole process (every thread), read
/// from a `/proc/self/stat` opened before the table was filled.
struct CpuClock {
    stat: File,
    ticks_per_second: f64,
}

impl CpuClock {
    fn open() -> anyhow::Result<Self> {
        let output = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .context("running getconf CLK_TCK")?;
        let ticks_per_second: f64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .context("getconf CLK_TCK printed no number")?;
        Ok(Self {
            stat: File::open("/proc/self/stat")?,
            ticks_per_second,
        })
    }

    /// Needs no new descriptor: procfs regenerates the file on every read
    /// from offset 0.
    fn used(&mut self) -> anyhow::Result<Duration> {
        let mut text = String::new();
        self.stat.seek(SeekFrom::Start(0))?;
        self.stat.read_to_string(&mut text)?;
        // Fields after the command name, which may itself hold spaces:
        // state is field 3, utime 14 and stime 15.
        let rest = &text[text.rfind(')').context("no ')' in /proc/self/stat")? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
            + fields.get(12).context("no stime")?.parse::<u64>()?;
        Ok(Duration::from_secs_f64(
            ticks as f64 / self.ticks_per_second,
        ))
    }
}

/// The highest descriptor number this process has open.
fn highest_open_fd() -> anyhow::Result<u64> {
    let mut highest = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if let Ok(fd) = entry?.file_name().to_string_lossy().parse::<u64>() {
            highest = highest.max(fd);
        }
    }
    Ok(highest)
}

/// This process's open-file limits (soft, hard) as `prlimit` reports them.
fn nofile_limits() -> anyhow::Result<(String, String)> {
    let output = prlimit(&["--nofile", "--raw", "--noheadings", "--output=SOFT,HARD"])?;
    let mut fields = output.split_whitespace().map(str::to_owned);
    match (fields.next(), fields.next()) {
        (Some(soft), Some(hard)) => Ok((soft, hard)),
        _ => bail!("unexpected prlimit output {output:?}"),
    }
}

/// Runs `prlimit --pid <this process> <args>`: util-linux changes another
/// process's limits with prlimit(2), which needs no unsafe code here.
fn prlimit(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .args(args)
        .output()
        .map_err(|error| {
            anyhow::anyhow!(
                "could not run `prlimit` ({error}); it comes with util-linux \
                 (Debian: `apt-get install util-linux`)"
            )
        })?;
    if !output.status.success() {
        bail!(
            "prlimit {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `Max open files` of `/proc/self/limits`, soft limit.
fn soft_nofile_in_proc() -> anyhow::Result<String> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .context("no `Max open files` in /proc/self/limits")
}

/// Opens `/dev/null` until the process is out of descriptors; fails on any
/// other error, or if the limit did not take.
fn fill_descriptor_table(most: u64) -> anyhow::Result<Vec<File>> {
    let mut files = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(file) => files.push(file),
            Err(error) if error.raw_os_error() == Some(ERRNO_EMFILE) => return Ok(files),
            Err(error) => return Err(error).context("filling the descriptor table"),
        }
        ensure!(
            files.len() as u64 <= most,
            "opened {} files without EMFILE: the lowered limit did not take",
            files.len()
        );
    }
}

/// A registry with one sample to look for.
fn registry_with_marker() -> anyhow::Result<prometheus::Registry> {
    let registry = prometheus::Registry::new();
    let gauge = prometheus::IntGauge::new("emfile_test_marker", "Set to 7 by the test.")?;
    gauge.set(7);
    registry.register(Box::new(gauge))?;
    Ok(registry)
}

const REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";

/// Reads a `Connection: close` response to its end.
async fn read_response(stream: &mut TcpStream, limit: Duration) -> anyhow::Result<String> {
    let mut response = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut response))
        .await
        .with_context(|| format!("no complete response within {limit:?}"))??;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

async fn get_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(REQUEST).await?;
    read_response(&mut stream, Duration::from_secs(5)).await
}

fn assert_served(response: &str) {
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\nemfile_test_marker 7\n"), "{response}");
}

/// Out of descriptors, the endpoint retries `accept` a handful of times
/// (backing off 10 ms, 20 ms, ... up to 1 s) at almost no CPU, and the
/// clients that queued meanwhile, a new client and a real Prometheus are
/// all served once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_on_emfile_and_recovers() -> anyhow::Result<()> {
    let failures = Arc::clone(failures());
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(AcceptFailureLayer(Arc::clone(&failures))),
    )
    .context("installing the log recorder")?;

    let endpoint = MetricsEndpoint::serve("127.0.0.1:0".parse()?, registry_with_marker()?).await?;
    let addr = endpoint.local_addr();
    assert_served(&get_metrics(addr).await?);

    // Everything that needs a descriptor later is opened now.
    let mut cpu = CpuClock::open()?;
    let mut clients = Vec::new();
    for _ in 0..QUEUED_CLIENTS {
        clients.push(TcpSocket::new_v4()?);
    }
    let (old_soft, hard) = nofile_limits()?;
    // The limit caps descriptor numbers, not their count: leave a few
    // numbers free above the highest in use.
    let highest = highest_open_fd()?;
    let soft = highest + 1 + SPARE_DESCRIPTORS;
    prlimit(&[&format!("--nofile={soft}:{hard}")])?;
    assert_eq!(soft_nofile_in_proc()?, soft.to_string());

    let filler = fill_descriptor_table(soft + 1)?;
    // Queue the clients: connected by the kernel, never accepted while the
    // table is full. Their requests wait in the socket buffers.
    let mut queued = Vec::new();
    for client in clients {
        let mut stream = client.connect(addr).await?;
        stream.write_all(REQUEST).await?;
        queued.push(stream);
    }
    let first_failure = Instant::now() + Duration::from_secs(5);
    while failures.count() == 0 {
        if Instant::now() > first_failure {
            drop(filler);
            bail!("the endpoint logged no failed accept within 5 s of the table filling");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The window: accepts keep failing; count them and the CPU spent.
    let cpu_before = cpu.used()?;
    let failed_before = failures.count();
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let cpu_after = cpu.used()?;
    let failed_in_window = failures.count() - failed_before;
    let window = started.elapsed();
    let filled = filler.len();
    let freed_at = Instant::now();
    drop(filler);

    let cpu_spent = cpu_after.saturating_sub(cpu_before);
    let cpu_share = cpu_spent.as_secs_f64() / window.as_secs_f64();
    let kept = failures.kept();
    let backoffs: Vec<String> = kept.iter().map(|f| f.backoff.clone()).collect();
    println!(
        "out of descriptors (limit {soft}, {filled} files opened to fill it): over {window:.2?} the process \
         used {cpu_spent:?} of CPU ({:.1}% of one core) and the endpoint failed {failed_in_window} \
         accepts ({} in all); backoffs logged: {backoffs:?}",
        cpu_share * 100.0,
        failures.count(),
    );
    assert!(
        failed_in_window <= MAX_FAILED_ACCEPTS_IN_WINDOW,
        "the accept loop spins: {failed_in_window} failed accepts in {window:?} \
         (at most {MAX_FAILED_ACCEPTS_IN_WINDOW} expected)"
    );
    assert!(
        cpu_share < MAX_CPU_SHARE,
        "the process used {:.1}% of a core while accepts failed",
        cpu_share * 100.0
    );
    assert!(
        failed_in_window >= 1,
        "the endpoint stopped retrying while descriptors were out"
    );
    for failure in &kept {
        assert!(
            failure.error.contains(&format!("os error {ERRNO_EMFILE}")),
            "an accept failed with something else than EMFILE: {}",
            failure.error
        );
    }
    // Between two attempts the loop waited at least the backoff it
    // announced, and the backoff grew: 10 ms first, at most 1 s.
    for pair in kept.windows(2) {
        let announced = parse_debug_duration(&pair[0].backoff)
            .with_context(|| format!("backoff {:?}", pair[0].backoff))?;
        let waited = pair[1].at.duration_since(pair[0].at);
        assert!(
            waited + Duration::from_millis(1) >= announced,
            "retried after {waited:?} though the backoff was {announced:?}"
        );
    }
    let announced: Vec<Duration> = kept
        .iter()
        .filter_map(|f| parse_debug_duration(&f.backoff))
        .collect();
    assert_eq!(announced.first(), Some(&Duration::from_millis(10)));
    assert!(announced.windows(2).all(|w| w[1] >= w[0]), "{announced:?}");
    assert!(
        announced.iter().all(|b| *b <= Duration::from_secs(1)),
        "{announced:?}"
    );

    // Recovery: the queued clients are answered within the longest backoff
    // (plus slack), without being reconnected.
    for stream in &mut queued {
        let remaining = RECOVERY_DEADLINE.saturating_sub(freed_at.elapsed());
        assert_served(&read_response(stream, remaining).await?);
    }
    let recovered_in = freed_at.elapsed();
    println!("the {QUEUED_CLIENTS} queued clients were served {recovered_in:?} after the descriptors were freed");
    prlimit(&[&format!("--nofile={old_soft}:{hard}")])?;

    // A new client, then a real Prometheus, are served, and no accept
    // fails any more.
    let failed_at_recovery = failures.count();
    assert_served(&get_metrics(addr).await?);
    let prometheus = PrometheusServer::start(&[addr.to_string()]).await?;
    prometheus
        .wait_for_scrape("emfile_test_marker", 7.0)
        .await?;
    assert_eq!(
        failures.count(),
        failed_at_recovery,
        "accepts failed after the descriptors were freed"
    );
    endpoint.shutdown().await;
    Ok(())
}
