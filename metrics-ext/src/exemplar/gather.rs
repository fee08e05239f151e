//! Finding the exemplars of the families a registry holds, with any
//! registry: the encoder is given a `prometheus::Registry` (the user's
//! own, maybe, with other collectors in it), and a registry cannot be
//! asked for its collectors. So each duration family registers as a
//! [`WithExemplars`] collector, which, when the registry collects it
//! during [`gather`], tells the encoder on the same thread where its
//! exemplars are. A gather that is not [`gather`]'s (`encode_text`, a
//! user's `Registry::gather`) only checks a thread-local.

use std::{cell::RefCell, sync::Arc};

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    Registry,
};

use super::series::FamilyExemplars;
use crate::striped::StripedHistogramVec;

thread_local! {
    /// `Some` while [`gather`] runs on this thread: the exemplars of the
    /// families collected so far.
    static COLLECTED: RefCell<Option<Vec<Arc<FamilyExemplars>>>> = const { RefCell::new(None) };
}

/// `registry.gather()`, and the exemplars of the histogram families
/// gathered (a `prometheus` registry collects on the calling thread).
pub(crate) fn gather(registry: &Registry) -> (Vec<MetricFamily>, Vec<Arc<FamilyExemplars>>) {
    /// Ends the collection even if a collector panics.
    struct Collecting;
    impl Drop for Collecting {
        fn drop(&mut self) {
            let _ = COLLECTED.try_with(|collected| collected.borrow_mut().take());
        }
    }
    let collecting = COLLECTED
        .try_with(|collected| *collected.borrow_mut() = Some(Vec::new()))
        .map(|()| Collecting);
    let families = registry.gather();
    let exemplars = COLLECTED
        .try_with(|collected| collected.borrow_mut().take())
        .ok()
        .flatten()
        .unwrap_or_default();
    drop(collecting);
    (families, exemplars)
}

/// A histogram family registered with its exemplars.
pub(crate) struct WithExemplars {
    pub(crate) vec: StripedHistogramVec,
    pub(crate) exemplars: Arc<FamilyExemplars>,
}

impl Collector for WithExemplars {
    fn desc(&self) -> Vec<&Desc> {
        self.vec.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // `try_borrow_mut`: a collector that gathers another registry from
        // inside its own `collect` must not make this one panic.
        let _ = COLLECTED.try_with(|collected| {
            if let Ok(mut collected) = collected.try_borrow_mut() {
                if let Some(families) = collected.as_mut() {
                    families.push(self.exemplars.clone());
                }
            }
        });
        self.vec.collect()
    }
}
