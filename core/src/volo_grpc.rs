//! Volo gRPC calls observed until their response streams end.
//!
//! A Volo gRPC layer gets the response as soon as the handler (on a server)
//! or the transport (on a client) returns it: before any message of a
//! streaming response is sent or read, and before the status in the
//! trailers is known. A layer that ended the call there would measure a
//! streaming call short, with the wrong status. This module moves the end
//! of the call to where it happens:
//!
//! - **Servers.** The layers of `volo_grpc::server::Server` see
//!   `volo_grpc::Response<BoxBody>`. [`observe_server_response`] wraps the
//!   body in an [`ObservedBody`]: its [`CallObserver`] ends with the status
//!   of the trailers once they are sent, with UNAVAILABLE on a body error,
//!   and is dropped unended (a cancellation) when hyper drops the body
//!   unfinished because the client went away.
//! - **Clients.** Client layers see `volo_grpc::Response<U>`, `U` being the
//!   generated response enum, which a generic layer cannot look into. So the
//!   layer hands its end of the call to the response with [`defer_end`]: the
//!   callbacks of every layer ride in the response's extensions as a
//!   [`CallEnds`], which the generated client moves into the response it
//!   returns to the application. An application that wraps a streaming
//!   response in an [`ObservedStream`] has the callbacks run when the stream
//!   ends (the status of the trailers, or CANCELLED if it is dropped
//!   before). Otherwise they run with OK when the response is dropped: for
//!   a unary call, at `into_inner()`, right after the call.
//!
//! What a layer records on the Volo client is therefore only as right as
//! the application's handling of streaming responses: one not wrapped in an
//! [`ObservedStream`] ends at once, with OK. And since a generic layer
//! cannot see into a unary response either, a unary reply that fails to
//! decode after its headers said OK is recorded as OK. (Volo and tonic
//! servers send a failed unary call's status in the headers, which the
//! transport turns into an `Err` the layer sees.)

use std::{
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use futures_core::Stream;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use volo_grpc::{body::BoxBody, metadata::MetadataMap, Response, Status};

use crate::{classify::grpc_status_from_trailers, CallEnd, CallObserver, GrpcCode, ObservedBody};

/// Wraps the body of a Volo gRPC server's response so that `observer` ends
/// when the call does: when the trailers (`grpc-status`) pass, on a body
/// error (UNAVAILABLE), or, dropped unended, when the client cancels.
///
/// A server layer calls it on the `Ok` response of the inner service; an
/// `Err(status)` is the call's end already (Volo sends it as a
/// trailers-only response). A `grpc-status` already in the response's
/// metadata (a trailers-only response made by hand) is the status unless
/// trailers follow with another; a body that ends with no status at all
/// ends the call as UNKNOWN, as gRPC clients read it.
///
/// ```
/// use rpc_ext_core::{volo_grpc::observe_server_response, CallEnd, CallObserver, GrpcCode};
/// use std::sync::{Arc, Mutex};
///
/// #[derive(Clone, Default)]
/// struct Ends(Arc<Mutex<Vec<CallEnd>>>);
///
/// impl CallObserver for Ends {
///     type Scope<'a> = ();
///     fn scope(&self) {}
///     fn end(self, end: CallEnd, _response_bytes: u64) {
///         self.0.lock().unwrap().push(end);
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // What a Volo server sends after the messages: the status in the trailers.
/// let mut trailers = http::HeaderMap::new();
/// trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
/// let body = http_body_util::StreamBody::new(futures::stream::iter([
///     Ok::<_, volo_grpc::Status>(http_body::Frame::data(bytes::Bytes::from_static(b"message"))),
///     Ok(http_body::Frame::trailers(trailers)),
/// ]));
/// let response = volo_grpc::Response::new(volo_grpc::body::boxed(body));
///
/// let ends = Ends::default();
/// let response = observe_server_response(response, ends.clone());
/// assert!(ends.0.lock().unwrap().is_empty(), "nothing is sent yet");
///
/// // The server sends the body...
/// use http_body_util::BodyExt;
/// response.into_inner().collect().await.unwrap();
/// // ...and the call ends with the status of its trailers.
/// assert_eq!(*ends.0.lock().unwrap(), [CallEnd::Grpc(GrpcCode::UNAVAILABLE)]);
/// # }
/// ```
pub fn observe_server_response<O>(response: Response<BoxBody>, observer: O) -> Response<BoxBody>
where
    O: CallObserver + Send + 'static,
{
    let (metadata, extensions, body) = response.into_parts();
    let body = if observer.wants_end() {
        // `grpc-status` is looked up the same way in headers and trailers.
        let known = grpc_status_from_trailers(metadata.headers()).map(CallEnd::Grpc);
        ObservedBody::new(body, observer, true, known).boxed_unsync()
    } else {
        // Still re-boxed: a streaming handler's code runs in the body's
        // polls, inside the observer's scope.
        ObservedBody::scoped(body, observer).boxed_unsync()
    };
    Response::from_parts(metadata, extensions, body)
}

/// The end-of-call callbacks of a Volo gRPC client call, carried in its
/// response's extensions from the layers (which add them with
/// [`defer_end`]) to where the call ends.
///
/// Whoever knows the end takes them with [`CallEnds::take`] and calls
/// [`CallEnds::end`]; [`ObservedStream`] does so for streaming responses.
/// Callbacks still held when the last copy of the response's extensions is
/// dropped run then, with OK: the end of a unary call, which the
/// application drops (or `into_inner()`s) right after the call returns.
///
/// Each callback runs exactly once, in the order added (the innermost layer
/// first, as nested bodies end on a tower stack), outside any lock. It is
/// `Clone` (an `Arc`) as `http::Extensions` require; copies share the
/// callbacks held when they were made: a copy of the extensions taken
/// between two layers' [`defer_end`] does not hold the later layer's.
#[derive(Clone, Default)]
pub struct CallEnds(Option<Arc<dyn EndLink>>);

/// One layer's callback with the callbacks added before it: a chain, so
/// that each layer's end is one allocation holding its callback, where a
/// list would take a box per callback and the list's own.
trait EndLink: Send + Sync {
    /// Runs the earlier callbacks, then this one, with `end` (those not run
    /// yet).
    fn end(&self, end: CallEnd);
    /// How many callbacks have not run yet.
    fn pending(&self) -> usize;
}

struct Link<F: FnOnce(CallEnd) + Send> {
    earlier: CallEnds,
    callback: Mutex<Option<F>>,
}

impl<F: FnOnce(CallEnd) + Send> Link<F> {
    fn take(&self) -> Option<F> {
        // A callback never runs under the lock, so it cannot be poisoned
        // mid-update; take what is there either way.
        self.callback
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl<F: FnOnce(CallEnd) + Send> EndLink for Link<F> {
    fn end(&self, end: CallEnd) {
        self.earlier.run(end);
        if let Some(callback) = self.take() {
            callback(end);
        }
    }

    fn pending(&self) -> usize {
        let own = self
            .callback
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        self.earlier.len() + usize::from(own)
    }
}

impl<F: FnOnce(CallEnd) + Send> Drop for Link<F> {
    fn drop(&mut self) {
        // The earlier callbacks first (if this held their last copy), as
        // they would have ended first.
        drop(std::mem::take(&mut self.earlier));
        let callback = self
            .callback
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(callback) = callback {
            callback(CallEnd::Grpc(GrpcCode::OK));
        }
    }
}

impl CallEnds {
    /// Takes the callbacks out of `response`: they no longer run when the
    /// response is dropped, but when [`end`](Self::end) is called (or, if
    /// it never is, when the returned value is dropped: with OK). Empty if
    /// no layer added any.
    ///
    /// ```
    /// use rpc_ext_core::{volo_grpc::{defer_end, CallEnds}, CallEnd, GrpcCode};
    ///
    /// let mut response = volo_grpc::Response::new(());
    /// defer_end(&mut response, |end| assert_eq!(end, CallEnd::Grpc(GrpcCode::DATA_LOSS)));
    /// let ends = CallEnds::take(&mut response);
    /// drop(response); // runs nothing: the callbacks were taken
    /// ends.end(CallEnd::Grpc(GrpcCode::DATA_LOSS));
    /// ```
    pub fn take<U>(response: &mut Response<U>) -> Self {
        response
            .extensions_mut()
            .remove::<CallEnds>()
            .unwrap_or_default()
    }

    /// Runs every callback with `end`; any copy of these `CallEnds` is left
    /// empty.
    pub fn end(self, end: CallEnd) {
        self.run(end);
    }

    fn run(&self, end: CallEnd) {
        if let Some(link) = &self.0 {
            link.end(end);
        }
    }

    /// How many callbacks wait for the end.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |link| link.pending())
    }

    /// True when no callback waits for the end.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// These callbacks, then `callback`.
    fn then(self, callback: impl FnOnce(CallEnd) + Send + 'static) -> Self {
        Self(Some(Arc::new(Link {
            earlier: self,
            callback: Mutex::new(Some(callback)),
        })))
    }
}

impl fmt::Debug for CallEnds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallEnds")
            .field("pending", &self.len())
            .finish()
    }
}

/// Hands a client layer's end of the call to `response`: `on_end` runs once,
/// with the status of the trailers when the application reads a streaming
/// response to its end through an [`ObservedStream`] (CANCELLED if it drops
/// it before), or with OK when the response is dropped unwrapped (a unary
/// call).
///
/// A Volo gRPC client layer calls it on the `Ok` response of the inner
/// service (an `Err(status)` is the end of the call already). Every layer
/// adds its own callback; they run in the order added.
///
/// ```
/// use rpc_ext_core::{volo_grpc::defer_end, CallEnd, GrpcCode};
/// use std::sync::{Arc, Mutex};
///
/// let ended = Arc::new(Mutex::new(None));
/// let mut response = volo_grpc::Response::new("a unary reply");
/// let seen = Arc::clone(&ended);
/// defer_end(&mut response, move |end| *seen.lock().unwrap() = Some(end));
/// assert_eq!(*ended.lock().unwrap(), None);
///
/// let reply = response.into_inner();
/// assert_eq!(*ended.lock().unwrap(), Some(CallEnd::Grpc(GrpcCode::OK)));
/// # let _ = reply;
/// ```
pub fn defer_end<U>(response: &mut Response<U>, on_end: impl FnOnce(CallEnd) + Send + 'static) {
    let extensions = response.extensions_mut();
    match extensions.get_mut::<CallEnds>() {
        // In place: no second box in the extensions' map.
        Some(ends) => *ends = std::mem::take(ends).then(on_end),
        None => {
            extensions.insert(CallEnds::default().then(on_end));
        }
    }
}

pin_project! {
    /// A Volo gRPC client's streaming response that ends the call (runs the
    /// [`CallEnds`] its layers added with [`defer_end`]) when the stream
    /// does:
    ///
    /// - with the status's code when it yields an error: the status of the
    ///   trailers (volo-grpc's `RecvStream` yields a non-OK `grpc-status` as
    ///   `Some(Err(status))`, then `None`), or a transport or decoding
    ///   error;
    /// - with OK when it ends (`None`) without one: after trailers with
    ///   `grpc-status: 0`, or, as Volo itself reads it, after a body that
    ///   ended with no `grpc-status` at all (the generated client's stream
    ///   is opaque: the two cannot be told apart);
    /// - with CANCELLED when it is dropped before either: the application
    ///   stopped reading, which cancels the call.
    ///
    /// Read it as a [`Stream`] of `Result<T, Status>` or with
    /// [`message`](Self::message), to the end (`None` or an error) for the
    /// call to end as it did: a stream dropped after its last message but
    /// before its end ends as CANCELLED.
    ///
    /// ```
    /// use rpc_ext_core::{volo_grpc::{defer_end, ObservedStream}, CallEnd, GrpcCode};
    /// use std::sync::{Arc, Mutex};
    /// use volo_grpc::{codec::decode::Kind, RecvStream};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), volo_grpc::Status> {
    /// // A server streaming two messages (UInt32Value 1, then 2) and OK, as
    /// // the client's transport receives it...
    /// let mut trailers = http::HeaderMap::new();
    /// trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    /// let frames = [
    ///     http_body::Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1, 0, 0, 0, 0, 2, 8, 2])),
    ///     http_body::Frame::trailers(trailers),
    /// ];
    /// let body = http_body_util::StreamBody::new(futures::stream::iter(frames.map(Ok::<_, volo_grpc::Status>)));
    /// let stream = RecvStream::<u32>::new(volo_grpc::body::boxed(body), Kind::Response(http::StatusCode::OK), None);
    ///
    /// // ...and the response a generated client's streaming method returns,
    /// // with a layer's callback.
    /// let mut response = volo_grpc::Response::new(stream);
    /// let ended = Arc::new(Mutex::new(None));
    /// let seen = Arc::clone(&ended);
    /// defer_end(&mut response, move |end| *seen.lock().unwrap() = Some(end));
    ///
    /// let mut stream = ObservedStream::new(response);
    /// assert_eq!(stream.message().await?, Some(1));
    /// assert_eq!(stream.message().await?, Some(2));
    /// assert_eq!(*ended.lock().unwrap(), None, "the trailers are still to come");
    /// assert_eq!(stream.message().await?, None);
    /// assert_eq!(*ended.lock().unwrap(), Some(CallEnd::Grpc(GrpcCode::OK)));
    /// # Ok(())
    /// # }
    /// ```
    pub struct ObservedStream<S> {
        #[pin]
        inner: S,
        metadata: MetadataMap,
        // `None` once the call has ended.
        ends: Option<CallEnds>,
    }

    impl<S> PinnedDrop for ObservedStream<S> {
        fn drop(this: Pin<&mut Self>) {
            // Still unended: the application stopped reading mid-stream.
            end(this.project().ends, GrpcCode::CANCELLED);
        }
    }
}

fn end(ends: &mut Option<CallEnds>, code: GrpcCode) {
    if let Some(ends) = ends.take() {
        ends.end(CallEnd::Grpc(code));
    }
}

impl<S> ObservedStream<S> {
    /// Observes the streaming `response` of a generated client's method
    /// (its message is volo-grpc's `RecvStream`, which the generated code
    /// returns as an `impl Stream`) until its stream ends; its metadata
    /// stays readable through [`metadata`](Self::metadata).
    pub fn new(response: Response<S>) -> Self {
        let (metadata, mut extensions, inner) = response.into_parts();
        Self {
            inner,
            metadata,
            ends: extensions.remove::<CallEnds>(),
        }
    }

    /// The response's metadata (its headers).
    pub fn metadata(&self) -> &MetadataMap {
        &self.metadata
    }
}

impl<S> From<Response<S>> for ObservedStream<S> {
    fn from(response: Response<S>) -> Self {
        Self::new(response)
    }
}

impl<S, T> ObservedStream<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    /// The next message; `Ok(None)` at the end of the stream.
    ///
    /// # Errors
    /// The status the stream ended with: the server's, from the trailers,
    /// or a transport or decoding error.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }
}

impl<S, T> Stream for ObservedStream<S>
where
    S: Stream<Item = Result<T, Status>>,
{
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let item = std::task::ready!(this.inner.poll_next(cx));
        match &item {
            Some(Ok(_)) => {}
            Some(Err(status)) => end(this.ends, GrpcCode::new(status.code() as i32)),
            None => end(this.ends, GrpcCode::OK),
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<S> fmt::Debug for ObservedStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservedStream")
            .field("ended", &self.ends.is_none())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use futures::StreamExt;
    use http::{HeaderMap, HeaderValue, StatusCode};
    use http_body::Frame;
    use volo_grpc::{codec::decode::Kind, RecvStream};

    use super::*;

    /// Every end each callback was told, by callback.
    #[derive(Clone, Default)]
    struct Told(Arc<Mutex<Vec<(&'static str, CallEnd)>>>);

    impl Told {
        fn callback(&self, name: &'static str) -> impl FnOnce(CallEnd) + Send + 'static {
            let told = self.clone();
            move |end| told.0.lock().unwrap().push((name, end))
        }

        fn ends(&self) -> Vec<(&'static str, CallEnd)> {
            self.0.lock().unwrap().clone()
        }
    }

    fn grpc(code: GrpcCode) -> CallEnd {
        CallEnd::Grpc(code)
    }

    /// A gRPC message frame holding the UInt32Value `n` (1..=127).
    fn message(n: u8) -> Frame<Bytes> {
        Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 8, n]))
    }

    fn trailers(status: &'static str) -> Frame<Bytes> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        Frame::trailers(trailers)
    }

    fn body(frames: Vec<Frame<Bytes>>) -> BoxBody {
        let frames = frames.into_iter().map(Ok::<_, Status>);
        volo_grpc::body::boxed(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    /// A client's streaming response over `frames`, with two layers'
    /// callbacks.
    fn streaming_response(frames: Vec<Frame<Bytes>>, told: &Told) -> Response<RecvStream<u32>> {
        let stream = RecvStream::new(body(frames), Kind::Response(StatusCode::OK), None);
        let mut response = Response::new(stream);
        defer_end(&mut response, told.callback("inner"));
        defer_end(&mut response, told.callback("outer"));
        response
    }

    #[test]
    fn a_dropped_unary_response_ends_ok_once_per_callback() {
        let told = Told::default();
        let mut response = Response::new(7_u32);
        defer_end(&mut response, told.callback("inner"));
        defer_end(&mut response, told.callback("outer"));
        // Copies of the extensions share the callbacks: they run once.
        let copy = response.extensions().clone();
        assert_eq!(response.into_inner(), 7);
        assert!(told.ends().is_empty(), "a copy still holds them");
        drop(copy);
        assert_eq!(
            told.ends(),
            [("inner", grpc(GrpcCode::OK)), ("outer", grpc(GrpcCode::OK))]
        );
    }

    #[test]
    fn taken_callbacks_run_with_the_given_end_once() {
        let told = Told::default();
        let mut response = Response::new(());
        defer_end(&mut response, told.callback("only"));
        let ends = CallEnds::take(&mut response);
        assert_eq!(ends.len(), 1);
        drop(response);
        ends.clone().end(grpc(GrpcCode::ABORTED));
        drop(ends);
        assert_eq!(told.ends(), [("only", grpc(GrpcCode::ABORTED))]);
        assert!(CallEnds::take(&mut Response::new(())).is_empty());
    }

    #[tokio::test]
    async fn a_stream_ends_ok_after_its_trailers() {
        let told = Told::default();
        let response = streaming_response(vec![message(1), message(2), trailers("0")], &told);
        let mut stream = ObservedStream::new(response);
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        assert_eq!(stream.next().await.unwrap().unwrap(), 2);
        assert!(told.ends().is_empty(), "ended before the trailers");
        assert!(stream.next().await.is_none());
        assert!(stream.next().await.is_none());
        drop(stream);
        assert_eq!(
            told.ends(),
            [("inner", grpc(GrpcCode::OK)), ("outer", grpc(GrpcCode::OK))]
        );
    }

    #[tokio::test]
    async fn an_error_in_the_trailers_ends_with_its_code() {
        let told = Told::default();
        let response = streaming_response(vec![message(1), trailers("14")], &told);
        let mut stream = ObservedStream::new(response);
        assert_eq!(stream.message().await.unwrap(), Some(1));
        // What `RecvStream` yields for an error in the trailers.
        let status = stream.message().await.unwrap_err();
        assert_eq!(status.code(), volo_grpc::Code::Unavailable);
        assert_eq!(stream.message().await.unwrap(), None);
        drop(stream);
        assert_eq!(
            told.ends(),
            [
                ("inner", grpc(GrpcCode::UNAVAILABLE)),
                ("outer", grpc(GrpcCode::UNAVAILABLE))
            ]
        );
    }

    #[tokio::test]
    async fn a_stream_dropped_before_its_end_is_cancelled() {
        let told = Told::default();
        let response = streaming_response(vec![message(1), message(2), trailers("0")], &told);
        let mut stream = ObservedStream::new(response);
        assert_eq!(stream.message().await.unwrap(), Some(1));
        drop(stream);
        assert_eq!(
            told.ends(),
            [
                ("inner", grpc(GrpcCode::CANCELLED)),
                ("outer", grpc(GrpcCode::CANCELLED))
            ]
        );
    }

    #[tokio::test]
    async fn a_stream_without_any_status_ends_ok_as_volo_reads_it() {
        let told = Told::default();
        let mut stream = ObservedStream::new(streaming_response(vec![message(1)], &told));
        assert_eq!(stream.message().await.unwrap(), Some(1));
        assert_eq!(stream.message().await.unwrap(), None);
        assert_eq!(told.ends()[0], ("inner", grpc(GrpcCode::OK)));
    }

    /// Records what a server observer is told.
    #[derive(Clone, Default)]
    struct Observer(Arc<Mutex<Vec<(CallEnd, u64)>>>);

    impl CallObserver for Observer {
        type Scope<'a> = ();
        fn scope(&self) {}
        fn end(self, end: CallEnd, bytes: u64) {
            self.0.lock().unwrap().push((end, bytes));
        }
    }

    #[tokio::test]
    async fn a_server_response_ends_with_its_trailers_not_before() {
        let observer = Observer::default();
        let response = Response::new(body(vec![message(1), message(2), trailers("0")]));
        let mut body = observe_server_response(response, observer.clone()).into_inner();
        body.frame().await.unwrap().unwrap();
        body.frame().await.unwrap().unwrap();
        assert!(observer.0.lock().unwrap().is_empty());
        body.frame().await.unwrap().unwrap();
        assert_eq!(*observer.0.lock().unwrap(), [(grpc(GrpcCode::OK), 14)]);
    }

    #[tokio::test]
    async fn a_server_response_keeps_the_status_of_its_headers() {
        let observer = Observer::default();
        let mut response = Response::new(volo_grpc::body::empty_body());
        response
            .metadata_mut()
            .insert("grpc-status", "5".parse().unwrap());
        let response = observe_server_response(response, observer.clone());
        // An empty body ends at once.
        assert_eq!(
            *observer.0.lock().unwrap(),
            [(grpc(GrpcCode::NOT_FOUND), 0)]
        );
        assert_eq!(response.metadata().get("grpc-status").unwrap(), "5");
    }

    #[tokio::test]
    async fn a_server_response_dropped_unfinished_drops_its_observer_unended() {
        let observer = Observer::default();
        let response = Response::new(body(vec![message(1), trailers("0")]));
        let mut body = observe_server_response(response, observer.clone()).into_inner();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert!(observer.0.lock().unwrap().is_empty());
        assert_eq!(
            Arc::strong_count(&observer.0),
            1,
            "the observer was dropped"
        );
    }
}
