//! [`MetricsObserver`]: a call record carried to the end of its response
//! body, for the tower layer and the Volo gRPC server layer alike.

use rpc_ext_core::{CallEnd, CallObserver};

use crate::{CallRecorder, Outcome};

/// Finishes the call record when [`rpc_ext_core`] reports the call's end;
/// dropped unended (the caller went away), the record is a cancellation.
#[derive(Debug)]
pub struct MetricsObserver {
    recorder: CallRecorder,
}

impl MetricsObserver {
    pub(crate) fn new(recorder: CallRecorder) -> Self {
        Self { recorder }
    }
}

impl CallObserver for MetricsObserver {
    type Scope<'a> = ();

    fn scope(&self) {}

    fn end(self, end: CallEnd, response_bytes: u64) {
        let size = (end != CallEnd::Failed).then_some(response_bytes);
        self.recorder.finish(Outcome::from(end), size);
    }
}
