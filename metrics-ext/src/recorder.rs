//! One call being recorded.

use std::{sync::Arc, time::Instant};

use crate::{
    cache::{Ended, MethodHandles, OwnedKey},
    call::{Call, Outcome},
    exemplar::TraceIds,
    metrics::Inner,
};

/// Labels not yet trusted: they came from the wire (a gRPC path, a Thrift
/// method name) and become a series only if the call succeeds, which shows
/// the server has the method and let the caller in.
pub(crate) struct Pending {
    pub(crate) inner: Arc<Inner>,
    pub(crate) key: OwnedKey,
}

/// Records one call: in flight from creation, finished with an
/// [`Outcome`].
///
/// Dropping it unfinished records the call as [`Outcome::Cancelled`] (the
/// caller went away). A call left out
/// ([`RpcMetricsBuilder::skip_health_checks`](crate::RpcMetricsBuilder::skip_health_checks),
/// [`skip_http_routes`](crate::RpcMetricsBuilder::skip_http_routes)) gets
/// a recorder that records nothing.
#[must_use = "a call is recorded when the recorder is finished or dropped"]
pub struct CallRecorder {
    /// `None` once finished, or from the start for a call left out.
    active: Option<Active>,
}

struct Active {
    handles: Arc<MethodHandles>,
    start: Instant,
    settle: Settle,
    /// [`NO_SIZE`] until known: a plain `u64` keeps the recorder, moved
    /// several times per call, a word smaller than an `Option`.
    request_size: u64,
    /// The sampled span current when the call started, for the exemplar
    /// of its duration: read at the start, where a tracing layer outside
    /// this one has made its span current (at the end it may not be: a
    /// client's response body is read in its caller's context).
    trace: Option<TraceIds>,
}

/// No request size: no message is that large.
const NO_SIZE: u64 = u64::MAX;

/// Where the call is recorded when it ends.
enum Settle {
    /// Under the handles it started with.
    Started,
    /// Under its own labels if it succeeds, else under the overflow
    /// handles it started with.
    Pending(Box<Pending>),
    /// Under the labels given by [`CallRecorder::relabel`].
    Relabeled(Arc<MethodHandles>),
    /// Nowhere: its labels, known late, are left out. It was in flight.
    Dropped,
}

impl std::fmt::Debug for CallRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallRecorder")
            .field("start", &self.active.as_ref().map(|active| active.start))
            .finish_non_exhaustive()
    }
}

impl CallRecorder {
    pub(crate) fn start(handles: Arc<MethodHandles>) -> Self {
        handles.started();
        let trace = handles.current_trace();
        Self {
            active: Some(Active {
                handles,
                start: Instant::now(),
                settle: Settle::Started,
                request_size: NO_SIZE,
                trace,
            }),
        }
    }

    /// The handles the call is recorded under whatever its outcome, if
    /// they are known now: not for a name still to be trusted, nor for a
    /// call left out.
    #[cfg(any(feature = "tower", feature = "volo"))]
    pub(crate) fn settled(&self) -> Option<&Arc<MethodHandles>> {
        match self.active.as_ref()? {
            Active {
                handles,
                settle: Settle::Started,
                ..
            } => Some(handles),
            _ => None,
        }
    }

    /// A call left out: records nothing, not even in flight.
    pub(crate) fn skipped() -> Self {
        Self { active: None }
    }

    /// Whether the call is recorded: false for a call left out from the
    /// start.
    // Only the Volo layers ask: they skip their body wrapper for such calls.
    #[cfg_attr(not(feature = "volo"), allow(dead_code))]
    pub(crate) fn is_recording(&self) -> bool {
        self.active.is_some()
    }

    /// In flight under `handles` (the overflow labels) until the outcome
    /// shows whether `pending` names a real method.
    pub(crate) fn start_pending(handles: Arc<MethodHandles>, pending: Pending) -> Self {
        let mut recorder = Self::start(handles);
        if let Some(active) = &mut recorder.active {
            active.settle = Settle::Pending(Box::new(pending));
        }
        recorder
    }

    /// Files the call under `call` once its labels are known — an HTTP
    /// server learns the route template only after its router ran, inside
    /// this layer. In flight, the call stays under the labels it started
    /// with. The labels must come from the server's own route table, never
    /// from the raw request (the method cap still applies).
    ///
    /// If `metrics` leaves `call` out (its route is listed in
    /// [`RpcMetricsBuilder::skip_http_routes`](crate::RpcMetricsBuilder::skip_http_routes)),
    /// the call records nothing when it ends, though it was counted in
    /// flight until then. A recorder that records nothing stays so.
    ///
    /// ```
    /// use rpc_ext_metrics::{Call, Outcome, RpcMetrics, Side};
    ///
    /// let metrics = RpcMetrics::builder().build().unwrap();
    /// let request = Call::http(Side::Server, &http::Method::GET);
    /// let mut call = metrics.start_call(request);
    /// // ... the router matched `/users/{id}`:
    /// call.relabel(&metrics, request.route("/users/{id}"));
    /// call.finish(Outcome::Http(200), None);
    /// ```
    pub fn relabel(&mut self, metrics: &crate::RpcMetrics, call: Call<'_>) {
        let Some(active) = &mut self.active else {
            return;
        };
        active.settle = if metrics.skips(&call) {
            Settle::Dropped
        } else {
            Settle::Relabeled(metrics.handles(call))
        };
    }

    /// Records the size of the request message (with the call, once its
    /// labels are settled).
    pub fn request_size(&mut self, bytes: u64) {
        if let Some(active) = &mut self.active {
            active.request_size = bytes.min(NO_SIZE - 1);
        }
    }

    /// Ends the call with `outcome` and, where known, the response size.
    #[inline]
    pub fn finish(mut self, outcome: impl Into<Outcome>, response_size: Option<u64>) {
        if let Some(active) = self.active.take() {
            active.complete(outcome.into(), response_size);
        }
    }
}

impl Active {
    fn complete(self, outcome: Outcome, response_size: Option<u64>) {
        let at = Instant::now();
        let ended = Ended {
            seconds: at.saturating_duration_since(self.start).as_secs_f64(),
            at,
            trace: self.trace,
        };
        self.handles.ended();
        let resolved;
        let target = match self.settle {
            Settle::Started => &self.handles,
            Settle::Relabeled(relabeled) => {
                resolved = relabeled;
                &resolved
            }
            // Only a success shows the name is real: an unknown method
            // (UNIMPLEMENTED), a caller an inner layer turned away
            // (UNAUTHENTICATED) or a reset (CANCELLED) stay under `_OTHER`.
            Settle::Pending(pending) if outcome.is_ok() => {
                resolved = pending
                    .inner
                    .cache
                    .get(&pending.inner, &pending.key.as_call());
                &resolved
            }
            Settle::Pending(_) => &self.handles,
            Settle::Dropped => return,
        };
        let request_size = (self.request_size != NO_SIZE).then_some(self.request_size);
        target.sizes(request_size, response_size);
        target.record(outcome, &ended);
    }
}

impl Drop for CallRecorder {
    fn drop(&mut self) {
        if let Some(active) = self.active.take() {
            active.complete(Outcome::Cancelled, None);
        }
    }
}
