//! The response body wrapper that finishes the call record when the body ends.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{status, CallRecorder};

pin_project! {
    /// A response body that counts its bytes and records the call when the
    /// last frame (for gRPC, the trailers with `grpc-status`) has been read.
    /// Dropped before its end, it records a cancellation.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        recorder: Option<CallRecorder>,
        grpc: bool,
        status: Option<&'static str>,
        bytes: u64,
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn new(
        inner: B,
        recorder: CallRecorder,
        grpc: bool,
        status: Option<&'static str>,
    ) -> Self {
        let mut body = Self {
            recorder: Some(recorder),
            grpc,
            status,
            bytes: 0,
            inner,
        };
        if body.inner.is_end_stream() {
            body.finish_now();
        }
        body
    }

    pub(crate) fn unrecorded(inner: B) -> Self {
        Self {
            inner,
            recorder: None,
            grpc: false,
            status: None,
            bytes: 0,
        }
    }

    fn finish_now(&mut self) {
        if let Some(recorder) = self.recorder.take() {
            recorder.finish(final_status(self.grpc, self.status), Some(self.bytes));
        }
    }
}

/// gRPC without any `grpc-status` ended abnormally: UNKNOWN.
fn final_status(grpc: bool, status: Option<&'static str>) -> &'static str {
    status.unwrap_or(if grpc {
        status::grpc_status_label(2)
    } else {
        "error"
    })
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        let finish = |recorder: &mut Option<CallRecorder>, status: &'static str, bytes: u64| {
            if let Some(recorder) = recorder.take() {
                recorder.finish(status, Some(bytes));
            }
        };
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += bytes::Buf::remaining(data) as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    if let Some(code) = trailers.get("grpc-status") {
                        *this.status = Some(super::layer::parse_grpc_status(code));
                    }
                }
            }
            Some(Err(_)) => {
                let status = if *this.grpc {
                    status::grpc_status_label(14)
                } else {
                    "error"
                };
                finish(this.recorder, status, *this.bytes);
            }
            None => finish(
                this.recorder,
                final_status(*this.grpc, *this.status),
                *this.bytes,
            ),
        }
        if this.inner.is_end_stream() {
            finish(
                this.recorder,
                final_status(*this.grpc, *this.status),
                *this.bytes,
            );
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
