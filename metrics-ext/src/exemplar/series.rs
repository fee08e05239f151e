//! Where exemplars are kept: per histogram series one slot per bucket
//! ([`SeriesExemplars`]), per family the series by label values
//! ([`FamilyExemplars`]), so a scrape finds the exemplars of each series
//! it encodes.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hasher},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard,
    },
    time::Instant,
};

use prometheus::proto::Metric;

use super::{
    clock,
    slot::{Exemplar, Slot},
    TraceIds,
};

/// The exemplar of each bucket of one histogram series (`+Inf` last): the
/// first sampled observation since the family was last scraped. A busy
/// series writes each slot once per scrape; its other traced calls only
/// compare two numbers. Recording finds it through the cache's handles,
/// never by label.
#[derive(Debug)]
pub(crate) struct SeriesExemplars {
    bounds: Arc<[f64]>,
    family: Arc<Shared>,
    /// Made at the first traced observation: a series never traced costs
    /// no slots.
    slots: OnceLock<Box<[Slot]>>,
}

/// What a family's series share with it.
#[derive(Debug)]
struct Shared {
    /// The scrape generation: 1 until the first scrape, one more after
    /// each.
    generation: AtomicU64,
    /// Whether any series has slots: until then a scrape copies the
    /// family's text as it is.
    traced: AtomicBool,
}

impl SeriesExemplars {
    /// Offers an observation of `value` by `trace`'s span, ended `at`, to
    /// the bucket the histogram counted it in (the first bound at or above
    /// it).
    #[inline]
    pub(crate) fn offer(&self, trace: TraceIds, value: f64, at: Instant) {
        let generation = self.family.generation.load(Ordering::Relaxed);
        let bounds = &self.bounds;
        let slots = self.slots.get_or_init(|| {
            self.family.traced.store(true, Ordering::Relaxed);
            (0..=bounds.len()).map(|_| Slot::default()).collect()
        });
        let bucket = bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(bounds.len());
        if let Some(slot) = slots.get(bucket).filter(|slot| !slot.holds(generation)) {
            keep(slot, trace, value, at, generation);
        }
    }

    /// The exemplar of bucket `bucket` (`bounds.len()` for `+Inf`).
    pub(crate) fn read(&self, bucket: usize) -> Option<Exemplar> {
        self.slots.get()?.get(bucket)?.read()
    }
}

/// Writes a slot: once per bucket and scrape, so out of line, and only
/// here is the end's time turned into the exemplar's.
#[cold]
#[inline(never)]
fn keep(slot: &Slot, trace: TraceIds, value: f64, at: Instant, generation: u64) {
    let exemplar = Exemplar {
        trace,
        value,
        at: clock::anchor().nanos(at),
    };
    slot.offer(&exemplar, generation);
}

/// The exemplars of one histogram family: its series by label values.
#[derive(Debug)]
pub(crate) struct FamilyExemplars {
    /// The family's name as registered (a registry may prefix it).
    name: String,
    /// The family's label names, in the order series are keyed by.
    label_names: Box<[String]>,
    bounds: Arc<[f64]>,
    shared: Arc<Shared>,
    hasher: foldhash::fast::RandomState,
    /// Hash of the label values → the series with that hash. Grows with
    /// the family's own series (made by the cache, under its caps), never
    /// with a scrape.
    series: RwLock<HashMap<u64, Vec<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    values: Box<[Box<str>]>,
    exemplars: Arc<SeriesExemplars>,
}

impl FamilyExemplars {
    pub(crate) fn new(name: String, label_names: Vec<String>, bounds: &[f64]) -> Self {
        Self {
            name,
            label_names: label_names.into(),
            bounds: bounds.into(),
            shared: Arc::new(Shared {
                generation: AtomicU64::new(1),
                traced: AtomicBool::new(false),
            }),
            hasher: foldhash::fast::RandomState::default(),
            series: RwLock::new(HashMap::new()),
        }
    }

    fn hash<'a>(&self, values: impl Iterator<Item = &'a str>) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        for value in values {
            hasher.write(value.as_bytes());
            // Separates the values: ("a", "bc") is not ("ab", "c").
            hasher.write_u8(0xff);
        }
        hasher.finish()
    }

    /// The exemplars of the series with these label values (in the order
    /// of the family's label names), made if new. Called when the cache
    /// makes a series' handles, not per call.
    pub(crate) fn series(&self, values: &[&str]) -> Arc<SeriesExemplars> {
        let hash = self.hash(values.iter().copied());
        let mut series = self.series.write().unwrap_or_else(PoisonError::into_inner);
        let same = series.entry(hash).or_default();
        let known = same.iter().find(|entry| {
            entry
                .values
                .iter()
                .map(AsRef::as_ref)
                .eq(values.iter().copied())
        });
        if let Some(entry) = known {
            return entry.exemplars.clone();
        }
        let exemplars = Arc::new(SeriesExemplars {
            bounds: self.bounds.clone(),
            family: self.shared.clone(),
            slots: OnceLock::new(),
        });
        same.push(Entry {
            values: values.iter().map(|v| Box::from(*v)).collect(),
            exemplars: exemplars.clone(),
        });
        exemplars
    }

    /// Whether a gathered family of this name is this family: the same
    /// name, or, when no gathered family has exactly that name, the name a
    /// registry with a prefix gives it (`prefix_<name>`). Another
    /// collector's `foo_<name>` beside ours is thus never taken for it.
    pub(crate) fn is(&self, gathered: &str, names: &std::collections::HashSet<&str>) -> bool {
        gathered == self.name
            || (!names.contains(self.name.as_str())
                && gathered
                    .strip_suffix(self.name.as_str())
                    .is_some_and(|prefix| prefix.ends_with('_')))
    }

    /// Looks series up during a scrape, holding the family's series (new
    /// ones wait until the scrape has encoded this family). When the reader
    /// is dropped the scrape is over: each slot then takes the next sampled
    /// observation of its bucket.
    pub(crate) fn reader(&self) -> FamilyReader<'_> {
        FamilyReader {
            family: self,
            series: self.series.read().unwrap_or_else(PoisonError::into_inner),
        }
    }
}

/// [`FamilyExemplars::reader`].
pub(crate) struct FamilyReader<'a> {
    family: &'a FamilyExemplars,
    series: RwLockReadGuard<'a, HashMap<u64, Vec<Entry>>>,
}

impl Drop for FamilyReader<'_> {
    fn drop(&mut self) {
        self.family
            .shared
            .generation
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// The most labels a family keyed here has (the client duration family has
/// six): lookups keep the values on the stack.
const MAX_LABELS: usize = 8;

impl FamilyReader<'_> {
    /// Whether no series of the family was ever traced: it has no
    /// exemplar to show.
    pub(crate) fn is_untraced(&self) -> bool {
        !self.family.shared.traced.load(Ordering::Relaxed)
    }

    /// The exemplars of a gathered series: found by the values of the
    /// family's own labels (other labels, such as a registry's constant
    /// labels, are not part of the key). Allocates nothing.
    pub(crate) fn find(&self, metric: &Metric) -> Option<Arc<SeriesExemplars>> {
        let names = &self.family.label_names;
        let mut values = [""; MAX_LABELS];
        let values = values.get_mut(..names.len())?;
        let labels = metric.get_label();
        for (name, value) in names.iter().zip(values.iter_mut()) {
            *value = labels
                .iter()
                .find(|pair| pair.name() == name)
                .map(|pair| pair.value())?;
        }
        let hash = self.family.hash(values.iter().copied());
        self.series
            .get(&hash)?
            .iter()
            .find(|entry| {
                entry
                    .values
                    .iter()
                    .map(AsRef::as_ref)
                    .eq(values.iter().copied())
            })
            .map(|entry| entry.exemplars.clone())
    }
}
