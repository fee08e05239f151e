//! One call being recorded.

use std::{sync::Arc, time::Instant};

use crate::{
    cache::{MethodHandles, OwnedKey},
    call::{Call, Outcome},
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
/// caller went away).
#[must_use = "a call is recorded when the recorder is finished or dropped"]
pub struct CallRecorder {
    handles: Arc<MethodHandles>,
    start: Instant,
    finished: bool,
    pending: Option<Box<Pending>>,
    relabeled: Option<Arc<MethodHandles>>,
    request_size: Option<u64>,
}

impl std::fmt::Debug for CallRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallRecorder")
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl CallRecorder {
    pub(crate) fn start(handles: Arc<MethodHandles>) -> Self {
        handles.started();
        Self {
            handles,
            start: Instant::now(),
            finished: false,
            pending: None,
            relabeled: None,
            request_size: None,
        }
    }

    /// In flight under `handles` (the overflow labels) until the outcome
    /// shows whether `pending` names a real method.
    pub(crate) fn start_pending(handles: Arc<MethodHandles>, pending: Pending) -> Self {
        let mut recorder = Self::start(handles);
        recorder.pending = Some(Box::new(pending));
        recorder
    }

    /// Files the call under `call` once its labels are known — an HTTP
    /// server learns the route template only after its router ran, inside
    /// this layer. In flight, the call stays under the labels it started
    /// with. The labels must come from the server's own route table, never
    /// from the raw request (the method cap still applies).
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
        self.pending = None;
        self.relabeled = Some(metrics.handles(call));
    }

    /// Records the size of the request message (with the call, once its
    /// labels are settled).
    pub fn request_size(&mut self, bytes: u64) {
        self.request_size = Some(bytes);
    }

    /// Ends the call with `outcome` and, where known, the response size.
    pub fn finish(mut self, outcome: impl Into<Outcome>, response_size: Option<u64>) {
        self.complete(outcome.into(), response_size);
    }

    fn complete(&mut self, outcome: Outcome, response_size: Option<u64>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let seconds = self.start.elapsed().as_secs_f64();
        self.handles.ended();
        let resolved;
        let target = match (&self.relabeled, self.pending.take()) {
            (Some(relabeled), _) => relabeled,
            // Only a success shows the name is real: an unknown method
            // (UNIMPLEMENTED), a caller an inner layer turned away
            // (UNAUTHENTICATED) or a reset (CANCELLED) stay under `_OTHER`.
            (None, Some(pending)) if outcome.is_ok() => {
                resolved = pending
                    .inner
                    .cache
                    .get(&pending.inner, &pending.key.as_call());
                &resolved
            }
            _ => &self.handles,
        };
        target.sizes(self.request_size, response_size);
        target.record(outcome, seconds);
    }
}

impl Drop for CallRecorder {
    fn drop(&mut self) {
        self.complete(Outcome::Cancelled, None);
    }
}
