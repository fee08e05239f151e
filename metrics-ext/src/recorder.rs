//! One call being recorded.

use std::{sync::Arc, time::Instant};

use crate::{cache::MethodHandles, metrics::Inner, RpcSystem, Side};

/// Labels not yet trusted: they came from the wire (a gRPC path) and become
/// a series only if the server turns out to know the method.
pub(crate) struct Pending {
    pub(crate) inner: Arc<Inner>,
    pub(crate) side: Side,
    pub(crate) system: RpcSystem,
    pub(crate) service: Box<str>,
    pub(crate) method: Box<str>,
    pub(crate) peer: Box<str>,
}

/// Records one call: in flight from creation, finished with a status.
///
/// Dropping it unfinished records the call as cancelled (the caller went
/// away), with the cancelled status of its RPC system.
#[must_use = "a call is recorded when the recorder is finished or dropped"]
pub struct CallRecorder {
    handles: Arc<MethodHandles>,
    start: Instant,
    cancelled_status: &'static str,
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
    pub(crate) fn start(handles: Arc<MethodHandles>, cancelled_status: &'static str) -> Self {
        handles.started();
        Self {
            handles,
            start: Instant::now(),
            cancelled_status,
            finished: false,
            pending: None,
            relabeled: None,
            request_size: None,
        }
    }

    /// In flight under `handles` (the overflow labels) until the outcome
    /// shows whether `pending` names a real method.
    pub(crate) fn start_pending(
        handles: Arc<MethodHandles>,
        cancelled_status: &'static str,
        pending: Pending,
    ) -> Self {
        let mut recorder = Self::start(handles, cancelled_status);
        recorder.pending = Some(Box::new(pending));
        recorder
    }

    /// Files the call under `service` and `method` once they are known —
    /// an HTTP server learns the route template only after its router ran,
    /// inside this layer. In flight, the call stays under the labels it
    /// started with. The labels must come from the server's own route table,
    /// never from the raw request (the method cap still applies).
    pub fn relabel(&mut self, metrics: &crate::RpcMetrics, service: &str, method: &str) {
        let (side, system, peer) = self.handles.origin();
        let inner = &metrics.inner;
        self.pending = None;
        self.relabeled = Some(inner.cache.get(inner, side, system, service, method, peer));
    }

    /// Records the size of the request message (with the call, once its
    /// labels are settled).
    pub fn request_size(&mut self, bytes: u64) {
        self.request_size = Some(bytes);
    }

    /// Ends the call with `status` (see [`crate::status`]) and, where known,
    /// the response size.
    pub fn finish(mut self, status: &'static str, response_size: Option<u64>) {
        self.complete(status, response_size);
    }

    fn complete(&mut self, status: &'static str, response_size: Option<u64>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let seconds = self.start.elapsed().as_secs_f64();
        self.handles.ended();
        let resolved;
        let target = match (&self.relabeled, self.pending.take()) {
            (Some(relabeled), _) => relabeled,
            (None, Some(p)) if !names_unknown_method(p.system, status) => {
                resolved = p
                    .inner
                    .cache
                    .get(&p.inner, p.side, p.system, &p.service, &p.method, &p.peer);
                &resolved
            }
            _ => &self.handles,
        };
        target.sizes(self.request_size, response_size);
        target.record(status, seconds);
    }
}

impl Drop for CallRecorder {
    fn drop(&mut self) {
        let status = self.cancelled_status;
        self.complete(status, None);
    }
}

/// Whether `status` is how `system` answers a method it does not have.
fn names_unknown_method(system: RpcSystem, status: &str) -> bool {
    match system {
        RpcSystem::Grpc => status == rpc_ext_core::GrpcCode::UNIMPLEMENTED.as_label(),
        RpcSystem::Thrift => status == rpc_ext_core::thrift::APPLICATION_EXCEPTION,
        RpcSystem::Http => false,
    }
}
