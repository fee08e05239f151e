//! Exemplar timestamps without a wall-clock read per call: calls already
//! read the monotonic clock when they end, and one (monotonic, wall) pair
//! taken once per process turns that reading into wall time.

use std::{
    sync::OnceLock,
    time::{Duration, Instant, SystemTime},
};

/// The process's clock anchor.
#[derive(Debug)]
pub(crate) struct Anchor {
    instant: Instant,
    system: SystemTime,
}

/// The anchor, taken at its first use (when the first `RpcMetrics` is
/// built). Every exemplar's time is counted from it, so the times of one
/// process are consistent with each other across scrapes: Prometheus keeps
/// an exemplar only if it is not older than the last one of its series.
pub(crate) fn anchor() -> &'static Anchor {
    static ANCHOR: OnceLock<Anchor> = OnceLock::new();
    ANCHOR.get_or_init(|| Anchor {
        instant: Instant::now(),
        system: SystemTime::now(),
    })
}

impl Anchor {
    /// `at` as nanoseconds after the anchor.
    #[inline]
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.instant).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The wall time of `nanos` after the anchor.
    pub(crate) fn wall(&self, nanos: u64) -> SystemTime {
        self.system + Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_maps_to_the_wall_time_of_its_reading() {
        let anchor = anchor();
        let (before, now, after) = (SystemTime::now(), Instant::now(), SystemTime::now());
        let wall = anchor.wall(anchor.nanos(now));
        // The two clocks may drift apart by a little while a test runs.
        let slack = Duration::from_millis(50);
        assert!(
            wall + slack >= before && wall <= after + slack,
            "{wall:?} {before:?} {after:?}"
        );
    }
}
