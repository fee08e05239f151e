//! Blocking queries as the server's `blockingQuery` runs them. The client's
//! timeouts and its recovery after an agent restart depend on how long a
//! query may block, so the stand-in blocks exactly as long as a server.

use std::time::{Duration, Instant};

use super::{
    call::{bad_request, Call, Refusal},
    go::parse_go_duration,
    state::lock,
};

/// The `wait` and `index` of a query.
pub(super) struct BlockingQuery {
    /// In nanoseconds, as given (≤ 0 is the default).
    wait: Option<i128>,
    /// 0: answer at once.
    index: u64,
}

impl BlockingQuery {
    /// Reads `wait` and `index`; unparsable ones are 400.
    pub(super) fn parse(call: &Call) -> Result<Self, Refusal> {
        let wait = match call.query("wait").filter(|w| !w.is_empty()) {
            None => None,
            Some(text) => {
                Some(parse_go_duration(text).ok_or_else(|| bad_request("Invalid wait time"))?)
            }
        };
        let index = match call.query("index").filter(|i| !i.is_empty()) {
            None => 0,
            Some(text) => text
                .parse::<u64>()
                .map_err(|_| bad_request("Invalid index"))?,
        };
        Ok(Self { wait, index })
    }

    /// With `index` > 0, waits until the agent's index is past the caller's,
    /// however far below it the agent's index is (after a restart it waits
    /// it out), or until the timeout.
    pub(super) async fn block(&self, call: &Call) {
        if self.index == 0 {
            return;
        }
        let mut changed = lock(call.shared()).changed.subscribe();
        let _ = tokio::time::timeout(
            blocking_timeout(self.wait),
            changed.wait_for(|current| *current > self.index),
        )
        .await;
    }
}

/// A random fraction in [0, 1), for the server's jitter.
fn random_fraction() -> f64 {
    use std::hash::BuildHasher;
    let bits = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// How long a blocking query with this `wait` may block, as the server's
/// `RPCQueryTimeout` computes it: ≤ 0 or absent is 5 minutes, at most 10
/// minutes, plus up to 1/16 of random jitter.
fn blocking_timeout(wait: Option<i128>) -> Duration {
    const DEFAULT: Duration = Duration::from_secs(300);
    const MAX: Duration = Duration::from_secs(600);
    let wait = match wait {
        Some(nanos) if nanos > 0 => {
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)).min(MAX)
        }
        _ => DEFAULT,
    };
    wait + (wait / 16).mul_f64(random_fraction())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_timeouts_follow_the_server() {
        for wait in [None, Some(0), Some(-1)] {
            let timeout = blocking_timeout(wait);
            assert!(
                timeout >= Duration::from_secs(300)
                    && timeout < Duration::from_secs(300) + Duration::from_secs(300) / 16,
                "{wait:?}: {timeout:?}"
            );
        }
        let hour = Some(3_600_000_000_000);
        let capped = blocking_timeout(hour);
        assert!(capped >= Duration::from_secs(600) && capped < Duration::from_secs(640));
        let second = blocking_timeout(Some(1_000_000_000));
        assert!(second >= Duration::from_secs(1) && second < Duration::from_millis(1063));
    }
}
