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
    // Declared first so it drops first: the `tracing` span is left before
    // the context it was entered under is detached.
    _span: Option<tracing::span::Entered<'a>>,
    _context: ContextGuard,
}

impl std::fmt::Debug for CallScope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallScope").finish_non_exhaustive()
    }
}

impl ActiveCall {
    /// Makes the call's context current and enters its `tracing` span until
    /// the returned scope is dropped: what a layer wraps around every poll
    /// of the call's future and body.
    pub fn enter(&self) -> CallScope<'_> {
        let span = self.tracing_span();
        CallScope {
            // A disabled span (no subscriber wants it) would do nothing on
            // enter and exit but the bookkeeping, on every poll.
            _span: (!span.is_disabled()).then(|| span.enter()),
            _context: self.context().clone().attach(),
        }
    }

    /// Runs `future` inside this call: [`enter`](Self::enter) around each
    /// of its polls. What a layer does with the service it wraps:
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use tracing_ext::{CallInfo, Outcome, RpcSystem, RpcTracing};
    ///
    /// let tracing = RpcTracing::builder().build();
    /// let info = CallInfo {
    ///     system: RpcSystem::Grpc,
    ///     service: "echo.Echo",
    ///     method: "Say",
    ///     server_addr: None,
    ///     peer_addr: None,
    ///     request_size: None,
    /// };
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
            inner: future,
        }
    }
}

pin_project! {
    /// The future of [`ActiveCall::run`].
    #[must_use = "futures do nothing unless polled"]
    pub struct InCall<'a, F> {
        call: &'a ActiveCall,
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for InCall<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _scope = this.call.enter();
        this.inner.poll(cx)
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
        let info = CallInfo {
            system: RpcSystem::Grpc,
            service: "echo.Echo",
            method: "Say",
            server_addr: None,
            peer_addr: None,
            request_size: None,
        };
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
    }
}
