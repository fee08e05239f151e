//! Every value the k8s follower leaves in its channel while its watch
//! expires (410 Gone), loses its connection and lists again.
//!
//! A subscriber cannot check this: `tokio::sync::watch` keeps only the
//! latest value, so a subscriber may skip any of them. Here the follower's
//! event folding ([`Follower::follow`], called once per watcher as
//! [`Follower::run`] does, with the same instance map) is fed the events
//! kube's watcher yields for each fault, and the channel is read before
//! every event is handed over and after each watcher ends. With slices that
//! name no Lease (as here) the follower publishes only while handling an
//! event, at most once per event, so the record holds every value the
//! channel held.

use std::{
    io,
    sync::{Arc, Mutex, MutexGuard},
};

use futures::stream;
use kube::{
    core::Status,
    runtime::watcher::{self, Event},
};
use serde_json::json;
use tokio::sync::watch;

use super::*;
use crate::{health::SubscriptionHealth, ServiceSnapshot};

const PORT: &str = "grpc";

/// One value the channel held.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    ips: Vec<String>,
    generation: u64,
    error: bool,
    /// Whether subscribers were woken for it.
    notified: bool,
}

/// A value subscribers were woken for.
fn held(ips: &[&str], generation: u64, error: bool) -> Held {
    Held {
        ips: ips.iter().map(|ip| format!("{ip}:50051")).collect(),
        generation,
        error,
        notified: true,
    }
}

/// Reads the channel as a subscriber that never falls behind would.
#[derive(Clone)]
struct Recorder {
    rx: Arc<Mutex<watch::Receiver<ServiceSnapshot>>>,
    held: Arc<Mutex<Vec<Held>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Recorder {
    fn new(rx: watch::Receiver<ServiceSnapshot>) -> Self {
        Self {
            rx: Arc::new(Mutex::new(rx)),
            held: Arc::default(),
        }
    }

    /// Records the channel's value if it was sent since the last read, or
    /// changed without waking subscribers.
    fn record(&self) {
        let mut rx = lock(&self.rx);
        let notified = rx.has_changed().unwrap_or(false);
        let snapshot = rx.borrow_and_update().clone();
        let now = Held {
            ips: snapshot
                .instances
                .iter()
                .map(|i| i.address.to_string())
                .collect(),
            generation: snapshot.generation,
            error: snapshot.last_error.is_some(),
            notified,
        };
        let mut held = lock(&self.held);
        let same_as_last = held.last().is_some_and(|last| {
            (&last.ips, last.generation, last.error) == (&now.ips, now.generation, now.error)
        });
        if notified || !same_as_last {
            held.push(now);
        }
    }
}

/// Slice `name` of `echo` with a ready endpoint at each of `ips`.
fn slice(name: &str, ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "ports": [{"name": PORT, "port": 50051, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("a valid EndpointSlice")
}

type Step = watcher::Result<Event<EndpointSlice>>;

/// What kube's watcher yields for a complete list of `slices`.
fn listed(slices: &[(&str, &[&str])]) -> Vec<Step> {
    let mut steps = vec![Ok(Event::Init)];
    steps.extend(
        slices
            .iter()
            .map(|(name, ips)| Ok(Event::InitApply(slice(name, ips)))),
    );
    steps.push(Ok(Event::InitDone));
    steps
}

/// One watcher's events: `parts` in order.
fn steps<const N: usize>(parts: [Vec<Step>; N]) -> Vec<Step> {
    parts.into_iter().flatten().collect()
}

fn applied(name: &str, ips: &[&str]) -> Step {
    Ok(Event::Apply(slice(name, ips)))
}

/// A watch answered `410 Gone`: its resource version was compacted away.
fn gone() -> Step {
    Err(watcher::Error::WatchError(Box::new(Status {
        code: 410,
        reason: "Expired".into(),
        message: "too old resource version".into(),
        ..Status::default()
    })))
}

fn io_error(kind: io::ErrorKind) -> kube::Error {
    kube::Error::Service(Box::new(io::Error::from(kind)))
}

fn follower() -> Follower {
    // Never contacted: the events are scripted, and a named port needs no
    // Service read.
    let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
    let client = Client::try_from(config).expect("a client");
    let target = "k8s://echo.default:grpc";
    Follower {
        slices: Api::namespaced(client.clone(), "default"),
        services: Api::namespaced(client, "default"),
        namespace: "default".into(),
        name: target.into(),
        target: Target::parse(target).expect("a valid target"),
    }
}

/// Runs one watcher per entry of `watchers` as [`Follower::run`] does and
/// returns every value the channel held, in order, and what the
/// subscription's health entry shows at the end.
async fn fold(watchers: Vec<Vec<Step>>) -> (Vec<Held>, SubscriptionHealth) {
    let (tx, rx) = watch::channel(ServiceSnapshot::default());
    let health = RegistryHealth::new();
    let tx = Publisher::new(tx, health.subscription(crate::k8s::BACKEND, "echo"));
    let recorder = Recorder::new(rx);
    let follower = follower();
    let mut slices = Slices::new();
    let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
    recorder.record();
    let last = watchers.len() - 1;
    for (n, steps) in watchers.into_iter().enumerate() {
        let before_each = recorder.clone();
        // `map` runs as the follower asks for the next event, so after it
        // has handled the previous one.
        let events = stream::iter(steps)
            .map(move |step| {
                before_each.record();
                step
            })
            .boxed();
        let ended = follower
            .follow(&tx, events, PORT, &mut slices, &mut backoff)
            .await;
        recorder.record();
        if n < last {
            assert!(matches!(ended, Ended::Failed), "watcher {n} did not fail");
        }
    }
    let values = lock(&recorder.held).clone();
    let entry = health.snapshot().subscriptions.remove(0);
    (values, entry)
}

#[tokio::test]
async fn no_value_is_empty_across_an_expired_watch_and_dropped_connections() {
    let (values, health) = fold(vec![
        // The first list, a change, then the watch expires (410 Gone).
        steps([
            listed(&[("echo-1", &["10.0.0.1"])]),
            vec![applied("echo-1", &["10.0.0.1", "10.0.0.2"]), gone()],
        ]),
        // The next watcher lists again; the slices changed meanwhile. Then
        // the connection is reset mid-watch.
        steps([
            listed(&[("echo-1", &["10.0.0.2"]), ("echo-2", &["10.0.0.3"])]),
            vec![
                applied("echo-2", &["10.0.0.3", "10.0.0.4"]),
                Err(watcher::Error::WatchFailed(kube::Error::ReadEvents(
                    io::Error::from(io::ErrorKind::ConnectionReset),
                ))),
            ],
        ]),
        // The API server is still away: the list is refused after `Init`.
        vec![
            Ok(Event::Init),
            Err(watcher::Error::InitialListFailed(io_error(
                io::ErrorKind::ConnectionRefused,
            ))),
        ],
        // It is back, echo-1 was deleted meanwhile. Later the watcher
        // lists again by itself, then a dropped connection cannot be
        // re-established.
        steps([
            listed(&[("echo-2", &["10.0.0.3", "10.0.0.4"])]),
            listed(&[("echo-2", &["10.0.0.4"]), ("echo-3", &["10.0.0.5"])]),
            vec![Err(watcher::Error::WatchStartFailed(io_error(
                io::ErrorKind::ConnectionRefused,
            )))],
        ]),
        // The last watcher lists once more; echo-2 is gone.
        listed(&[("echo-3", &["10.0.0.5"])]),
    ])
    .await;

    // Generation 0 is the channel's initial value, before the first list
    // completed: `subscribe` hands out no watch before it is replaced.
    assert!(
        values
            .iter()
            .all(|value| value.generation == 0 || !value.ips.is_empty()),
        "the set went empty: {values:#?}"
    );
    // Every value, in order: the set changes only when a list is complete
    // or a change arrives, and an error keeps it.
    assert_eq!(
        values,
        [
            Held {
                ips: vec![],
                generation: 0,
                error: false,
                notified: false,
            },
            held(&["10.0.0.1"], 1, false),
            held(&["10.0.0.1", "10.0.0.2"], 2, false),
            // 410: the error is reported, the set kept.
            held(&["10.0.0.1", "10.0.0.2"], 2, true),
            // The new list replaces the set in one step and clears the error.
            held(&["10.0.0.2", "10.0.0.3"], 3, false),
            held(&["10.0.0.2", "10.0.0.3", "10.0.0.4"], 4, false),
            held(&["10.0.0.2", "10.0.0.3", "10.0.0.4"], 4, true),
            held(&["10.0.0.2", "10.0.0.3", "10.0.0.4"], 4, true),
            held(&["10.0.0.3", "10.0.0.4"], 5, false),
            held(&["10.0.0.4", "10.0.0.5"], 6, false),
            held(&["10.0.0.4", "10.0.0.5"], 6, true),
            held(&["10.0.0.5"], 7, false),
        ]
    );

    // The health entry: each failed watcher's error counted once, and the
    // re-list the fourth watcher made by itself counted as a restart (the
    // restarts after each failed watcher are `run`'s, not run here).
    assert_eq!((health.errors, health.watch_restarts), (4, 1));
    assert_eq!(health.instances, 1);
    assert!(!health.serving_stale);
    assert!(health.last_update_age.is_some());
}
