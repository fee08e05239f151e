//! Closes a connection on which nothing was read or written for a while.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// Shared by a connection's [`IdleTimeout`] and its service: while the
/// server is producing a response (collecting a slow registry) the client
/// is waiting for it, not idle, however long that takes; the idle clock
/// restarts once the response is ready.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    /// Responses being produced.
    producing: AtomicUsize,
    /// Bumped each time one is ready (or abandoned).
    produced: AtomicU64,
}

impl InFlight {
    /// Marks a response as being produced until the guard is dropped.
    pub(super) fn start(self: &Arc<Self>) -> Producing {
        self.producing.fetch_add(1, Ordering::AcqRel);
        Producing(Arc::clone(self))
    }
}

/// From [`InFlight::start`]: drop it when the response is ready.
#[derive(Debug)]
pub(super) struct Producing(Arc<InFlight>);

impl Drop for Producing {
    fn drop(&mut self) {
        self.0.produced.fetch_add(1, Ordering::AcqRel);
        self.0.producing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wraps a connection so that a read, write, flush or shutdown that has
/// made no progress for `timeout` since the last byte moved fails with
/// [`io::ErrorKind::TimedOut`]; hyper then drops the connection. Time
/// during which the server produces a response (see [`InFlight`]) does not
/// count, and the clock restarts when the response is ready.
///
/// hyper's header-read timeout covers waiting for a request head; this
/// covers the rest: a request body trickled byte by byte, or a client that
/// never reads the response.
pub(super) struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    last_activity: Instant,
    sleep: Pin<Box<Sleep>>,
    in_flight: Arc<InFlight>,
    /// `in_flight.produced` when last looked at.
    produced_seen: u64,
}

impl<T> IdleTimeout<T> {
    pub(super) fn new(inner: T, timeout: Duration, in_flight: Arc<InFlight>) -> Self {
        let now = Instant::now();
        let produced_seen = in_flight.produced.load(Ordering::Acquire);
        Self {
            inner,
            timeout,
            last_activity: now,
            sleep: Box::pin(tokio::time::sleep_until(deadline(now, timeout))),
            in_flight,
            produced_seen,
        }
    }

    fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Called when the inner I/O is pending: fails once the idle deadline
    /// has passed, else arranges to be woken at it.
    fn poll_idle<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        // hyper reads while a request is being answered (to notice the
        // client closing); the time the answer took is not the client's.
        let produced = self.in_flight.produced.load(Ordering::Acquire);
        if produced != self.produced_seen {
            self.produced_seen = produced;
            self.touch();
        }
        if self.in_flight.producing.load(Ordering::Acquire) > 0 {
            // The task is woken when the response is ready (hyper polls
            // it); the inner I/O has registered for progress too.
            return Poll::Pending;
        }
        let deadline = deadline(self.last_activity, self.timeout);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "metrics connection idle for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Bytes written restart the idle clock; a write that waits counts
    /// against it.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.poll_idle(cx),
        }
    }
}

/// `from + timeout`, saturating far in the future instead of overflowing.
fn deadline(from: Instant, timeout: Duration) -> Instant {
    from.checked_add(timeout)
        .unwrap_or_else(|| from + Duration::from_secs(86_400 * 365))
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_idle(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.poll_idle(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.poll_idle(cx),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_and_activity_resets_the_clock() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, Duration::from_secs(5), Arc::default());
        let mut client = client;
        let mut buf = [0u8; 8];

        tokio::time::sleep(Duration::from_secs(4)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
        // 4 s in, then activity: still alive 4 s later.
        let started = Instant::now();
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_read_times_out_the_write() {
        let (_client, server) = tokio::io::duplex(16);
        let mut server = IdleTimeout::new(server, Duration::from_secs(3), Arc::default());
        let error = server.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn producing_a_response_is_not_idle_and_restarts_the_clock() {
        let (client, server) = tokio::io::duplex(64);
        let in_flight = Arc::new(InFlight::default());
        let mut server = IdleTimeout::new(server, Duration::from_secs(5), Arc::clone(&in_flight));
        let mut buf = [0u8; 8];

        // A response takes 20 s to produce while hyper waits on a read:
        // no timeout meanwhile.
        let producing = in_flight.start();
        let read = tokio::time::timeout(Duration::from_secs(20), server.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "timed out while a response was being produced"
        );
        drop(producing);

        // Ready: the clock restarts now, not at the last byte 20 s ago.
        let started = Instant::now();
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // Open until here, so that the reads waited instead of seeing EOF.
        drop(client);
    }
}
