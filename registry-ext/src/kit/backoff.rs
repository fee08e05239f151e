//! Capped exponential backoff with jitter, used by every retry loop.

use std::time::Duration;

/// Retry delays that double from `initial` up to `max`, with up to 20% jitter so
/// that many instances restarting together do not hammer the backend in step.
///
/// ```
/// use std::time::Duration;
/// use rpc_ext_registry::kit::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// assert!(backoff.next_delay() < Duration::from_millis(121));
/// assert!(backoff.next_delay() >= Duration::from_millis(200));
/// backoff.reset(); // after a success
/// assert!(backoff.next_delay() < Duration::from_millis(121));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Delays starting at `initial`, capped at `max`.
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// Starts over from `initial`: call it after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay before the next attempt; each call doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        base.saturating_add(base.mul_f64(jitter_fraction() * 0.2))
    }
}

/// A cheap, dependency-free fraction in [0, 1): only spreads retries, so it
/// needs no cryptographic quality.
fn jitter_fraction() -> f64 {
    use std::{
        collections::hash_map::RandomState,
        hash::{BuildHasher, Hasher},
    };
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    (hasher.finish() % 10_000) as f64 / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..6).map(|_| backoff.next_delay()).collect();
        for (delay, base_ms) in delays.iter().zip([100u64, 200, 400, 800, 1000, 1000]) {
            let base = Duration::from_millis(base_ms);
            assert!(
                *delay >= base && *delay <= base.mul_f64(1.2),
                "{delay:?} vs {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(121));
    }

    #[test]
    fn huge_delays_saturate_instead_of_panicking() {
        let mut backoff = Backoff::new(Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            assert!(backoff.next_delay() >= Duration::MAX / 2);
        }
    }
}
