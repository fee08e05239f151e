//! Label-resolved metric handles, cached per method so that recording a call
//! hashes a few strings and takes no lock and makes no allocation: readers
//! load immutable snapshots (`arc-swap`), and the rare writer (a method or
//! status seen for the first time) publishes a new snapshot.

use std::{
    cell::RefCell,
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
};

use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter, IntGauge};

use crate::{
    metrics::{Families, Inner},
    RpcSystem, Side, OTHER,
};

/// The handles of one (side, system, service, method, peer).
pub(crate) struct MethodHandles {
    key: OwnedKey,
    in_flight: IntGauge,
    request_size: Histogram,
    response_size: Histogram,
    families: Families,
    /// The first statuses seen, read without loading a snapshot: nearly
    /// every call ends with one of them (OK and an error or two). Filled in
    /// order, under `status_writer`.
    first_statuses: [OnceLock<StatusHandles>; FIRST_STATUSES],
    /// The others: few per method, so a scan beats a map.
    statuses: ArcSwap<Vec<StatusHandles>>,
    status_writer: Mutex<()>,
    #[cfg(feature = "otel")]
    otel: Option<crate::otel::OtelMethod>,
}

const FIRST_STATUSES: usize = 4;

#[derive(Clone)]
struct StatusHandles {
    status: &'static str,
    duration: Histogram,
    calls: IntCounter,
    #[cfg(feature = "otel")]
    otel_attributes: Option<std::sync::Arc<[opentelemetry::KeyValue]>>,
}

#[derive(PartialEq, Eq)]
struct OwnedKey {
    side: Side,
    system: RpcSystem,
    service: Box<str>,
    method: Box<str>,
    peer: Box<str>,
}

impl OwnedKey {
    fn matches(
        &self,
        side: Side,
        system: RpcSystem,
        service: &str,
        method: &str,
        peer: &str,
    ) -> bool {
        self.side == side
            && self.system == system
            && &*self.service == service
            && &*self.method == method
            && &*self.peer == peer
    }

    fn labels(&self) -> Vec<&str> {
        let mut labels = vec![self.system.as_str(), &self.service, &self.method];
        if self.side == Side::Client {
            labels.push(&self.peer);
        }
        labels
    }
}

impl MethodHandles {
    /// The side, system and peer the handles were made for.
    pub(crate) fn origin(&self) -> (Side, RpcSystem, &str) {
        (self.key.side, self.key.system, &self.key.peer)
    }

    fn new(key: OwnedKey, families: &Families) -> Self {
        let labels = key.labels();
        Self {
            in_flight: families.in_flight.with_label_values(&labels),
            request_size: families.request_size.with_label_values(&labels),
            response_size: families.response_size.with_label_values(&labels),
            families: families.clone(),
            first_statuses: Default::default(),
            statuses: ArcSwap::from_pointee(Vec::new()),
            status_writer: Mutex::new(()),
            #[cfg(feature = "otel")]
            otel: families.otel.as_ref().map(|otel| {
                crate::otel::OtelMethod::new(
                    otel,
                    key.system,
                    &key.service,
                    &key.method,
                    (key.side == Side::Client).then_some(&*key.peer),
                )
            }),
            key,
        }
    }

    /// A call started.
    pub(crate) fn started(&self) {
        self.in_flight.inc();
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            otel.started();
        }
    }

    /// A call started on these handles ended (its record may go elsewhere).
    pub(crate) fn ended(&self) {
        self.in_flight.dec();
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            otel.ended();
        }
    }

    /// Records the message sizes of one call, where known.
    pub(crate) fn sizes(&self, request: Option<u64>, response: Option<u64>) {
        if let Some(bytes) = request {
            self.request_size.observe(bytes as f64);
        }
        if let Some(bytes) = response {
            self.response_size.observe(bytes as f64);
        }
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            otel.sizes(request, response);
        }
    }

    /// Records one finished call.
    pub(crate) fn record(&self, status: &'static str, seconds: f64) {
        if let Some(handles) = self.first_status(status) {
            return self.observe(handles, seconds);
        }
        {
            let statuses = self.statuses.load();
            if let Some(handles) = statuses.iter().find(|h| h.status == status) {
                return self.observe(handles, seconds);
            }
        }
        let writer = self
            .status_writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.statuses.load_full();
        if self.first_status(status).is_none() && !current.iter().any(|h| h.status == status) {
            let mut labels = self.key.labels();
            labels.push(status);
            let handles = StatusHandles {
                status,
                duration: self.families.duration.with_label_values(&labels),
                calls: self.families.calls.with_label_values(&labels),
                #[cfg(feature = "otel")]
                otel_attributes: self
                    .otel
                    .as_ref()
                    .map(|otel| otel.status_attributes(status)),
            };
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
        self.record(status, seconds);
    }

    fn first_status(&self, status: &str) -> Option<&StatusHandles> {
        for slot in &self.first_statuses {
            match slot.get() {
                Some(handles) if handles.status == status => return Some(handles),
                Some(_) => {}
                // Filled in order: nothing further on.
                None => return None,
            }
        }
        None
    }

    fn observe(&self, handles: &StatusHandles, seconds: f64) {
        handles.duration.observe(seconds);
        handles.calls.inc();
        #[cfg(feature = "otel")]
        if let (Some(otel), Some(attributes)) = (&self.otel, &handles.otel_attributes) {
            otel.record(attributes, seconds);
        }
    }
}

/// Every method seen so far, up to a cap.
pub(crate) struct MethodCache {
    /// Tells this cache's entries apart in the per-thread `RECENT` cache.
    id: u64,
    methods: ArcSwap<HashMap<u64, Vec<Arc<MethodHandles>>, Seeded>>,
    writer: Mutex<()>,
    count: AtomicUsize,
    max: usize,
    hasher: Seeded,
}

/// foldhash, seeded per process: std's SipHash cost more than the rest of
/// a lookup. Keys only become entries for methods a server answered, so
/// there is nothing for crafted keys to pile up on.
type Seeded = foldhash::fast::RandomState;

impl MethodCache {
    pub(crate) fn new(max: usize) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            methods: ArcSwap::from_pointee(HashMap::default()),
            writer: Mutex::new(()),
            count: AtomicUsize::new(0),
            max,
            hasher: Default::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn hash(&self, side: Side, system: RpcSystem, service: &str, method: &str, peer: &str) -> u64 {
        self.hasher.hash_one((side, system, service, method, peer))
    }

    /// The handles of an already known method.
    pub(crate) fn find(
        &self,
        side: Side,
        system: RpcSystem,
        service: &str,
        method: &str,
        peer: &str,
    ) -> Option<Arc<MethodHandles>> {
        let matches = |m: &MethodHandles| m.key.matches(side, system, service, method, peer);
        let recent = RECENT.try_with(|recent| recent.borrow().find(self.id, matches));
        if let Ok(Some(found)) = recent {
            return Some(found);
        }
        let hash = self.hash(side, system, service, method, peer);
        let found = self
            .methods
            .load()
            .get(&hash)?
            .iter()
            .find(|m| matches(m))
            .cloned()?;
        // The entry it replaces is dropped after the borrow ends.
        let _replaced =
            RECENT.try_with(|recent| recent.borrow_mut().insert(self.id, found.clone()));
        Some(found)
    }

    pub(crate) fn get(
        &self,
        inner: &Inner,
        side: Side,
        system: RpcSystem,
        service: &str,
        method: &str,
        peer: &str,
    ) -> Arc<MethodHandles> {
        if let Some(found) = self.find(side, system, service, method, peer) {
            return found;
        }
        let hash = self.hash(side, system, service, method, peer);
        let overflow = service == OTHER && method == OTHER;
        if !overflow && self.len() >= self.max {
            return self.get(inner, side, system, OTHER, OTHER, OTHER);
        }
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = self.find(side, system, service, method, peer) {
            return found;
        }
        let families = match side {
            Side::Server => &inner.server,
            Side::Client => &inner.client,
        };
        let handles = Arc::new(MethodHandles::new(
            OwnedKey {
                side,
                system,
                service: service.into(),
                method: method.into(),
                peer: peer.into(),
            },
            families,
        ));
        // Copy-on-write: readers keep using the snapshot they loaded.
        let mut methods = HashMap::clone(&self.methods.load_full());
        methods.entry(hash).or_default().push(handles.clone());
        self.methods.store(Arc::new(methods));
        if !overflow {
            self.count.fetch_add(1, Ordering::Relaxed);
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
