//! Whether rpc-ext-metrics' shared state (the method cache, the in-flight
//! gauges, the histogram series) costs scaling from one core to two:
//! calls per second through a server layer from 1 and from 2 OS threads,
//! bare and with the metrics layer, and the 1 → 2 scaling of each.
//!
//! ```text
//! cargo bench -p tests --bench contention
//! ```
//!
//! Two stacks: rpc-ext-metrics' tower server layer
//! (`tower::MetricsLayer::server`, the tonic/axum path) and its Volo gRPC
//! server layer (`volo::MetricsLayer::server`), each around an inner service
//! that answers at once (one data frame, then `grpc-status: 0` trailers);
//! bare is the same inner service without the layer. Every call is built
//! as a server sees it (`POST http://127.0.0.1:50051/echo.Echo/Method{i}`,
//! `content-type: application/grpc`, a small message; a Volo server
//! context naming the method) and its response body is read to the end.
//! No network and no async runtime: each thread calls in a loop and polls
//! each future once with a no-op waker (nothing in the path waits), so
//! the threads do nothing but calls.
//!
//! Two method mixes:
//!
//! - `many`: each call picks one of `CONTENTION_METHODS` (default 64)
//!   methods at random, so the method cache holds many entries and the
//!   per-thread cache of recent methods mostly misses: the shared map is
//!   read on nearly every call, and two threads seldom update the same
//!   series at the same moment (though the series a call updates was
//!   most likely updated by the other core since this one last did);
//! - `hot`: every call is the same method: both threads update one
//!   method's in-flight gauge, duration histogram and size histograms (and
//!   its cache entry's reference count), the worst case for atomics shared
//!   between cores.
//!
//! Each thread count runs `CONTENTION_RUN_MS` (default 300 ms) per case and
//! round; a round runs bare and metrics at 1 and 2 threads back to back
//! for every stack and mix, forward in rounds 1, 3, ... and backward in
//! rounds 2, 4, ... (`CONTENTION_ROUNDS`, default 21). Per round, QPS
//! scaling = QPS(2 threads) / QPS(1 thread), for bare and for metrics, and
//! metrics' scaling divided by bare's in the same round; reported as
//! medians over rounds with their interquartile range. Target: metrics'
//! scaling at most 3% below bare's (at least 0.97 of it). Threads are not
//! pinned.
//!
//! On a shared machine other tenants take cores away, and two threads that
//! take turns on one core share nothing between cores. So each thread also
//! times every batch of 64 calls and reads its own CPU time
//! (`/proc/thread-self/schedstat`):
//!
//! - quiet rounds are those in which every thread of a group's four runs
//!   was on a CPU at least 95% of the time: their QPS scaling is the
//!   verdict if there are at least 5;
//! - "scaling at once" = 2 × (ns per call alone) / (ns per call at once):
//!   alone is the median uninterrupted batch at 1 thread, at once the
//!   median batch at 2 threads among those the other thread's
//!   uninterrupted batches cover from start to end (both cores running
//!   calls; a preempted batch takes a time slice, milliseconds, and is left
//!   out). It is the scaling two cores to the bench alone would show, and
//!   is the verdict when there are too few quiet rounds.
//!
//! The output says how noisy the machine was: the load average before and
//! after, the CPU time stolen by the hypervisor, how much of the wall time
//! the 2-thread runs' threads were on a CPU, and the spread of bare's
//! 1-thread QPS across rounds. The scrape endpoint is not part of this:
//! nothing reads the registry while the calls run.
//!
//! Environment: `CONTENTION_ROUNDS` (default 21), `CONTENTION_RUN_MS`
//! (default 300), `CONTENTION_METHODS` (default 64), `CONTENTION_STACKS`
//! (`tower,volo`), `CONTENTION_MIXES` (`many,hot`).

use std::{
    convert::Infallible,
    future::Future,
    hint::black_box,
    marker::PhantomData,
    pin::{pin, Pin},
    sync::Barrier,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};
use tests::bench_report::{fmt_thousands, median};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body, Frame};
use http_body_util::Full;
use motore::layer::Layer as _;
use rpc_ext_metrics::RpcMetrics;
use tower::Layer as _;
use volo::context::Context as _;

/// A gRPC message: the 5-byte prefix (not compressed, 9 bytes) and a
/// protobuf `SayRequest { message: "hello" }`-sized payload.
const MESSAGE: &[u8] = b"\x00\x00\x00\x00\x09\x0a\x07hello!!";

/// Calls between two looks at the clock.
const BATCH: u64 = 64;

/// Polls a future that must be ready at once: nothing in these services
/// waits.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a call waited: the bench's services never do"),
    }
}

/// Reads a body to its end, as a server sends it: every frame, trailers
/// included.
fn drain<B: Body>(body: B)
where
    B::Error: std::fmt::Debug,
{
    let mut body = pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                black_box(frame.expect("the bench's bodies do not fail"));
            }
            Poll::Ready(None) => return,
            Poll::Pending => panic!("a body waited: the bench's bodies never do"),
        }
    }
}

/// A unary gRPC response body: one message, then `grpc-status: 0`.
struct UnaryBody<E> {
    message: Option<Bytes>,
    trailers: bool,
    error: PhantomData<fn() -> E>,
}

impl<E> UnaryBody<E> {
    fn new() -> Self {
        Self {
            message: Some(Bytes::from_static(MESSAGE)),
            trailers: true,
            error: PhantomData,
        }
    }
}

impl<E> Body for UnaryBody<E> {
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && !self.trailers
    }
}

/// The tower inner service: reads the request message, answers one.
async fn tower_echo(
    request: Request<Full<Bytes>>,
) -> Result<Response<UnaryBody<Infallible>>, Infallible> {
    drain(request.into_body());
    let mut response = Response::new(UnaryBody::new());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

/// A server request for `uri`, as hyper hands it to a tonic server.
fn tower_request(uri: &Uri) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::from_static(MESSAGE)));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    request
}

/// One tower call, as a server makes it: ready, call, send the body.
fn tower_call<S, B>(service: &mut S, uri: &Uri)
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    now(std::future::poll_fn(|cx| service.poll_ready(cx))).expect("ready");
    let response = now(service.call(tower_request(uri))).expect("answered");
    drain(response.into_body());
}

/// The Volo gRPC inner service: reads the request message, answers one
/// (status in the trailers, as a generated unary handler's encoder does).
#[derive(Clone)]
struct VoloEcho;

impl motore::service::Service<volo_grpc::context::ServerContext, volo_grpc::Request<Bytes>>
    for VoloEcho
{
    type Response = volo_grpc::Response<volo_grpc::body::BoxBody>;
    type Error = volo_grpc::Status;

    async fn call(
        &self,
        _: &mut volo_grpc::context::ServerContext,
        request: volo_grpc::Request<Bytes>,
    ) -> Result<Self::Response, Self::Error> {
        black_box(request.into_inner());
        Ok(volo_grpc::Response::new(volo_grpc::body::boxed(
            UnaryBody::<Infallible>::new(),
        )))
    }
}

/// One Volo call as a server's front layer sees it: a fresh context naming
/// the method, the response body read to its end.
fn volo_call<S>(service: &S, path: &'static str)
where
    S: motore::service::Service<
        volo_grpc::context::ServerContext,
        volo_grpc::Request<Bytes>,
        Response = volo_grpc::Response<volo_grpc::body::BoxBody>,
        Error = volo_grpc::Status,
    >,
{
    let mut cx = volo_grpc::context::ServerContext::default();
    cx.rpc_info_mut()
        .set_method(faststr::FastStr::from_static_str(path));
    let request = volo_grpc::Request::new(Bytes::from_static(MESSAGE));
    let response = now(service.call(&mut cx, request)).expect("answered");
    drain(response.into_inner());
}

/// The method paths, one per method, made once (`'static`: building a call
/// copies no string and touches no shared reference count).
struct Methods {
    paths: Vec<&'static str>,
    uris: Vec<Uri>,
}

impl Methods {
    fn new(count: usize) -> Self {
        let paths: Vec<&'static str> = (0..count)
            .map(|i| &*Box::leak(format!("/echo.Echo/Method{i}").into_boxed_str()))
            .collect();
        let uris = paths
            .iter()
            .map(|path| {
                Uri::from_static(Box::leak(
                    format!("http://127.0.0.1:50051{path}").into_boxed_str(),
                ))
            })
            .collect();
        Self { paths, uris }
    }

    fn len(&self) -> usize {
        self.paths.len()
    }
}

/// xorshift64*: a method per call at the cost of a few instructions, the
/// same for every case.
struct Picker(u64);

impl Picker {
    fn new(thread: usize) -> Self {
        Self(0x9E37_79B9_7F4A_7C15 ^ (thread as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9))
    }

    fn pick(&mut self, methods: usize) -> usize {
        if methods == 1 {
            return 0;
        }
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % methods
    }
}

/// Nanoseconds this thread has been on a CPU (user and kernel), from
/// `/proc/thread-self/schedstat`.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What one thread did in one run.
struct ThreadRun {
    calls: u64,
    elapsed: Duration,
    cpu_ns: Option<u64>,
    /// Each batch of [`BATCH`] calls: start and end, in nanoseconds since
    /// the run's epoch (shared by its threads).
    batches: Vec<(u64, u64)>,
}

impl ThreadRun {
    /// The batches not interrupted: a batch during which the thread was
    /// preempted takes a time slice of another task (milliseconds) more
    /// than the tens of microseconds of the others, so anything over four
    /// times this thread's median batch is one.
    fn clean_batches(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let limit = 4.0 * median(self.batches.iter().map(|(s, e)| (e - s) as f64).collect());
        self.batches
            .iter()
            .copied()
            .filter(move |(start, end)| ((end - start) as f64) <= limit)
    }
}

/// One run of one case at one thread count.
struct Run {
    threads: Vec<ThreadRun>,
}

impl Run {
    /// Calls per second of all threads together.
    fn qps(&self) -> f64 {
        self.threads
            .iter()
            .map(|t| t.calls as f64 / t.elapsed.as_secs_f64())
            .sum()
    }

    /// The share of the wall time the threads were on a CPU (1.0: never
    /// preempted).
    fn on_cpu(&self) -> f64 {
        let cpu: Option<u64> = self.threads.iter().map(|t| t.cpu_ns).sum();
        let wall: f64 = self.threads.iter().map(|t| t.elapsed.as_secs_f64()).sum();
        cpu.map_or(f64::NAN, |ns| ns as f64 / 1e9 / wall)
    }

    /// The least on-CPU share of any of the threads: near 1.0 for two
    /// threads means both ran at once nearly all the time (on a shared
    /// machine they may instead take turns on one core, which shares
    /// nothing between cores).
    fn least_on_cpu(&self) -> f64 {
        self.threads
            .iter()
            .map(|t| {
                t.cpu_ns
                    .map_or(f64::NAN, |ns| ns as f64 / 1e9 / t.elapsed.as_secs_f64())
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// Nanoseconds per call in the median uninterrupted batch: of a
    /// 1-thread run, the cost of a call with a core to itself.
    fn solo_ns(&self) -> f64 {
        median(
            self.threads
                .iter()
                .flat_map(ThreadRun::clean_batches)
                .map(|(start, end)| (end - start) as f64 / BATCH as f64)
                .collect(),
        )
    }

    /// Of a 2-thread run: nanoseconds per call in the median batch that ran
    /// while the other thread ran too (the other thread's uninterrupted
    /// batches cover it from start to end), and the share of batches that
    /// did. Whatever else the machine runs, these batches are the two
    /// cores running calls at once.
    fn concurrent_ns(&self) -> (f64, f64) {
        let [a, b] = &self.threads[..] else {
            return (f64::NAN, f64::NAN);
        };
        let (a_clean, b_clean): (Vec<_>, Vec<_>) =
            (a.clean_batches().collect(), b.clean_batches().collect());
        let mut ns = covered(&a_clean, &b_clean);
        ns.extend(covered(&b_clean, &a_clean));
        let share = ns.len() as f64 / (a.batches.len() + b.batches.len()).max(1) as f64;
        (median(ns), share)
    }
}

/// Nanoseconds per call of the batches of `mine` that `other`'s batches
/// cover without a gap (both lists sorted, as recorded).
fn covered(mine: &[(u64, u64)], other: &[(u64, u64)]) -> Vec<f64> {
    // Between two batches a thread only reads the clock.
    const GAP_NS: u64 = 1_000;
    let mut found = Vec::new();
    let mut first = 0;
    for &(start, end) in mine {
        // The first of `other`'s batches that ends after this one starts.
        while other.get(first).is_some_and(|&(_, e)| e <= start) {
            first += 1;
        }
        let mut reached = start;
        let mut next = first;
        let mut covering = other.get(next).is_some_and(|&(s, _)| s <= start);
        while covering && reached < end {
            match other.get(next) {
                Some(&(s, e)) if s <= reached + GAP_NS => {
                    reached = reached.max(e);
                    next += 1;
                }
                _ => covering = false,
            }
        }
        if covering && reached >= end {
            found.push((end - start) as f64 / BATCH as f64);
        }
    }
    found
}

/// Runs `threads` threads for `run_for`, each making calls with its own
/// worker from `make` (given a method index per call) as fast as it can.
fn measure<M, W>(threads: usize, run_for: Duration, methods: usize, make: &M) -> Run
where
    M: Fn() -> W + Sync,
    W: FnMut(usize),
{
    let barrier = Barrier::new(threads);
    let epoch = Instant::now();
    // Room for batches of 5 µs (80 ns a call) and more.
    let room = (run_for.as_nanos() / 5_000) as usize;
    let threads = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut call = make();
                    let mut picker = Picker::new(thread);
                    let mut batches = Vec::with_capacity(room);
                    // This thread's own caches (the recent methods) warm
                    // before the clock starts.
                    for _ in 0..BATCH {
                        call(picker.pick(methods));
                    }
                    barrier.wait();
                    let cpu_start = thread_cpu_ns();
                    let start = Instant::now();
                    let deadline = start + run_for;
                    let since_epoch = |at: Instant| (at - epoch).as_nanos() as u64;
                    let mut batch_start = since_epoch(start);
                    let mut calls = 0;
                    loop {
                        for _ in 0..BATCH {
                            call(picker.pick(methods));
                        }
                        calls += BATCH;
                        let at = Instant::now();
                        let batch_end = since_epoch(at);
                        batches.push((batch_start, batch_end));
                        batch_start = batch_end;
                        if at >= deadline {
                            let cpu_ns = thread_cpu_ns()
                                .zip(cpu_start)
                                .map(|(end, start)| end.saturating_sub(start));
                            return ThreadRun {
                                calls,
                                elapsed: at - start,
                                cpu_ns,
                                batches,
                            };
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a bench thread panicked"))
            .collect()
    });
    Run { threads }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    Tower,
    Volo,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Self::Tower => "tower",
            Self::Volo => "volo",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    Many,
    Hot,
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Self::Many => "many",
            Self::Hot => "hot",
        }
    }
}

/// One stack and mix: its metrics (a registry of its own), and the runs
/// of bare and metrics at 1 and 2 threads, one per round.
struct Group {
    stack: Stack,
    mix: Mix,
    methods: Methods,
    metrics: RpcMetrics,
    /// `[bare, metrics][1 thread, 2 threads]`.
    runs: [[Vec<Run>; 2]; 2],
}

impl Group {
    fn new(stack: Stack, mix: Mix, methods: usize) -> anyhow::Result<Self> {
        Ok(Self {
            stack,
            mix,
            methods: Methods::new(match mix {
                Mix::Many => methods,
                Mix::Hot => 1,
            }),
            metrics: RpcMetrics::builder().build()?,
            runs: Default::default(),
        })
    }

    /// Runs bare (`layered` false) or metrics at `threads` threads.
    fn run(&self, layered: bool, threads: usize, run_for: Duration) -> Run {
        let methods = &self.methods;
        let count = methods.len();
        match (self.stack, layered) {
            (Stack::Tower, false) => {
                // A service per thread, as a server has one per connection.
                let make = || {
                    let mut service = tower::service_fn(tower_echo);
                    move |method: usize| tower_call(&mut service, &methods.uris[method])
                };
                measure(threads, run_for, count, &make)
            }
            (Stack::Tower, true) => {
                let layer = rpc_ext_metrics::tower::MetricsLayer::server(&self.metrics);
                let make = || {
                    let mut service = layer.layer(tower::service_fn(tower_echo));
                    move |method: usize| tower_call(&mut service, &methods.uris[method])
                };
                measure(threads, run_for, count, &make)
            }
            // One service shared by every thread, as a Volo server shares
            // its service between connections.
            (Stack::Volo, false) => {
                let service = VoloEcho;
                let make = || |method: usize| volo_call(&service, methods.paths[method]);
                measure(threads, run_for, count, &make)
            }
            (Stack::Volo, true) => {
                let service =
                    rpc_ext_metrics::volo::MetricsLayer::server(&self.metrics).layer(VoloEcho);
                let make = || |method: usize| volo_call(&service, methods.paths[method]);
                measure(threads, run_for, count, &make)
            }
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} does not parse")),
        Err(_) => default,
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

/// Median and interquartile range (nearest rank).
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.retain(|value| value.is_finite());
    values.sort_by(f64::total_cmp);
    let last = values.len().saturating_sub(1);
    let rank = |q: f64| {
        values
            .get((last as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (rank(0.25), median(values.clone()), rank(0.75))
}

fn fmt_spread((low, mid, high): (f64, f64, f64)) -> String {
    format!("{mid:.3} ({low:.3}–{high:.3})")
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// `(steal, total)` jiffies of all CPUs, from `/proc/stat`.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    Some((*fields.get(7)?, fields.iter().take(8).sum()))
}

/// Per round, what `per_round` makes of `layered`'s 1-thread and 2-thread
/// runs.
fn per_round(group: &Group, layered: usize, of: impl Fn(&Run, &Run) -> f64) -> Vec<f64> {
    let [one, two] = &group.runs[layered];
    one.iter().zip(two).map(|(one, two)| of(one, two)).collect()
}

/// QPS at 2 threads / QPS at 1 thread.
fn qps_scaling(one: &Run, two: &Run) -> f64 {
    two.qps() / one.qps()
}

/// 2 × a call's time alone / its time while both threads ran: what
/// scaling would be with two cores to the bench alone.
fn at_once_scaling(one: &Run, two: &Run) -> f64 {
    2.0 * one.solo_ns() / two.concurrent_ns().0
}

/// A run is quiet if each of its threads was on a CPU this share of the
/// time.
const QUIET: f64 = 0.95;
/// Quiet rounds needed for a verdict on QPS scaling.
const MIN_QUIET: usize = 5;
/// The target: metrics' scaling at most 3% below bare's.
const TARGET: f64 = 0.97;

fn report(groups: &[Group], rounds: usize, run_for: Duration, methods: usize) {
    println!(
        "\n{rounds} rounds of {} ms per case and thread count; `many`: {methods} methods \
         picked at random per call, `hot`: one method. Medians over rounds, \
         interquartile range in brackets. QPS scaling: QPS at 2 threads / QPS at 1 \
         thread, same round. Alone: ns per call in the median uninterrupted batch of \
         {BATCH} calls at 1 thread; at once: the same at 2 threads, over the batches \
         during which the other thread was running too (their share in brackets); \
         scaling at once: 2 × alone / at once, same round. On CPU: share of the \
         2-thread runs' wall time their threads ran.\n",
        run_for.as_millis()
    );
    println!(
        "| stack | methods | case | QPS, 1 thread | QPS, 2 threads | QPS scaling (IQR) | ns/call alone | ns/call at once (share) | scaling at once (IQR) | on CPU, 2 threads |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for group in groups {
        for (layered, case) in ["bare", "rpc-ext-metrics"].into_iter().enumerate() {
            let [one, two] = &group.runs[layered];
            println!(
                "| {} | {} | {case} | {} | {} | {} | {:.0} | {:.0} ({:.0}%) | {} | {:.2} |",
                group.stack.name(),
                group.mix.name(),
                fmt_thousands(median(one.iter().map(Run::qps).collect())),
                fmt_thousands(median(two.iter().map(Run::qps).collect())),
                fmt_spread(spread(per_round(group, layered, qps_scaling))),
                median(one.iter().map(Run::solo_ns).collect()),
                median(two.iter().map(|run| run.concurrent_ns().0).collect()),
                100.0 * median(two.iter().map(|run| run.concurrent_ns().1).collect()),
                fmt_spread(spread(per_round(group, layered, at_once_scaling))),
                median(two.iter().map(Run::on_cpu).collect()),
            );
        }
    }

    println!(
        "\nMetrics' scaling relative to bare's, per round (target: ≥ {TARGET:.3}, at most \
         3% worse). Quiet rounds: those in which every thread of the group's four runs \
         was on a CPU at least {:.0}% of the time. The verdict is on QPS scaling in \
         quiet rounds if there are at least {MIN_QUIET}, else on scaling at once (which \
         only counts time both threads ran, whatever else the machine ran). Per-call \
         cost: metrics' QPS / bare's at 1 thread, same round.\n",
        QUIET * 100.0
    );
    println!(
        "| stack | methods | QPS scaling vs bare, all rounds (IQR) | quiet rounds | QPS scaling vs bare, quiet rounds (IQR) | scaling at once vs bare (IQR) | per-call cost, 1 thread (IQR) | within 3% |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for group in groups {
        let quiet: Vec<bool> = (0..rounds)
            .map(|round| {
                group.runs.iter().flatten().all(|runs| {
                    runs.get(round)
                        .is_some_and(|run| run.least_on_cpu() >= QUIET)
                })
            })
            .collect();
        let quiet_rounds = quiet.iter().filter(|quiet| **quiet).count();
        let relative = |of: fn(&Run, &Run) -> f64, only_quiet: bool| -> Vec<f64> {
            per_round(group, 1, of)
                .into_iter()
                .zip(per_round(group, 0, of))
                .zip(&quiet)
                .filter(|(_, quiet)| **quiet || !only_quiet)
                .map(|((metrics, bare), _)| metrics / bare)
                .collect()
        };
        let all = spread(relative(qps_scaling, false));
        let calm = spread(relative(qps_scaling, true));
        let at_once = spread(relative(at_once_scaling, false));
        let cost: Vec<f64> = group.runs[1][0]
            .iter()
            .zip(&group.runs[0][0])
            .map(|(metrics, bare)| metrics.qps() / bare.qps())
            .collect();
        let verdict = match (quiet_rounds >= MIN_QUIET, calm.1, at_once.1) {
            (true, relative, _) if relative >= TARGET => "yes",
            (true, _, _) => "no",
            (false, _, relative) if relative >= TARGET => "yes (at once)",
            (false, _, _) => "no (at once)",
        };
        println!(
            "| {} | {} | {} | {quiet_rounds} of {rounds} | {} | {} | {} | {verdict} |",
            group.stack.name(),
            group.mix.name(),
            fmt_spread(all),
            if quiet_rounds == 0 {
                "—".into()
            } else {
                fmt_spread(calm)
            },
            fmt_spread(at_once),
            fmt_spread(spread(cost)),
        );
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let rounds: usize = env_or("CONTENTION_ROUNDS", 21usize).max(1);
    let run_for = Duration::from_millis(env_or("CONTENTION_RUN_MS", 300u64).max(10));
    let methods: usize = env_or("CONTENTION_METHODS", 64usize).max(1);
    let mut groups = Vec::new();
    for stack in env_list("CONTENTION_STACKS", "tower,volo") {
        let stack = match stack.as_str() {
            "tower" => Stack::Tower,
            "volo" => Stack::Volo,
            other => anyhow::bail!("unknown stack {other:?} (tower, volo)"),
        };
        for mix in env_list("CONTENTION_MIXES", "many,hot") {
            let mix = match mix.as_str() {
                "many" => Mix::Many,
                "hot" => Mix::Hot,
                other => anyhow::bail!("unknown mix {other:?} (many, hot)"),
            };
            groups.push(Group::new(stack, mix, methods)?);
        }
    }
    let load_before = load_average();
    let jiffies_before = cpu_jiffies();
    eprintln!(
        "contention: {} groups, {rounds} rounds of {} ms per case, {methods} methods in `many`",
        groups.len(),
        run_for.as_millis()
    );

    // Warm-up: every method's series exist (a server's methods become
    // series after their first successful call) and the code is hot.
    for group in &groups {
        for layered in [false, true] {
            for threads in [1, 2] {
                group.run(layered, threads, run_for);
            }
        }
    }

    // (layered, threads): bare 1, metrics 1, bare 2, metrics 2.
    let order = [(0, 0), (1, 0), (0, 1), (1, 1)];
    for round in 0..rounds {
        let forward = round % 2 == 0;
        let mut cases: Vec<(usize, usize, usize)> = (0..groups.len())
            .flat_map(|group| order.map(|(layered, threads)| (group, layered, threads)))
            .collect();
        if !forward {
            cases.reverse();
        }
        for (index, layered, threads) in cases {
            let group = &mut groups[index];
            let run = group.run(layered == 1, threads + 1, run_for);
            eprintln!(
                "round {:>2} {:<5} {:<4} {:<7} {} thread(s) {:>12} QPS  on CPU {:.2}",
                round + 1,
                group.stack.name(),
                group.mix.name(),
                if layered == 1 { "metrics" } else { "bare" },
                threads + 1,
                fmt_thousands(run.qps()),
                run.on_cpu(),
            );
            group.runs[layered][threads].push(run);
        }
    }

    report(&groups, rounds, run_for, methods);

    let load_after = load_average();
    let steal = cpu_jiffies()
        .zip(jiffies_before)
        .map(|((steal, total), (steal0, total0))| {
            100.0 * (steal - steal0) as f64 / (total - total0).max(1) as f64
        });
    let bare_spread: Vec<String> = groups
        .iter()
        .map(|group| {
            let (low, mid, high) = spread(group.runs[0][0].iter().map(Run::qps).collect());
            format!(
                "{} {} ±{:.1}%",
                group.stack.name(),
                group.mix.name(),
                50.0 * (high - low) / mid
            )
        })
        .collect();
    println!(
        "\nNoise: load average (1 min) {load_before} before, {load_after} after; \
         CPU time stolen by the hypervisor {}; bare's 1-thread QPS across rounds \
         (half the IQR over the median): {}.",
        steal.map_or("unknown".into(), |steal| format!("{steal:.1}%")),
        bare_spread.join(", "),
    );
    Ok(())
}
