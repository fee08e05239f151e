//! The response future that hands its observer on to the body.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;

use crate::{grpc_status_from_headers, CallEnd, CallObserver, ObservedBody};

pin_project! {
    /// Wraps a service's response future: polls it inside the observer's
    /// scope, then moves the observer into the [`ObservedBody`]. Dropped
    /// before that (the call was cancelled), it drops the inner future
    /// inside the scope too, so the handler's clean-up runs in the call.
    pub struct ObservedFuture<F, O: CallObserver> {
        // `None` only while being dropped.
        #[pin]
        inner: Option<F>,
        observer: Option<O>,
        grpc: bool,
    }

    impl<F, O: CallObserver> PinnedDrop for ObservedFuture<F, O> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            let _scope = this.observer.as_ref().map(CallObserver::scope);
            this.inner.set(None);
        }
    }
}

impl<F, O: CallObserver> ObservedFuture<F, O> {
    /// Observes `inner`, a gRPC call if `grpc`.
    pub fn new(inner: F, observer: O, grpc: bool) -> Self {
        Self {
            inner: Some(inner),
            observer: Some(observer),
            grpc,
        }
    }
}

impl<F, O, B, E> Future for ObservedFuture<F, O>
where
    F: Future<Output = Result<Response<B>, E>>,
    O: CallObserver,
    B: http_body::Body,
{
    type Output = Result<Response<ObservedBody<B, O>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _scope = this.observer.as_ref().map(CallObserver::scope);
            match this.inner.as_pin_mut() {
                Some(inner) => std::task::ready!(inner.poll(cx)),
                // Not reachable: `inner` is only taken while dropping.
                None => return Poll::Pending,
            }
        };
        let Some(observer) = this.observer.take() else {
            // Polled again after completion: nothing left to observe.
            return Poll::Ready(result.map(|r| r.map(ObservedBody::unobserved)));
        };
        Poll::Ready(match result {
            Ok(response) if !observer.wants_end() => {
                Ok(response.map(|body| ObservedBody::scoped(body, observer)))
            }
            Ok(response) => {
                let known = if *this.grpc {
                    grpc_status_from_headers(&response).map(CallEnd::Grpc)
                } else {
                    Some(CallEnd::Http(response.status().as_u16()))
                };
                Ok(response.map(|body| ObservedBody::new(body, observer, *this.grpc, known)))
            }
            Err(error) => {
                observer.end(CallEnd::Failed, 0);
                Err(error)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        future::Future,
        sync::{Arc, Mutex},
        task::{Context, Poll, Waker},
    };

    use http::Response;

    use super::ObservedFuture;
    use crate::{CallEnd, CallObserver};

    thread_local! {
        static IN_SCOPE: Cell<bool> = const { Cell::new(false) };
    }

    struct Flag;
    impl Drop for Flag {
        fn drop(&mut self) {
            IN_SCOPE.with(|in_scope| in_scope.set(false));
        }
    }

    struct Observer;
    impl CallObserver for Observer {
        type Scope<'a> = Flag;
        fn scope(&self) -> Flag {
            IN_SCOPE.with(|in_scope| in_scope.set(true));
            Flag
        }
        fn end(self, _: CallEnd, _: u64) {}
    }

    /// Never ready; records whether it was dropped inside the scope.
    struct Pending(Arc<Mutex<Option<bool>>>);
    impl Future for Pending {
        type Output = Result<Response<String>, ()>;
        fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            assert!(IN_SCOPE.with(Cell::get));
            Poll::Pending
        }
    }
    impl Drop for Pending {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(IN_SCOPE.with(Cell::get));
        }
    }

    #[test]
    fn a_cancelled_call_drops_its_future_inside_the_scope() {
        let dropped_in_scope = Arc::default();
        let mut future = Box::pin(ObservedFuture::new(
            Pending(Arc::clone(&dropped_in_scope)),
            Observer,
            true,
        ));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(future.as_mut().poll(&mut cx).is_pending());
        drop(future);
        assert_eq!(*dropped_in_scope.lock().unwrap(), Some(true));
        assert!(!IN_SCOPE.with(Cell::get));
    }
}
