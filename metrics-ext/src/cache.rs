//! Label-resolved metric handles, cached per method so that recording a call
//! hashes a few strings and takes no lock and makes no allocation: readers
//! load immutable snapshots (`arc-swap`), and the rare writer (a method or
//! outcome seen for the first time) publishes a new snapshot.

use std::{
    cell::RefCell,
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
    time::Instant,
};

use arc_swap::ArcSwap;
use prometheus::IntCounter;

use crate::{
    call::{Call, Outcome},
    exemplar::{self, SeriesExemplars, TraceIds},
    families::{Families, Family},
    labels::{KeyValues, OutcomeValues},
    metrics::Inner,
    striped::{self, StripedGauge, StripedHistogram},
    RpcSystem, Side,
};

/// The handles of one call description (side, system and labels), as
/// seen from one stripe: the cache keeps a view per stripe, sharing the
/// series, and hands each thread its stripe's. Aligned so that two views'
/// reference counts, changed on every call, never share a cache line.
#[repr(align(128))]
pub(crate) struct MethodHandles {
    pub(crate) key: OwnedKey,
    /// The stripe this view writes.
    stripe: usize,
    in_flight: Option<Arc<StripedGauge>>,
    request_size: Option<Arc<StripedHistogram>>,
    response_size: Option<Arc<StripedHistogram>>,
    families: Families,
    /// The first outcomes seen, read without loading a snapshot: nearly
    /// every call ends with one of them (OK and an error or two). Filled in
    /// order, under `status_writer`.
    first_statuses: [OnceLock<OutcomeHandles>; FIRST_STATUSES],
    /// The others: few per method, so a scan beats a map.
    statuses: ArcSwap<Vec<OutcomeHandles>>,
    status_writer: Mutex<()>,
    /// Whether calls read their trace for exemplars when they start.
    exemplars: bool,
    #[cfg(feature = "otel")]
    otel: Option<crate::otel::OtelMethod>,
}

const FIRST_STATUSES: usize = 4;

/// The per-outcome handles of one method, in every family the conventions
/// ask for.
#[derive(Clone)]
struct OutcomeHandles {
    outcome: Outcome,
    duration: Option<Arc<StripedHistogram>>,
    old_duration: Option<Arc<StripedHistogram>>,
    /// The exemplar slots beside each duration series.
    duration_exemplars: Option<Arc<SeriesExemplars>>,
    old_duration_exemplars: Option<Arc<SeriesExemplars>>,
    old_calls: Option<IntCounter>,
    #[cfg(feature = "otel")]
    otel_attributes: Option<Arc<[opentelemetry::KeyValue]>>,
}

/// A [`Call`] that owns its strings: the key of a cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnedKey {
    pub(crate) side: Side,
    pub(crate) system: RpcSystem,
    pub(crate) service: Box<str>,
    pub(crate) method: Box<str>,
    pub(crate) server_address: Box<str>,
    pub(crate) server_port: Option<u16>,
    pub(crate) peer_service: Box<str>,
    pub(crate) url_scheme: &'static str,
}

impl OwnedKey {
    pub(crate) fn new(call: &Call<'_>) -> Self {
        Self {
            side: call.side,
            system: call.system,
            service: call.service.into(),
            method: call.method.into(),
            server_address: call.server_address.into(),
            server_port: call.server_port,
            peer_service: call.peer_service.into(),
            url_scheme: call.url_scheme,
        }
    }

    pub(crate) fn as_call(&self) -> Call<'_> {
        Call {
            side: self.side,
            system: self.system,
            service: &self.service,
            method: &self.method,
            server_address: &self.server_address,
            server_port: self.server_port,
            peer_service: &self.peer_service,
            url_scheme: self.url_scheme,
        }
    }

    /// `self.as_call() == *call`, cheapest checks first: this runs on every
    /// call, and most of the strings compared are empty (a server has no
    /// target) or differ in length.
    fn matches(&self, call: &Call<'_>) -> bool {
        fn same(a: &str, b: &str) -> bool {
            a.len() == b.len() && (a.is_empty() || a == b)
        }
        self.side == call.side
            && self.system == call.system
            && self.server_port == call.server_port
            && same(self.url_scheme, call.url_scheme)
            && same(&self.method, call.method)
            && same(&self.service, call.service)
            && same(&self.server_address, call.server_address)
            && same(&self.peer_service, call.peer_service)
    }
}

impl MethodHandles {
    fn new(key: OwnedKey, inner: &Inner, stripe: usize) -> Self {
        let families = inner.families(key.side).of(key.system).clone();
        let values = KeyValues::new(&key);
        let in_flight = families
            .active
            .as_ref()
            .map(|f| f.vec.with_label_values(&values.values(f.labels, None)));
        let size = |family: &Option<Family<striped::StripedHistogramVec>>| {
            family
                .as_ref()
                .map(|f| f.vec.with_label_values(&values.values(f.labels, None)))
        };
        let request_size = size(&families.request_size);
        let response_size = size(&families.response_size);
        #[cfg(feature = "otel")]
        let otel = inner
            .otel(key.side)
            .map(|otel| crate::otel::OtelMethod::new(otel.of(key.system), &values));
        drop(values);
        Self {
            key,
            stripe,
            in_flight,
            request_size,
            response_size,
            families,
            first_statuses: Default::default(),
            statuses: ArcSwap::from_pointee(Vec::new()),
            status_writer: Mutex::new(()),
            exemplars: inner.exemplars(),
            #[cfg(feature = "otel")]
            otel,
        }
    }

    /// The trace a call starting now gives its exemplar: the current
    /// span's, if sampled and exemplars are on.
    #[inline]
    pub(crate) fn current_trace(&self) -> Option<TraceIds> {
        if self.exemplars {
            exemplar::current()
        } else {
            None
        }
    }

    /// A call started.
    pub(crate) fn started(&self) {
        if let Some(gauge) = &self.in_flight {
            gauge.add(self.stripe, 1);
        }
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            otel.started();
        }
    }

    /// A call started on these handles ended (its record may go elsewhere).
    pub(crate) fn ended(&self) {
        if let Some(gauge) = &self.in_flight {
            gauge.add(self.stripe, -1);
        }
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            otel.ended();
        }
    }

    /// Records the message sizes of one call, where known.
    pub(crate) fn sizes(&self, request: Option<u64>, response: Option<u64>) {
        if let (Some(histogram), Some(bytes)) = (&self.request_size, request) {
            histogram.observe(self.stripe, bytes as f64);
        }
        if let (Some(histogram), Some(bytes)) = (&self.response_size, response) {
            histogram.observe(self.stripe, bytes as f64);
        }
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            otel.sizes(request, response);
        }
    }

    /// Records one finished call.
    pub(crate) fn record(&self, outcome: Outcome, ended: &Ended) {
        if let Some(handles) = self.first_status(outcome) {
            return self.observe(handles, ended);
        }
        {
            let statuses = self.statuses.load();
            if let Some(handles) = statuses.iter().find(|h| h.outcome == outcome) {
                return self.observe(handles, ended);
            }
        }
        let writer = self
            .status_writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.statuses.load_full();
        if self.first_status(outcome).is_none() && !current.iter().any(|h| h.outcome == outcome) {
            let handles = self.outcome_handles(outcome);
            // Only this writer sets slots, so a free one stays free for it.
            match self.first_statuses.iter().find(|slot| slot.get().is_none()) {
                Some(slot) => {
                    let _ = slot.set(handles);
                }
                None => {
                    let mut statuses = Vec::clone(&current);
                    statuses.push(handles);
                    self.statuses.store(Arc::new(statuses));
                }
            }
        }
        drop(writer);
        self.record(outcome, ended);
    }

    fn outcome_handles(&self, outcome: Outcome) -> OutcomeHandles {
        let values = KeyValues::new(&self.key);
        let outcome_values = OutcomeValues::new(self.key.side, self.key.system, outcome);
        let labels = |labels| values.values(labels, Some(&outcome_values));
        // The series and, beside it, its exemplar slots.
        let histogram = |family: &Option<Family<striped::StripedHistogramVec>>| {
            let Some(family) = family else {
                return (None, None);
            };
            let values = labels(family.labels);
            let exemplars = family
                .exemplars
                .as_ref()
                .map(|exemplars| exemplars.series(&values));
            (Some(family.vec.with_label_values(&values)), exemplars)
        };
        let (duration, duration_exemplars) = histogram(&self.families.duration);
        let (old_duration, old_duration_exemplars) = histogram(&self.families.old_duration);
        OutcomeHandles {
            outcome,
            duration,
            old_duration,
            duration_exemplars,
            old_duration_exemplars,
            old_calls: self
                .families
                .old_calls
                .as_ref()
                .map(|f| f.vec.with_label_values(&labels(f.labels))),
            #[cfg(feature = "otel")]
            otel_attributes: self
                .otel
                .as_ref()
                .and_then(|otel| otel.outcome_attributes(&values, &outcome_values)),
        }
    }

    fn first_status(&self, outcome: Outcome) -> Option<&OutcomeHandles> {
        for slot in &self.first_statuses {
            match slot.get() {
                Some(handles) if handles.outcome == outcome => return Some(handles),
                Some(_) => {}
                // Filled in order: nothing further on.
                None => return None,
            }
        }
        None
    }

    fn observe(&self, handles: &OutcomeHandles, ended: &Ended) {
        let seconds = ended.seconds;
        if let Some(histogram) = &handles.duration {
            histogram.observe(self.stripe, seconds);
        }
        if let Some(histogram) = &handles.old_duration {
            histogram.observe(self.stripe, seconds);
        }
        if let Some(trace) = ended.trace {
            offer_exemplars(handles, trace, ended);
        }
        if let Some(counter) = &handles.old_calls {
            counter.inc();
        }
        #[cfg(feature = "otel")]
        if let (Some(otel), Some(attributes)) = (&self.otel, &handles.otel_attributes) {
            otel.record(attributes, seconds);
        }
    }
}

/// Offers a traced call's observation to its duration series' exemplars.
/// Out of line: calls without a sampled span, most of them where sampling
/// is a ratio, skip it at the cost of one test.
#[inline(never)]
fn offer_exemplars(handles: &OutcomeHandles, trace: TraceIds, ended: &Ended) {
    if let Some(exemplars) = &handles.duration_exemplars {
        exemplars.offer(trace, ended.seconds, ended.at);
    }
    if let Some(exemplars) = &handles.old_duration_exemplars {
        exemplars.offer(trace, ended.seconds, ended.at);
    }
}

/// How a call ended, for its duration series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ended {
    pub(crate) seconds: f64,
    /// When it ended: the exemplar's time.
    pub(crate) at: Instant,
    /// Its trace, if it has one to give its exemplar.
    pub(crate) trace: Option<TraceIds>,
}

/// Every method seen so far, up to a cap per side.
pub(crate) struct MethodCache {
    /// Tells this cache's entries apart in the per-thread `RECENT` cache.
    id: u64,
    /// Per method, a view per stripe.
    methods: ArcSwap<HashMap<u64, Vec<Views>, Seeded>>,
    writer: Mutex<()>,
    /// Entries per side (server, client), overflow entries not counted.
    counts: [AtomicUsize; 2],
    max: usize,
    hasher: Seeded,
}

/// One method's views, one per stripe (see [`MethodHandles`]).
type Views = Box<[Arc<MethodHandles>]>;

/// The view of `stripe`, the calling thread's: the reference counts it
/// changes, and the stripes it writes, stay with the threads of its
/// stripe. Even reading another stripe's view would pull in the line its
/// threads keep changing the counts on.
fn view(views: &Views, stripe: usize) -> &Arc<MethodHandles> {
    &views[stripe % views.len()]
}

/// foldhash, seeded per process: std's SipHash cost more than the rest of
/// a lookup. Keys only become entries for methods a server answered, so
/// there is nothing for crafted keys to pile up on.
type Seeded = foldhash::fast::RandomState;

fn side_index(side: Side) -> usize {
    match side {
        Side::Server => 0,
        Side::Client => 1,
    }
}

impl MethodCache {
    pub(crate) fn new(max: usize) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            methods: ArcSwap::from_pointee(HashMap::default()),
            writer: Mutex::new(()),
            counts: Default::default(),
            max,
            hasher: Default::default(),
        }
    }

    /// Tells this cache apart from others in per-thread caches.
    #[cfg(any(feature = "tower", feature = "volo"))]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The entries of `side`.
    pub(crate) fn len(&self, side: Side) -> usize {
        self.counts[side_index(side)].load(Ordering::Relaxed)
    }

    /// The handles of an already known call description.
    pub(crate) fn find(&self, call: &Call<'_>) -> Option<Arc<MethodHandles>> {
        let matches = |m: &MethodHandles| m.key.matches(call);
        let recent = RECENT.try_with(|recent| recent.borrow().find(self.id, matches));
        if let Ok(Some(found)) = recent {
            return Some(found);
        }
        let hash = self.hasher.hash_one(call);
        let stripe = striped::stripe();
        let found = self
            .methods
            .load()
            .get(&hash)?
            .iter()
            .map(|views| view(views, stripe))
            .find(|m| matches(m))?
            .clone();
        // The entry it replaces is dropped after the borrow ends.
        let _replaced =
            RECENT.try_with(|recent| recent.borrow_mut().insert(self.id, found.clone()));
        Some(found)
    }

    /// The handles of `call`, made if it is new and its side is under the
    /// cap, else the side's overflow handles.
    pub(crate) fn get(&self, inner: &Inner, call: &Call<'_>) -> Arc<MethodHandles> {
        if let Some(found) = self.find(call) {
            return found;
        }
        let overflow = call.is_overflow();
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = self.find(call) {
            return found;
        }
        let count = &self.counts[side_index(call.side)];
        if !overflow && count.load(Ordering::Relaxed) >= self.max {
            drop(writer);
            return self.get(inner, &call.overflow());
        }
        let key = OwnedKey::new(call);
        let views: Views = (0..striped::stripes())
            .map(|stripe| Arc::new(MethodHandles::new(key.clone(), inner, stripe)))
            .collect();
        let handles = view(&views, striped::stripe()).clone();
        // Copy-on-write: readers keep using the snapshot they loaded.
        let mut methods = HashMap::clone(&self.methods.load_full());
        methods
            .entry(self.hasher.hash_one(call))
            .or_default()
            .push(views);
        self.methods.store(Arc::new(methods));
        if !overflow {
            count.fetch_add(1, Ordering::Relaxed);
        }
        handles
    }
}

/// The methods this thread recorded last, across caches: a hit costs a few
/// comparisons, where the shared map costs a snapshot load and a hash.
/// Entries are never stale: a cache only ever adds methods. A few `Arc`s
/// per thread may outlive their cache (keeping its metric handles in
/// memory, not registered anywhere), until replaced.
struct RecentMethods {
    entries: [Option<(u64, Arc<MethodHandles>)>; RECENT_METHODS],
    next: usize,
}

const RECENT_METHODS: usize = 4;

thread_local! {
    static RECENT: RefCell<RecentMethods> = const {
        RefCell::new(RecentMethods {
            entries: [None, None, None, None],
            next: 0,
        })
    };
}

impl RecentMethods {
    fn find(
        &self,
        cache: u64,
        matches: impl Fn(&MethodHandles) -> bool,
    ) -> Option<Arc<MethodHandles>> {
        self.entries
            .iter()
            .flatten()
            .find(|(id, handles)| *id == cache && matches(handles))
            .map(|(_, handles)| handles.clone())
    }

    /// Keeps `handles`, returning the entry it replaces.
    fn insert(
        &mut self,
        cache: u64,
        handles: Arc<MethodHandles>,
    ) -> Option<(u64, Arc<MethodHandles>)> {
        let replaced = self.entries[self.next].replace((cache, handles));
        self.next = (self.next + 1) % RECENT_METHODS;
        replaced
    }
}
