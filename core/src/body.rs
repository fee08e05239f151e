//! The response body that tells its observer how the call ended.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{classify::grpc_status_from_trailers, CallEnd, CallObserver, GrpcCode};

pin_project! {
    /// A response body that counts its bytes and calls its observer once:
    /// at the end of the stream (for gRPC, after the trailers with
    /// `grpc-status`), or on a body error. Dropped before the end, it drops
    /// the observer unended (a cancellation). An observer that does not
    /// want the end ([`CallObserver::wants_end`]) only has its scope
    /// entered around polls, and is dropped with the body.
    pub struct ObservedBody<B, O> {
        #[pin]
        inner: B,
        observer: Option<O>,
        grpc: bool,
        known: Option<CallEnd>,
        bytes: u64,
        // Whether the frames are looked at for the end.
        watching: bool,
    }
}

impl<B: Body, O: CallObserver> ObservedBody<B, O> {
    pub(crate) fn new(inner: B, observer: O, grpc: bool, known: Option<CallEnd>) -> Self {
        let mut body = Self {
            observer: Some(observer),
            grpc,
            known,
            bytes: 0,
            watching: true,
            inner,
        };
        if body.inner.is_end_stream() {
            let end = body.end_of_stream();
            if let Some(observer) = body.observer.take() {
                observer.end(end, 0);
            }
        }
        body
    }

    fn end_of_stream(&self) -> CallEnd {
        end_of_stream(self.grpc, self.known)
    }
}

impl<B, O> ObservedBody<B, O> {
    pub(crate) fn unobserved(inner: B) -> Self {
        Self {
            inner,
            observer: None,
            grpc: false,
            known: None,
            bytes: 0,
            watching: false,
        }
    }

    /// Enters `observer`'s body scope around polls, and nothing else: for
    /// an observer that does not want the end.
    pub(crate) fn scoped(inner: B, observer: O) -> Self {
        Self {
            observer: Some(observer),
            ..Self::unobserved(inner)
        }
    }
}

/// A gRPC response that ended without any `grpc-status` ended abnormally.
fn end_of_stream(grpc: bool, known: Option<CallEnd>) -> CallEnd {
    known.unwrap_or(if grpc {
        CallEnd::Grpc(GrpcCode::UNKNOWN)
    } else {
        CallEnd::Failed
    })
}

impl<B: Body, O: CallObserver> Body for ObservedBody<B, O> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = {
            let _scope = this.observer.as_ref().map(CallObserver::body_scope);
            this.inner.as_mut().poll_frame(cx)
        };
        // Looked at in place and returned as it came: taking the frame out
        // of the `Poll` and wrapping it again costs two copies of it on
        // every frame.
        let Poll::Ready(frame) = &polled else {
            return polled;
        };
        if !*this.watching {
            return polled;
        }
        let ended = match frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(code) = grpc_status_from_trailers(trailers) {
                        *this.known = Some(CallEnd::Grpc(code));
                    }
                    // Trailers are always the last frame.
                    Some(end_of_stream(*this.grpc, *this.known))
                } else {
                    if let Some(data) = frame.data_ref() {
                        *this.bytes += bytes::Buf::remaining(data) as u64;
                    }
                    // A gRPC body ends with its trailers: asking the stream
                    // after every message costs a lock in h2 for nothing.
                    (!*this.grpc && this.inner.is_end_stream())
                        .then(|| end_of_stream(*this.grpc, *this.known))
                }
            }
            Some(Err(_)) => Some(if *this.grpc {
                CallEnd::Grpc(GrpcCode::UNAVAILABLE)
            } else {
                CallEnd::Failed
            }),
            None => Some(end_of_stream(*this.grpc, *this.known)),
        };
        if let Some(end) = ended {
            if let Some(observer) = this.observer.take() {
                observer.end(end, *this.bytes);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        convert::Infallible,
        sync::{Arc, Mutex},
    };

    use bytes::Bytes;
    use http::HeaderMap;
    use http_body_util::BodyExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<(CallEnd, u64)>>>);

    impl CallObserver for Seen {
        type Scope<'a> = ();
        fn scope(&self) {}
        fn end(self, end: CallEnd, bytes: u64) {
            self.0.lock().unwrap().push((end, bytes));
        }
    }

    /// A body yielding the given frames.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn observe(
        frames: Vec<Frame<Bytes>>,
        grpc: bool,
        known: Option<CallEnd>,
    ) -> (ObservedBody<Frames, Seen>, Seen) {
        let seen = Seen::default();
        (
            ObservedBody::new(Frames(frames.into()), seen.clone(), grpc, known),
            seen,
        )
    }

    #[tokio::test]
    async fn grpc_status_comes_from_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        let (body, seen) = observe(
            vec![
                Frame::data(Bytes::from_static(b"hello")),
                Frame::trailers(trailers),
            ],
            true,
            None,
        );
        body.collect().await.unwrap();
        assert_eq!(
            *seen.0.lock().unwrap(),
            vec![(CallEnd::Grpc(GrpcCode::NOT_FOUND), 5)]
        );
    }

    #[tokio::test]
    async fn grpc_without_status_is_unknown_and_http_keeps_its_status() {
        let (body, seen) = observe(vec![Frame::data(Bytes::from_static(b"x"))], true, None);
        body.collect().await.unwrap();
        assert_eq!(
            *seen.0.lock().unwrap(),
            vec![(CallEnd::Grpc(GrpcCode::UNKNOWN), 1)]
        );

        let (body, seen) = observe(
            vec![Frame::data(Bytes::from_static(b"abc"))],
            false,
            Some(CallEnd::Http(404)),
        );
        body.collect().await.unwrap();
        assert_eq!(*seen.0.lock().unwrap(), vec![(CallEnd::Http(404), 3)]);
    }

    /// Counts scopes entered and whether it was dropped; wants no end.
    struct ScopeOnly {
        scopes: Arc<Mutex<u32>>,
        dropped: Arc<Mutex<bool>>,
    }

    impl CallObserver for ScopeOnly {
        type Scope<'a> = ();
        fn scope(&self) {
            *self.scopes.lock().unwrap() += 1;
        }
        fn end(self, _: CallEnd, _: u64) {
            panic!("an observer that wants no end was told the end");
        }
        fn wants_end(&self) -> bool {
            false
        }
    }

    impl Drop for ScopeOnly {
        fn drop(&mut self) {
            *self.dropped.lock().unwrap() = true;
        }
    }

    #[tokio::test]
    async fn an_observer_that_wants_no_end_gets_its_scope_only() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        let (scopes, dropped) = (Arc::default(), Arc::default());
        let response = http::Response::new(Frames(
            vec![
                Frame::data(Bytes::from_static(b"hello")),
                Frame::trailers(trailers),
            ]
            .into(),
        ));
        let observer = ScopeOnly {
            scopes: Arc::clone(&scopes),
            dropped: Arc::clone(&dropped),
        };
        let future = crate::ObservedFuture::new(
            std::future::ready(Ok::<_, Infallible>(response)),
            observer,
            true,
        );
        let body = future.await.unwrap().into_body();
        // Future poll, then three body polls (data, trailers, end).
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().map(HeaderMap::len), Some(1));
        assert_eq!(*scopes.lock().unwrap(), 4);
        assert!(*dropped.lock().unwrap(), "dropped with the body");
    }

    #[tokio::test]
    async fn dropping_the_body_early_never_ends_the_call() {
        let (body, seen) = observe(vec![Frame::data(Bytes::from_static(b"x"))], true, None);
        drop(body);
        assert!(seen.0.lock().unwrap().is_empty());
    }
}
