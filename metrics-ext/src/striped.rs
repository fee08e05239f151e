//! Histograms and gauges whose counts are split into per-thread stripes,
//! summed when scraped. A call writes its series' stripe for the thread
//! that found its handles, so two cores recording the same series each
//! write their own cache lines: a shared atomic written from both (what a
//! `prometheus::Histogram` is) made every call wait for the line to cross
//! between cores, and the layers scale worse than the service they wrap.
//!
//! Families register as [`Collector`]s that build the same
//! [`MetricFamily`] a `HistogramVec` or `IntGaugeVec` would: name, help,
//! type, sorted label pairs, cumulative buckets, `_sum` and `_count`
//! (the count is the sum of the buckets, so it always equals `+Inf`).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
};

use prometheus::{
    core::{Collector, Desc, Describer},
    proto::{self, LabelPair, MetricFamily, MetricType},
    HistogramOpts, HistogramVec, Opts,
};

use crate::Error;

/// At most this many stripes: enough for the cores a service usually
/// runs on, and a bound on each series' memory.
const MAX_STRIPES: usize = 16;

/// The number of stripes: the cores available, rounded up to a power of
/// two, at most [`MAX_STRIPES`].
pub(crate) fn stripes() -> usize {
    static STRIPES: OnceLock<usize> = OnceLock::new();
    *STRIPES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .next_power_of_two()
            .min(MAX_STRIPES)
    })
}

/// The calling thread's stripe: threads take stripes in turn, so that the
/// threads of a runtime (started together) land on different ones.
pub(crate) fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % stripes();
    }
    // A thread being torn down shares stripe 0: still counted, only slower.
    STRIPE.try_with(|stripe| *stripe).unwrap_or(0)
}

/// Counters on a cache line of their own (128 bytes: two lines on x86,
/// whose prefetcher pulls lines in pairs, one on Apple's ARM cores).
#[repr(align(128))]
struct Line([AtomicU64; SLOTS_PER_LINE]);

const SLOTS_PER_LINE: usize = 16;

/// One series of a histogram family: per stripe, the sum of the observed
/// values (as `f64` bits), then a count per bucket and one for values
/// above the last bound.
pub(crate) struct StripedHistogram {
    bounds: Arc<[f64]>,
    /// The stripes less one (a power of two): a stripe is `stripe & mask`,
    /// cheaper than a division on every observation.
    mask: usize,
    /// Slots of a stripe, rounded up to whole lines.
    slots_per_stripe: usize,
    lines: Box<[Line]>,
    labels: Vec<LabelPair>,
}

impl StripedHistogram {
    fn new(bounds: Arc<[f64]>, labels: Vec<LabelPair>) -> Self {
        // The sum, a slot per bound, and the one above them all.
        let slots = bounds.len() + 2;
        let lines_per_stripe = slots.div_ceil(SLOTS_PER_LINE);
        let lines = (0..lines_per_stripe * stripes())
            .map(|_| Line(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        Self {
            bounds,
            mask: stripes() - 1,
            slots_per_stripe: lines_per_stripe * SLOTS_PER_LINE,
            lines,
            labels,
        }
    }

    #[inline]
    fn slot(&self, stripe: usize, slot: usize) -> &AtomicU64 {
        let index = stripe * self.slots_per_stripe + slot;
        &self.lines[index / SLOTS_PER_LINE].0[index % SLOTS_PER_LINE]
    }

    /// Records `value` in `stripe` (modulo the stripes).
    #[inline]
    pub(crate) fn observe(&self, stripe: usize, value: f64) {
        let stripe = stripe & self.mask;
        // As `prometheus` does: a bucket counts values up to its bound, NaN
        // only in the count.
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.slot(stripe, 1 + bucket)
            .fetch_add(1, Ordering::Relaxed);
        // A stripe is shared only when threads outnumber stripes, so this
        // nearly always succeeds at once.
        let sum = self.slot(stripe, 0);
        let mut old = sum.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(old) + value).to_bits();
            match sum.compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => old = now,
            }
        }
    }

    /// The series as scraped: the stripes summed.
    fn metric(&self) -> proto::Metric {
        let mut counts = vec![0u64; self.bounds.len() + 1];
        let mut sum = 0.0;
        for stripe in 0..=self.mask {
            sum += f64::from_bits(self.slot(stripe, 0).load(Ordering::Relaxed));
            for (bucket, count) in counts.iter_mut().enumerate() {
                *count += self.slot(stripe, 1 + bucket).load(Ordering::Relaxed);
            }
        }
        let mut histogram = proto::Histogram::default();
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&counts)
            .map(|(bound, count)| {
                cumulative += count;
                let mut bucket = proto::Bucket::default();
                bucket.set_cumulative_count(cumulative);
                bucket.set_upper_bound(*bound);
                bucket
            })
            .collect();
        histogram.set_bucket(buckets);
        histogram.set_sample_sum(sum);
        // Every bucket and the values above them: the `+Inf` bucket.
        histogram.set_sample_count(counts.iter().sum());
        let mut metric = proto::Metric::from_label(self.labels.clone());
        metric.set_histogram(histogram);
        metric
    }
}

/// An integer gauge's value on a line of its own.
#[repr(align(128))]
struct GaugeLine(AtomicI64);

/// One series of a gauge family: a value per stripe. A call may end on
/// another stripe than it started on; only the sum means anything.
pub(crate) struct StripedGauge {
    stripes: Box<[GaugeLine]>,
    /// The stripes less one, as in [`StripedHistogram`].
    mask: usize,
    labels: Vec<LabelPair>,
}

impl StripedGauge {
    fn new(labels: Vec<LabelPair>) -> Self {
        Self {
            stripes: (0..stripes())
                .map(|_| GaugeLine(AtomicI64::new(0)))
                .collect(),
            mask: stripes() - 1,
            labels,
        }
    }

    /// Adds `delta` in `stripe` (modulo the stripes).
    #[inline]
    pub(crate) fn add(&self, stripe: usize, delta: i64) {
        self.stripes[stripe & self.mask]
            .0
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// The value as scraped: the stripes summed.
    pub(crate) fn get(&self) -> i64 {
        self.stripes
            .iter()
            .map(|line| line.0.load(Ordering::Relaxed))
            .sum()
    }

    fn metric(&self) -> proto::Metric {
        let mut gauge = proto::Gauge::default();
        gauge.set_value(self.get() as f64);
        let mut metric = proto::Metric::from_label(self.labels.clone());
        metric.set_gauge(gauge);
        metric
    }
}

/// A family's description and its series by label values. Series are
/// only made by the method cache, under its cap per side.
struct Series<S> {
    desc: Desc,
    series: Mutex<HashMap<Vec<String>, Arc<S>>>,
}

impl<S> Series<S> {
    fn new(desc: Desc) -> Self {
        Self {
            desc,
            series: Mutex::new(HashMap::new()),
        }
    }

    /// The series with these values (in the order of the label names),
    /// made with `make` and its label pairs if new.
    fn get(&self, values: &[&str], make: impl FnOnce(Vec<LabelPair>) -> S) -> Arc<S> {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        if let Some(found) = series.get(&key) {
            return found.clone();
        }
        let mut labels: Vec<LabelPair> = self
            .desc
            .variable_labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.clone());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect();
        // Sorted by name, as `prometheus` sorts them.
        labels.sort_by(|a, b| a.name().cmp(b.name()));
        let made = Arc::new(make(labels));
        series.insert(key, made.clone());
        made
    }

    fn family(&self, kind: MetricType, metric: impl Fn(&S) -> proto::Metric) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(kind);
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        family.set_metric(series.values().map(|s| metric(s)).collect());
        family
    }
}

/// A histogram family of striped series.
#[derive(Clone)]
pub(crate) struct StripedHistogramVec {
    inner: Arc<Series<StripedHistogram>>,
    bounds: Arc<[f64]>,
}

impl StripedHistogramVec {
    /// The family `opts` describes, with these label names; the same
    /// errors as `HistogramVec::new`.
    pub(crate) fn new(opts: HistogramOpts, labels: &[&str]) -> Result<Self, Error> {
        // Checks the name, labels and buckets as `prometheus` does.
        HistogramVec::new(opts.clone(), labels)?;
        let mut bounds = if opts.buckets.is_empty() {
            prometheus::DEFAULT_BUCKETS.to_vec()
        } else {
            opts.buckets.clone()
        };
        // The `+Inf` bucket is the count, as in `prometheus`.
        if bounds.last() == Some(&f64::INFINITY) {
            bounds.pop();
        }
        // `prometheus` checks this only when a series is made, by
        // panicking; here the family is refused when it is built.
        if bounds
            .windows(2)
            .any(|pair| pair[0].partial_cmp(&pair[1]) != Some(std::cmp::Ordering::Less))
        {
            return Err(prometheus::Error::Msg(
                "histogram buckets must be in increasing order".into(),
            )
            .into());
        }
        let desc = opts
            .common_opts
            .variable_labels(labels.iter().map(|l| (*l).to_owned()).collect())
            .describe()?;
        Ok(Self {
            inner: Arc::new(Series::new(desc)),
            bounds: bounds.into(),
        })
    }

    /// The bucket bounds, as the series count them (without `+Inf`).
    pub(crate) fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// The series with these label values, made if new.
    pub(crate) fn with_label_values(&self, values: &[&str]) -> Arc<StripedHistogram> {
        self.inner.get(values, |labels| {
            StripedHistogram::new(self.bounds.clone(), labels)
        })
    }
}

impl Collector for StripedHistogramVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.inner.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        vec![self
            .inner
            .family(MetricType::HISTOGRAM, StripedHistogram::metric)]
    }
}

/// An integer gauge family of striped series.
#[derive(Clone)]
pub(crate) struct StripedGaugeVec {
    inner: Arc<Series<StripedGauge>>,
}

impl StripedGaugeVec {
    /// The family `opts` describes, with these label names; the same
    /// errors as `IntGaugeVec::new`.
    pub(crate) fn new(opts: Opts, labels: &[&str]) -> Result<Self, Error> {
        let desc = opts
            .variable_labels(labels.iter().map(|l| (*l).to_owned()).collect())
            .describe()?;
        Ok(Self {
            inner: Arc::new(Series::new(desc)),
        })
    }

    /// The series with these label values, made if new.
    pub(crate) fn with_label_values(&self, values: &[&str]) -> Arc<StripedGauge> {
        self.inner.get(values, StripedGauge::new)
    }
}

impl Collector for StripedGaugeVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.inner.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        vec![self.inner.family(MetricType::GAUGE, StripedGauge::metric)]
    }
}

#[cfg(test)]
#[path = "striped_tests.rs"]
mod tests;
