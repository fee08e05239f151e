//! The fault modes tests switch on through `ConsulStandIn`; each injected
//! answer is one a real agent or the network can produce.

use std::time::Duration;

use axum::http::StatusCode;

use super::{
    call::{text, Refusal},
    state::{lock, Shared},
};

#[derive(Debug, Default)]
pub(super) struct Faults {
    /// How many of the next requests answer 500.
    pub(super) fail_next: usize,
    /// How many of the next health queries answer a body that is not JSON.
    pub(super) garbage_next: usize,
    /// Added to every answer.
    pub(super) delay: Duration,
    /// Older agents' 500 to a TTL pass for an unknown check.
    pub(super) old_unknown_check: bool,
}

impl Faults {
    /// Whether this health answer is garbage (using one up).
    pub(super) fn take_garbage(&mut self) -> bool {
        take_one(&mut self.garbage_next)
    }
}

/// `true` (and one fewer left) while `count` is positive.
fn take_one(count: &mut usize) -> bool {
    let take = *count > 0;
    if take {
        *count -= 1;
    }
    take
}

/// The delay, then an injected 500 if one is due: `Err` is the answer to
/// send instead of the real one.
pub(super) async fn inject(agent: &Shared) -> Result<(), Refusal> {
    let (delay, fail) = {
        let mut agent = lock(agent);
        let fail = take_one(&mut agent.faults.fail_next);
        (agent.faults.delay, fail)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if fail {
        return Err(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stand-in: injected failure",
        ));
    }
    Ok(())
}
