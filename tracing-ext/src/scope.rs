//! Running code inside a call: its span's context current, its `tracing`
//! span entered.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use opentelemetry::ContextGuard;
use pin_project_lite::pin_project;

use crate::ActiveCall;

/// Held while code runs inside a call (see [`ActiveCall::enter`]): the
/// call's context is current and its `tracing` span entered until dropped.
#[must_use = "the call's context is current only while the scope is held"]
pub struct CallScope<'a> {
    // Entered after the context is attached and declared first so that it
    // drops first: guards are released in the reverse order of taking.
    _span: Option<tracing::span::Entered<'a>>,
    /// The fastrace path: the call's span as fastrace's local parent.
    #[cfg(feature = "fastrace")]
    _local_parent: Option<fastrace::local::LocalParentGuard>,
    // `None` on the fastrace path without a request id to carry.
    _context: Option<ContextGuard>,
}

impl std::fmt::Debug for CallScope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallScope").finish_non_exhaustive()
    }
}

impl ActiveCall {
    /// Makes the call's context current and enters its `tracing` span until
    /// the returned scope is dropped: what a layer wraps around every poll
    /// of the call's future and body. The context of a client call whose
    /// span records nothing (not sampled) is left as it is: only the
    /// transport runs below a client's span.
    ///
    /// On the fastrace path
    /// ([`RpcTracingBuilder::fastrace`](crate::RpcTracingBuilder::fastrace))
    /// a server call's span is fastrace's local parent instead, so that
    /// `fastrace::local::LocalSpan`s and `Span::enter_with_local_parent`
    /// made inside nest under it (a client call's is not: only the
    /// transport runs below it); the OpenTelemetry context is attached only
    /// when it carries a [`RequestId`](crate::RequestId).
    pub fn enter(&self) -> CallScope<'_> {
        #[cfg(feature = "fastrace")]
        if let Some(fast) = &self.fast {
            let context = self.attach_context.then(|| self.context().clone().attach());
            // A server's handler runs here and makes its spans under ours.
            // Below a client's span run only the transport's layers: no
            // local parent there, as each one costs fastrace a hand-over
            // to its collector per poll, spans or not.
            let local_parent = self.side.is_server().then(|| fast.span.set_local_parent());
            let span = self.tracing_span();
            return CallScope {
                _span: (!span.is_disabled()).then(|| span.enter()),
                _local_parent: local_parent,
                _context: context,
            };
        }
        // Below a client's span run only the transport's layers: for a span
        // that records nothing there is nothing to parent, and attaching
        // costs a context clone and two thread-local writes per poll.
        let context =
            (self.side.is_server() || self.recording).then(|| self.context().clone().attach());
        let span = self.tracing_span();
        CallScope {
            // A disabled span (no subscriber wants it) would do nothing on
            // enter and exit but the bookkeeping, on every poll.
            _span: (!span.is_disabled()).then(|| span.enter()),
            #[cfg(feature = "fastrace")]
            _local_parent: None,
            _context: context,
        }
    }

    /// Runs `future` inside this call: [`enter`](Self::enter) around each
    /// of its polls. What a layer does with the service it wraps:
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use rpc_ext_tracing::{CallInfo, Outcome, RpcTracing};
    ///
    /// let tracing = RpcTracing::builder().build();
    /// let info = CallInfo::grpc("/echo.Echo/Say");
    /// let call = tracing.start_server(&info, &HashMap::<String, String>::new());
    /// let reply = futures_executor::block_on(call.run(async {
    ///     // The handler: the call's span is the current context here.
    ///     "hello"
    /// }));
    /// call.finish(&Outcome::default());
    /// # assert_eq!(reply, "hello");
    /// ```
    pub fn run<F: Future>(&self, future: F) -> InCall<'_, F> {
        InCall {
            call: self,
            inner: Some(future),
        }
    }
}

pin_project! {
    /// The future of [`ActiveCall::run`]. Dropped before it finished (the
    /// call was cancelled), it drops the inner future inside the call too,
    /// so the handler's clean-up still logs under the call's span.
    #[must_use = "futures do nothing unless polled"]
    pub struct InCall<'a, F> {
        call: &'a ActiveCall,
        // `None` only while being dropped.
        #[pin]
        inner: Option<F>,
    }

    impl<F> PinnedDrop for InCall<'_, F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            let _scope = this.call.enter();
            this.inner.set(None);
        }
    }
}

impl<F: Future> Future for InCall<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _scope = this.call.enter();
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx),
            // Not reachable: `inner` is only taken while dropping.
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use crate::{CallInfo, RpcSystem, RpcTracing};

    #[tokio::test]
    async fn the_call_context_is_current_while_its_future_runs() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracing = RpcTracing::builder().tracer_provider(&provider).build();
        let info = CallInfo::rpc(RpcSystem::Grpc, "echo.Echo", "Say");
        let call = tracing.start_server(&info, &std::collections::HashMap::<String, String>::new());
        let expected = call.context().span().span_context().span_id();
        let seen = call
            .run(async {
                tokio::task::yield_now().await;
                opentelemetry::Context::current()
                    .span()
                    .span_context()
                    .span_id()
            })
            .await;
        assert_eq!(seen, expected);
        assert!(!opentelemetry::Context::current().has_active_span());

        // Cancelled: the inner future is dropped inside the call.
        struct SeesSpanOnDrop(std::sync::Arc<std::sync::Mutex<Option<bool>>>);
        impl Drop for SeesSpanOnDrop {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = Some(opentelemetry::Context::current().has_active_span());
            }
        }
        let seen_on_drop = std::sync::Arc::default();
        let guard = SeesSpanOnDrop(std::sync::Arc::clone(&seen_on_drop));
        let pending = call.run(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        let mut pending = Box::pin(pending);
        assert!(futures_poll_once(pending.as_mut()).is_pending());
        drop(pending);
        assert_eq!(*seen_on_drop.lock().unwrap(), Some(true));
    }

    fn futures_poll_once<F: std::future::Future>(
        future: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        let waker = std::task::Waker::noop();
        future.poll(&mut std::task::Context::from_waker(waker))
    }
}
