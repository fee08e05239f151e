//! The route template of an HTTP request, shared by every layer.

use std::borrow::Cow;

/// The route template of an HTTP request (`/users/{id}`), for routers other
/// than axum: insert it in the request extensions before the layers run.
/// Metrics label by it and spans are named by it, so one extension serves
/// both.
///
/// ```
/// use rpc_ext_core::RouteTemplate;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(RouteTemplate("/users/{id}".into()));
/// assert_eq!(RouteTemplate::of(request.extensions()), Some("/users/{id}"));
/// ```
#[derive(Debug, Clone)]
pub struct RouteTemplate(pub Cow<'static, str>);

impl RouteTemplate {
    /// The route of a request: its `RouteTemplate`, else axum's
    /// `MatchedPath` (feature `axum`); `None` for an unrouted request, which
    /// layers record under [`OTHER`](crate::OTHER), never by its raw path.
    #[must_use]
    pub fn of(extensions: &http::Extensions) -> Option<&str> {
        if let Some(RouteTemplate(route)) = extensions.get::<RouteTemplate>() {
            return Some(route);
        }
        #[cfg(feature = "axum")]
        if let Some(matched) = extensions.get::<axum::extract::MatchedPath>() {
            return Some(matched.as_str());
        }
        None
    }
}
