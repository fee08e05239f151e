//! [`TracingObserver`]: a traced call carried to the end of its response
//! body, for the tower layer and the Volo gRPC server layer alike.

use rpc_ext_core::{CallEnd, CallObserver, Side};

use crate::{ActiveCall, CallScope, Outcome};

/// Ends the span when [`rpc_ext_core`] reports the call's end, and keeps
/// the span's context current while the call's future is polled, and on
/// the server side while the response body is (a streaming handler's code
/// runs there). A client's response body is read in the caller's context:
/// nothing below it runs on the caller's behalf.
pub struct TracingObserver {
    call: ActiveCall,
    side: Side,
}

impl TracingObserver {
    pub(crate) fn new(call: ActiveCall, side: Side) -> Self {
        Self { call, side }
    }
}

impl std::fmt::Debug for TracingObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.call.fmt(f)
    }
}

impl CallObserver for TracingObserver {
    type Scope<'a> = Option<CallScope<'a>>;

    fn scope(&self) -> Self::Scope<'_> {
        Some(self.call.enter())
    }

    fn body_scope(&self) -> Self::Scope<'_> {
        self.side.is_server().then(|| self.call.enter())
    }

    fn wants_end(&self) -> bool {
        self.call.needs_outcome()
    }

    fn end(self, end: CallEnd, response_bytes: u64) {
        let mut outcome = outcome(end);
        if end != CallEnd::Failed {
            outcome.response_size = Some(response_bytes);
        }
        self.call.finish(&outcome);
    }
}

/// The span's outcome for how a call ended (no sizes, no peer).
pub(crate) fn outcome(end: CallEnd) -> Outcome {
    let mut outcome = Outcome::default();
    match end {
        CallEnd::Grpc(code) => outcome.grpc_code = Some(code),
        CallEnd::Http(status) => outcome.http_status = Some(status),
        // No response at all.
        CallEnd::Failed => outcome.error_type = Some("transport".into()),
    }
    outcome
}
