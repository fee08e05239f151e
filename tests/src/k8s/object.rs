//! Requests on one object (`.../namespaces/{ns}/<plural>/{name}`): get,
//! replace (`PUT`, with the resource-version check of optimistic
//! concurrency), server-side apply (`PATCH`) and delete (with preconditions).

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{header::CONTENT_TYPE, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{failure, forbidden, not_found, status, validation, Ctx};

pub(super) async fn get_one(
    State(ctx): State<Ctx>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    if let Some(forbidden) = forbidden(&ctx, "get", &namespace, Some(&name)) {
        return forbidden;
    }
    let state = ctx.state.lock().unwrap();
    match state.get(ctx.resource, &namespace, &name) {
        Some(object) => Json(object.clone()).into_response(),
        None => not_found(&ctx.resource.qualified(), &name),
    }
}

/// The body of a write to `name`, with the name filled in from the URL
/// when absent, or the 400 Status the API server answers when they differ.
fn body_named(body: &Bytes, name: &str) -> Result<Value, Value> {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return Err(status(400, "BadRequest", "body is not JSON"));
    };
    match object["metadata"]["name"].as_str() {
        None => object["metadata"]["name"] = json!(name),
        Some(inner) if inner != name => {
            return Err(status(
                400,
                "BadRequest",
                &format!(
                    "the name of the object ({inner}) does not match the name on the URL ({name})"
                ),
            ))
        }
        Some(_) => {}
    }
    Ok(object)
}

fn conflict(ctx: &Ctx, name: &str, why: &str) -> Response {
    failure(status(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} {name:?}: {why}",
            ctx.resource.qualified()
        ),
    ))
}

/// `PUT`: replaces the object. A `metadata.resourceVersion` in the body
/// must be the stored one (else 409 Conflict: someone wrote in between), a
/// `metadata.uid` the stored UID. Leases must carry the version
/// (`AllowUnconditionalUpdate` is false for them: 422 without it). A PUT of
/// an object that does not exist creates it where the resource allows
/// (Leases, and then only without a version: a version names an object that
/// must exist, 404), authorized as a `create` too.
pub(super) async fn replace(
    State(ctx): State<Ctx>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(forbidden) = forbidden(&ctx, "update", &namespace, Some(&name)) {
        return forbidden;
    }
    let object = match body_named(&body, &name) {
        Ok(object) => object,
        Err(refused) => return failure(refused),
    };
    let kind = ctx.resource.kind_qualified();
    if let Err(invalid) = validation::check_object(ctx.resource, &object) {
        return failure(invalid.status(&kind, &name));
    }
    let version = object["metadata"]["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    // Asked before taking the lock, which the authorizer takes too.
    let create_refused = forbidden(&ctx, "create", &namespace, Some(&name));
    let mut state = ctx.state.lock().unwrap();
    let stored = state.get(ctx.resource, &namespace, &name).map(|stored| {
        let field = |key: &str| stored["metadata"][key].as_str().map(str::to_owned);
        (field("resourceVersion"), field("uid"))
    });
    let Some((stored_version, stored_uid)) = stored else {
        if !ctx.resource.create_on_update || version.is_some() {
            return not_found(&ctx.resource.qualified(), &name);
        }
        if let Some(forbidden) = create_refused {
            return forbidden;
        }
        let created = state.upsert(ctx.resource, &namespace, object);
        return (StatusCode::CREATED, Json(created)).into_response();
    };
    if version.is_none() && !ctx.resource.unconditional_update {
        return failure(validation::missing_resource_version().status(&kind, &name));
    }
    if let Some(uid) = object["metadata"]["uid"].as_str() {
        if stored_uid.as_deref() != Some(uid) {
            return conflict(&ctx, &name, "Precondition failed: UID mismatch");
        }
    }
    if version.is_some() && version != stored_version {
        return conflict(
            &ctx,
            &name,
            "the object has been modified; please apply your changes to the latest version \
             and try again",
        );
    }
    Json(state.upsert(ctx.resource, &namespace, object)).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PatchQuery {
    field_manager: Option<String>,
}

/// Server-side apply, the only patch the stand-in takes: the body is the
/// whole object (YAML, of which kube's JSON is a part).
pub(super) async fn apply(
    State(ctx): State<Ctx>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<PatchQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(forbidden) = forbidden(&ctx, "patch", &namespace, Some(&name)) {
        return forbidden;
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/apply-patch+yaml") {
        return failure(status(
            415,
            "UnsupportedMediaType",
            &format!("stand-in: only server-side apply is served, not {content_type:?}"),
        ));
    }
    let kind = ctx.resource.kind_qualified();
    if query.field_manager.as_deref().is_none_or(str::is_empty) {
        return failure(validation::missing_field_manager().status("PatchOptions.meta.k8s.io", ""));
    }
    let object = match body_named(&body, &name) {
        Ok(object) => object,
        Err(refused) => return failure(refused),
    };
    if let Err(invalid) = validation::check_object(ctx.resource, &object) {
        return failure(invalid.status(&kind, &name));
    }
    // An apply that creates the object is authorized as a create too, as
    // the API server's patch handler does (asked before taking the lock,
    // which the authorizer takes too).
    let create_refused = forbidden(&ctx, "create", &namespace, Some(&name));
    let mut state = ctx.state.lock().unwrap();
    if state.get(ctx.resource, &namespace, &name).is_none() {
        if let Some(forbidden) = create_refused {
            return forbidden;
        }
    }
    Json(state.upsert(ctx.resource, &namespace, object)).into_response()
}

pub(super) async fn delete(
    State(ctx): State<Ctx>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(forbidden) = forbidden(&ctx, "delete", &namespace, Some(&name)) {
        return forbidden;
    }
    // DeleteOptions preconditions: the object must still have this
    // resource version and UID, else 409 Conflict.
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let preconditions = &options["preconditions"];
    let mut state = ctx.state.lock().unwrap();
    let conflict = state
        .get(ctx.resource, &namespace, &name)
        .is_some_and(|object| {
            ["resourceVersion", "uid"].iter().any(|key| {
                preconditions[key]
                    .as_str()
                    .is_some_and(|want| object["metadata"][key].as_str() != Some(want))
            })
        });
    if conflict {
        return failure(status(
            409,
            "Conflict",
            &format!("Precondition failed for {} {name:?}", ctx.resource.plural),
        ));
    }
    match state.remove(ctx.resource, &namespace, &name) {
        Some(object) => Json(object).into_response(),
        None => not_found(&ctx.resource.qualified(), &name),
    }
}
