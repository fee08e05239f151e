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
    /// scope, then moves the observer into the [`ObservedBody`].
    pub struct ObservedFuture<F, O> {
        #[pin]
        inner: F,
        observer: Option<O>,
        grpc: bool,
    }
}

impl<F, O> ObservedFuture<F, O> {
    /// Observes `inner`, a gRPC call if `grpc`.
    pub fn new(inner: F, observer: O, grpc: bool) -> Self {
        Self {
            inner,
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
            std::task::ready!(this.inner.poll(cx))
        };
        let Some(observer) = this.observer.take() else {
            // Polled again after completion: nothing left to observe.
            return Poll::Ready(result.map(|r| r.map(ObservedBody::unobserved)));
        };
        Poll::Ready(match result {
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
