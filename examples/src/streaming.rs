//! The shapes of the Echo streaming replies, written once for both
//! frameworks: each server only supplies its message and status types.

use std::time::Duration;

use futures::{Stream, StreamExt};

/// The most replies a `Count` call gets: the request comes from the network
/// and must not keep a server busy without end.
pub(crate) const MAX_COUNT: u32 = 1000;

/// The longest pause between `Count` replies, for the same reason.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(10);

/// `count` replies made by `reply(n)` for n = 1..=count, each `interval`
/// after the previous one, then, `interval` after the last, the end: `Ok` ends
/// the stream, `Err(e)` sends `e` (a status in the trailers) and then ends.
/// The pause before the end keeps the call open after its last message, the
/// case where a call measured at its last message would be measured short.
pub(crate) fn paced<R, E>(
    count: u32,
    interval: Duration,
    end: Result<(), E>,
    reply: impl Fn(u32) -> R + Send + 'static,
) -> impl Stream<Item = Result<R, E>> + Send + 'static
where
    R: Send + 'static,
    E: Send + 'static,
{
    let count = count.min(MAX_COUNT);
    let interval = interval.min(MAX_INTERVAL);
    futures::stream::unfold((1, Some(end), reply), move |(n, end, reply)| async move {
        let end = end?;
        // No pause asked for: no timer (it would still wait a tick).
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        if n <= count {
            let item = Ok(reply(n));
            return Some((item, (n + 1, Some(end), reply)));
        }
        // Nothing follows the end: `None` as the next state stops the
        // stream after the error, or right away on success.
        end.err().map(|error| (Err(error), (n, None, reply)))
    })
}

/// Answers each request message with `reply(message)` as it arrives, until
/// the requests end (the stream ends: OK) or fail; a message for which
/// `is_fail` holds sends `fail()` instead and ends the stream, as does an
/// error of the request stream (passed on).
pub(crate) fn echo_each<M, R, E, S>(
    requests: S,
    is_fail: fn(&M) -> bool,
    fail: fn() -> E,
    reply: impl Fn(M) -> R + Send + 'static,
) -> impl Stream<Item = Result<R, E>> + Send + 'static
where
    S: Stream<Item = Result<M, E>> + Send + Unpin + 'static,
    M: Send + 'static,
    R: Send + 'static,
    E: Send + 'static,
{
    futures::stream::unfold(
        (Some(requests), reply),
        move |(requests, reply)| async move {
            let mut requests = requests?;
            let item = match requests.next().await? {
                Ok(message) if is_fail(&message) => Err(fail()),
                Ok(message) => Ok(reply(message)),
                Err(error) => Err(error),
            };
            // After an error the stream ends: drop the requests.
            let requests = item.is_ok().then_some(requests);
            Some((item, (requests, reply)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paced_replies_then_ends_with_the_error() {
        let started = tokio::time::Instant::now();
        let items: Vec<Result<u32, &str>> = paced(2, Duration::from_millis(10), Err("down"), |n| n)
            .collect()
            .await;
        assert_eq!(items, vec![Ok(1), Ok(2), Err("down")]);
        // Two replies and the pause before the end.
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn paced_is_capped() {
        let items: Vec<Result<u32, ()>> = paced(u32::MAX, Duration::ZERO, Ok(()), |n| n)
            .collect()
            .await;
        assert_eq!(items.len(), MAX_COUNT as usize);
    }

    #[tokio::test]
    async fn echo_each_stops_at_the_failing_message() {
        let requests = futures::stream::iter(vec![Ok("a"), Ok("fail"), Ok("b")]);
        let items: Vec<Result<String, &str>> = echo_each(
            requests,
            |m| *m == "fail",
            || "unavailable",
            |m: &str| m.to_uppercase(),
        )
        .collect()
        .await;
        assert_eq!(items, vec![Ok("A".to_owned()), Err("unavailable")]);
    }
}
