//! Requests on a collection (`.../namespaces/{ns}/<plural>`): list, watch
//! (with label selectors, resource versions, bookmarks and 410 Gone) and
//! create.

use std::{convert::Infallible, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{failure, forbidden, resource::SLICES, status, store::Change, validation, Ctx};

fn matches(object: &Value, namespace: &str, selector: &[(String, String)]) -> bool {
    object["metadata"]["namespace"] == namespace
        && selector
            .iter()
            .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

/// The event a watch of `ctx`'s resource with this selector sees for
/// `change`, if any. As the API server's watch cache does, an update that
/// makes an object match arrives as `ADDED` and one that makes it stop
/// matching (its labels changed) as `DELETED`, carrying the object's new
/// state.
fn event_for<'a>(
    ctx: &Ctx,
    change: &'a Change,
    namespace: &str,
    selector: &[(String, String)],
) -> Option<(&'static str, &'a Value)> {
    if change.resource != Some(ctx.resource) {
        return None;
    }
    let now = matches(&change.object, namespace, selector);
    let before = change
        .previous
        .as_ref()
        .is_some_and(|previous| matches(previous, namespace, selector));
    let kind = match (change.kind, before, now) {
        ("DELETED", true, _) => "DELETED",
        ("DELETED", false, _) => return None,
        (_, true, true) => "MODIFIED",
        (_, false, true) => "ADDED",
        (_, true, false) => "DELETED",
        (_, false, false) => return None,
    };
    Some((kind, &change.object))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListQuery {
    label_selector: Option<String>,
    watch: Option<bool>,
    resource_version: Option<String>,
    allow_watch_bookmarks: Option<bool>,
    timeout_seconds: Option<u64>,
}

pub(super) async fn list_or_watch(
    State(ctx): State<Ctx>,
    Path(namespace): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let selector: Vec<(String, String)> = query
        .label_selector
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter_map(|term| term.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    if ctx.state.lock().unwrap().unavailable {
        return failure(status(500, "InternalError", "stand-in: unavailable"));
    }
    let watching = query.watch.unwrap_or(false);
    let verb = if watching { "watch" } else { "list" };
    if let Some(forbidden) = forbidden(&ctx, verb, &namespace, None) {
        return forbidden;
    }
    if !watching {
        let mut state = ctx.state.lock().unwrap();
        if ctx.resource == SLICES {
            state.slice_lists += 1;
        }
        let items: Vec<Value> = state
            .list(ctx.resource, &namespace)
            .filter(|o| matches(o, &namespace, &selector))
            .cloned()
            .collect();
        return Json(json!({
            "kind": format!("{}List", ctx.resource.kind), "apiVersion": ctx.resource.api_version(),
            "metadata": {"resourceVersion": state.version.to_string()}, "items": items,
        }))
        .into_response();
    }
    let from: u64 = query
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (backlog, mut live, generation, gone) = {
        let mut state = ctx.state.lock().unwrap();
        let expire = ctx.resource == SLICES && std::mem::take(&mut state.expire_next_slice_watch);
        let gone = from < state.oldest || expire;
        let backlog: Vec<Change> = state
            .history
            .iter()
            .filter(|c| c.version > from)
            .cloned()
            .collect();
        (backlog, state.changes.subscribe(), state.generation, gone)
    };
    let line = |kind: &str, object: &Value| {
        Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
    };
    if gone {
        let body = line("ERROR", &status(410, "Expired", "too old resource version"));
        return Response::new(Body::from(body));
    }
    let bookmarks = query.allow_watch_bookmarks.unwrap_or(false);
    let timeout = Duration::from_secs(query.timeout_seconds.unwrap_or(290).min(290));
    let stream = async_stream::stream! {
        for change in &backlog {
            if let Some((kind, object)) = event_for(&ctx, change, &namespace, &selector) {
                yield Ok::<_, Infallible>(line(kind, object));
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                _ = tick.tick(), if bookmarks => {
                    let version = ctx.state.lock().unwrap().version;
                    let bookmark = json!({"kind": ctx.resource.kind, "apiVersion": ctx.resource.api_version(),
                        "metadata": {"resourceVersion": version.to_string()}});
                    yield Ok(line("BOOKMARK", &bookmark));
                }
                change = live.recv() => match change {
                    Ok(change) if change.kind == "NOOP" => {
                        if ctx.state.lock().unwrap().generation != generation { break; }
                    }
                    Ok(change) if change.version > from => {
                        if let Some((kind, object)) = event_for(&ctx, &change, &namespace, &selector) {
                            yield Ok(line(kind, object));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
            }
        }
    };
    Response::new(Body::from_stream(stream))
}

/// `POST` of a new object: 409 `AlreadyExists` if the name is taken.
pub(super) async fn create(
    State(ctx): State<Ctx>,
    Path(namespace): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(object) = serde_json::from_slice::<Value>(&body) else {
        return failure(status(400, "BadRequest", "body is not JSON"));
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(forbidden) = forbidden(&ctx, "create", &namespace, Some(&name)) {
        return forbidden;
    }
    if let Err(invalid) = validation::check_object(ctx.resource, &object) {
        return failure(invalid.status(&ctx.resource.kind_qualified(), &name));
    }
    // The storage layer refuses a version on an object to be created.
    if object["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|v| !v.is_empty())
    {
        return failure(status(
            500,
            "InternalError",
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let mut state = ctx.state.lock().unwrap();
    if state.get(ctx.resource, &namespace, &name).is_some() {
        return failure(status(
            409,
            "AlreadyExists",
            &format!("{} {name:?} already exists", ctx.resource.qualified()),
        ));
    }
    let stored = state.upsert(ctx.resource, &namespace, object);
    (StatusCode::CREATED, Json(stored)).into_response()
}
