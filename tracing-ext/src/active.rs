//! A call being traced, and how its span ends: status, error, and for a
//! server's method not known at the start, the method.

use std::{borrow::Cow, sync::Arc};

use opentelemetry::{
    trace::{SpanRef, Status, TraceContextExt},
    Context, KeyValue, StringValue,
};
use rpc_ext_core::semconv::{attr, old_attr, Conventions};

use crate::{
    attributes::{self, AttributeValue, Attributes},
    grpc_code_is_error, http_status_is_error, intern,
    methods::MethodSet,
    recent, GrpcCode, Outcome, RequestId, RpcSystem, Side,
};

/// A call being traced: its context (to run the call in) and, if traced,
/// its span. End it with [`finish`](Self::finish); dropping it unfinished
/// ends the span as cancelled.
#[must_use = "a span ends when the call is finished or dropped"]
pub struct ActiveCall {
    cx: Context,
    pub(crate) side: Side,
    system: RpcSystem,
    conventions: Conventions,
    traced: bool,
    /// The span records (was sampled).
    pub(crate) recording: bool,
    pub(crate) record_sizes: bool,
    /// Spans have the conventional names (no formatter): a method settled
    /// at the end, a route matched later, rename the span.
    pub(crate) renames: bool,
    /// `network.peer.*` was set at the start.
    pub(crate) peer_known: bool,
    /// HTTP: the normalized request method.
    pub(crate) http_method: &'static str,
    /// HTTP server: `http.route` was set at the start.
    pub(crate) route_known: bool,
    /// A server method to settle at the end.
    pub(crate) pending: Option<Box<Pending>>,
    tracing_span: tracing::Span,
    finished: bool,
    /// The fastrace path: the call's span (the context then holds none).
    /// Boxed: a fastrace span is larger than the rest of the call, which
    /// the SDK path moves from future to body.
    #[cfg(feature = "fastrace")]
    pub(crate) fast: Option<Box<crate::fastrace_span::FastCall>>,
    /// The fastrace path: attach the context around polls (it carries a
    /// request id).
    #[cfg(feature = "fastrace")]
    pub(crate) attach_context: bool,
}

/// A server's method that was not known when its call started.
pub(crate) struct Pending {
    /// `service/method`.
    pub(crate) full: String,
    /// Where the service ends in `full`.
    pub(crate) service_len: usize,
    pub(crate) methods: Arc<MethodSet>,
}

impl std::fmt::Debug for ActiveCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveCall")
            .field("span", &self.cx.span().span_context())
            .field("traced", &self.traced)
            .finish_non_exhaustive()
    }
}

/// A span being ended takes its attributes one at a time: a call usually
/// ends with one or two, and gathering them first costs more than the
/// span's lock per attribute.
impl Attributes for SpanRef<'_> {
    fn add(&mut self, key: &'static str, value: impl AttributeValue) {
        self.set_attribute(KeyValue::new(key, value));
    }
}

/// A span being ended: its attributes, new name and error status.
pub(crate) trait EndingSpan: Attributes {
    fn rename(&mut self, name: Cow<'static, str>);
    fn fail(&mut self, description: Cow<'static, str>);
}

impl EndingSpan for SpanRef<'_> {
    fn rename(&mut self, name: Cow<'static, str>) {
        self.update_name(name);
    }

    fn fail(&mut self, description: Cow<'static, str>) {
        self.set_status(Status::error(description));
    }
}

#[cfg(feature = "fastrace")]
impl EndingSpan for crate::fastrace_span::Properties {
    fn rename(&mut self, name: Cow<'static, str>) {
        self.push_static(crate::fastrace_span::SPAN_NAME_PROPERTY, name);
    }

    fn fail(&mut self, description: Cow<'static, str>) {
        self.push_static(
            fastrace_opentelemetry::SPAN_STATUS_CODE,
            Cow::Borrowed("error"),
        );
        self.push_static(fastrace_opentelemetry::SPAN_STATUS_DESCRIPTION, description);
    }
}

impl ActiveCall {
    pub(crate) fn untraced(cx: Context, side: Side, system: RpcSystem) -> Self {
        let mut call = Self::traced(
            cx,
            side,
            system,
            Conventions::Current,
            tracing::Span::none(),
        );
        call.traced = false;
        call
    }

    pub(crate) fn traced(
        cx: Context,
        side: Side,
        system: RpcSystem,
        conventions: Conventions,
        tracing_span: tracing::Span,
    ) -> Self {
        Self {
            cx,
            side,
            system,
            conventions,
            traced: true,
            recording: false,
            record_sizes: false,
            renames: true,
            peer_known: false,
            http_method: "",
            route_known: false,
            pending: None,
            tracing_span,
            finished: false,
            #[cfg(feature = "fastrace")]
            fast: None,
            #[cfg(feature = "fastrace")]
            attach_context: false,
        }
    }

    /// The context to run the call in (holds the span as current).
    #[must_use]
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// The `tracing` span to run the call in (`Span::none()` when disabled).
    #[must_use]
    pub fn tracing_span(&self) -> &tracing::Span {
        &self.tracing_span
    }

    /// Records the route template an HTTP server's router matched after
    /// the call started (`http.route`), and names the span by it
    /// (`GET /users/{id}`). Call it at most once, and only for a call
    /// started without a route; an unmatched request keeps the name of its
    /// method alone.
    pub fn set_http_route(&self, route: &str) {
        if !self.traced || self.route_known || !self.side.is_server() || route.is_empty() {
            return;
        }
        let names = recent::call_names(RpcSystem::Http, route, self.http_method);
        #[cfg(feature = "fastrace")]
        if let Some(fast) = &self.fast {
            if self.recording {
                let _ = fast.late_route.set((names.full, names.service));
            }
            return;
        }
        let span = self.cx.span();
        if self.renames {
            span.update_name(names.full.clone());
        }
        span.set_attribute(KeyValue::new(
            attr::HTTP_ROUTE,
            StringValue::from(names.service.clone()),
        ));
    }

    /// Records the `x-request-id` a server call came in with on its span
    /// (a recording span only: an unsampled call records nothing).
    pub(crate) fn record_request_id(&self, id: &RequestId) {
        // (The fastrace path records it with the start attributes.)
        if self.traced && self.recording {
            attributes::request_id(&mut self.cx.span(), id, self.system, self.conventions);
        }
    }

    /// Whether the call's outcome is of any use: its span records, or a
    /// server's method is settled by the status (learned even unsampled,
    /// so that samplers see it named). Otherwise the layers need not read
    /// the status or keep the call to the end of the response.
    // Only the framework layers (features `tower`, `volo`) ask.
    #[cfg_attr(not(any(feature = "tower", feature = "volo")), allow(dead_code))]
    pub(crate) fn needs_outcome(&self) -> bool {
        self.traced && (self.recording || self.pending.is_some())
    }

    /// Ends the span with the call's outcome.
    pub fn finish(mut self, outcome: &Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: &Outcome) {
        if self.finished || !self.traced {
            self.finished = true;
            return;
        }
        self.finished = true;
        let pending = self.pending.take();
        #[cfg(feature = "fastrace")]
        if let Some(fast) = self.fast.take() {
            let crate::fastrace_span::FastCall {
                span,
                mut properties,
                late_route,
            } = *fast;
            if !self.recording {
                learn(pending, outcome);
                // Dropped: the span ends, and reports nothing.
                return;
            }
            if let Some((name, route)) = late_route.into_inner() {
                if self.renames {
                    properties.rename(name);
                }
                properties.add(attr::HTTP_ROUTE, route);
            }
            self.record_end(outcome, pending, &mut properties);
            // Dropped: the span ends now.
            drop(properties.apply(span));
            return;
        }
        let mut span = self.cx.span();
        if !self.recording {
            // Nothing to record; a pending method is still learned.
            learn(pending, outcome);
            span.end();
            return;
        }
        self.record_end(outcome, pending, &mut span);
        span.end();
    }

    /// What a recording span ends with.
    fn record_end(
        &self,
        outcome: &Outcome,
        pending: Option<Box<Pending>>,
        span: &mut impl EndingSpan,
    ) {
        if let Some(pending) = pending {
            if let Some(name) = self.settle(*pending, outcome.grpc_code, span) {
                span.rename(name);
            }
        }
        let mut error: Option<Cow<'static, str>> = None;
        if let Some(code) = outcome.grpc_code {
            if self.conventions.current() {
                span.add(attr::RPC_RESPONSE_STATUS_CODE, code.name());
            }
            if self.conventions.old() {
                span.add(old_attr::RPC_GRPC_STATUS_CODE, i64::from(code.as_i32()));
            }
            if grpc_code_is_error(code, self.side) {
                error = Some(Cow::Borrowed(if self.conventions.current() {
                    code.name()
                } else {
                    code.as_label()
                }));
            }
        }
        if let Some(status) = outcome.http_status {
            span.add(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(status));
            if http_status_is_error(status, self.side) {
                error = Some(Cow::Owned(status.to_string()));
            }
        }
        if let Some(error_type) = &outcome.error_type {
            error = Some(error_type.clone());
        }
        if let Some(addr) = outcome.peer_addr.filter(|_| !self.peer_known) {
            attributes::peer(span, addr);
        }
        if self.record_sizes {
            if let Some(size) = outcome.response_size {
                span.add(
                    crate::semconv::RPC_RESPONSE_SIZE,
                    i64::try_from(size).unwrap_or(i64::MAX),
                );
            }
        }
        if let Some(error) = &error {
            span.add(attr::ERROR_TYPE, error.clone());
        }
        if let Some(error) = error {
            span.fail(error);
        }
    }

    /// The method of a server call that started unknown: the method itself
    /// if the call ended OK (and the set has room for it), else `_OTHER`. Returns the span's new name.
    fn settle(
        &self,
        pending: Pending,
        code: Option<GrpcCode>,
        span: &mut impl Attributes,
    ) -> Option<Cow<'static, str>> {
        if !(served(code) && pending.methods.learn(&pending.full)) {
            attributes::other_method(span, pending.full.into(), self.conventions);
            return None;
        }
        let (service, method) = pending.full.split_at(pending.service_len);
        let method = method.strip_prefix('/').unwrap_or(method);
        if self.conventions.old() {
            span.add(old_attr::RPC_SERVICE, service.to_owned());
        }
        if !self.conventions.current() {
            span.add(old_attr::RPC_METHOD, method.to_owned());
            return self.renames.then_some(Cow::Owned(pending.full));
        }
        let full = intern::span_name(pending.full);
        span.add(attr::RPC_METHOD, full.clone());
        self.renames.then_some(full)
    }

    /// The `error.type` of a call dropped before it finished.
    fn cancelled(&self) -> &'static str {
        if self.system == RpcSystem::Grpc && self.conventions.current() {
            GrpcCode::CANCELLED.name()
        } else {
            rpc_ext_core::thrift::CANCELLED
        }
    }
}

/// Whether a call showed that the server serves its method: it ended OK.
/// Any other status may come from a layer in front of the router (an auth
/// layer's UNAUTHENTICATED, a reset's CANCELLED) for whatever path was
/// sent, so only OK teaches a name; the metrics layers apply the same rule,
/// so span and series name a method alike.
fn served(code: Option<GrpcCode>) -> bool {
    code == Some(GrpcCode::OK)
}

/// A pending method of a call that records nothing is still learned.
fn learn(pending: Option<Box<Pending>>, outcome: &Outcome) {
    if let Some(pending) = pending {
        if served(outcome.grpc_code) {
            pending.methods.learn(&pending.full);
        }
    }
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        // Dropped unfinished: the caller went away (or the future was cancelled).
        let error_type = self.cancelled();
        self.end(&Outcome {
            error_type: Some(Cow::Borrowed(error_type)),
            ..Outcome::default()
        });
    }
}
