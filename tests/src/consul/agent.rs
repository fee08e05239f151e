//! The routes, and the `/v1/agent/…` endpoints other than registration:
//! deregistration, TTL updates, maintenance and the service lookup. Each
//! answers what the agent answers, texts included, since the client tells
//! the cases apart by them (an unknown check is re-registered, for one).

use std::time::Instant;

use axum::{
    extract::Path,
    http::StatusCode,
    response::IntoResponse,
    routing::{get, put},
    Json, Router,
};

use super::{
    acl::Permission,
    call::{bad_request, text, Answer, Call, Refusal},
    checks::Status,
    go::parse_bool,
    health::health,
    register::register,
    state::Shared,
};

/// Every endpoint the stand-in serves.
pub(super) fn routes() -> Router<Shared> {
    let mut app = Router::new()
        .route("/v1/agent/service/register", put(register))
        .route("/v1/agent/service/deregister/{id}", put(deregister))
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(service_maintenance),
        )
        .route("/v1/agent/maintenance", put(node_maintenance))
        .route("/v1/agent/service/{id}", get(service))
        .route("/v1/health/service/{name}", get(health));
    // pass, warn and fail differ only in the status they set.
    for (verb, status) in [
        ("pass", Status::Passing),
        ("warn", Status::Warning),
        ("fail", Status::Critical),
    ] {
        app = app.route(
            &format!("/v1/agent/check/{verb}/{{id}}"),
            put(move |Path(check_id): Path<String>, call: Call| update_ttl(check_id, call, status)),
        );
    }
    app
}

async fn deregister(Path(id): Path<String>, call: Call) -> Answer {
    let (mut agent, caller) = call.admit().await?;
    let Some(name) = agent.services.get(&id).map(|s| s.name.clone()) else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("Unknown service ID {id:?}"),
        ));
    };
    caller.require(&mut agent, Permission::ServiceWrite, &name)?;
    agent.services.remove(&id);
    agent.bump();
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/{pass,warn,fail}/:id` for a service's TTL check
/// (`service:<service ID>`).
async fn update_ttl(check_id: String, call: Call, status: Status) -> Answer {
    call.lock().counters.pass += 1;
    let (mut agent, caller) = call.admit().await?;
    let id = check_id
        .strip_prefix("service:")
        .unwrap_or(&check_id)
        .to_owned();
    let old_unknown_check = agent.faults.old_unknown_check;
    let Some(service) = agent.services.get(&id).filter(|s| s.check.is_some()) else {
        if old_unknown_check {
            return Err(no_ttl(&check_id));
        }
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("Unknown check ID {check_id:?}. Ensure that the check ID is passed, not the check name."),
        ));
    };
    let name = service.name.clone();
    caller.require(&mut agent, Permission::ServiceWrite, &name)?;
    let Some(check) = agent.services.get_mut(&id).and_then(|s| s.check.as_mut()) else {
        return Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR));
    };
    let Some(ttl) = check.ttl else {
        return Err(no_ttl(&check_id));
    };
    let now = Instant::now();
    check.deadline = Some(now + ttl);
    if check.set(status, now) {
        agent.bump();
    }
    Ok(StatusCode::OK.into_response())
}

/// The agent's 500 for a TTL update of a check that has no TTL (and older
/// agents' answer for a check they do not know).
fn no_ttl(check_id: &str) -> Refusal {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("CheckID {check_id:?} does not have associated TTL"),
    )
}

/// The common part of both maintenance endpoints, up to the token: the
/// fault modes, then `enable` (checked before the token, as the agent
/// does). `Some(reason)` turns maintenance on, `None` off.
async fn maintenance_request(call: &Call, of: &str) -> Result<Option<String>, Refusal> {
    call.faults().await?;
    let Some(raw) = call.query("enable") else {
        return Err(bad_request("Missing value for enable"));
    };
    let enable =
        parse_bool(raw).ok_or_else(|| bad_request(format!("Invalid value for enable: {raw:?}")))?;
    Ok(enable.then(|| {
        call.query("reason").map_or_else(
            || format!("Maintenance mode is enabled for this {of}, but no reason was provided. This is a default message."),
            str::to_owned,
        )
    }))
}

async fn service_maintenance(Path(id): Path<String>, call: Call) -> Answer {
    let reason = maintenance_request(&call, "service").await?;
    let mut agent = call.lock();
    let caller = call.caller(&mut agent)?;
    let Some(name) = agent.services.get(&id).map(|s| s.name.clone()) else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("No service registered with ID {id:?}"),
        ));
    };
    caller.require(&mut agent, Permission::ServiceWrite, &name)?;
    if let Some(service) = agent.services.get_mut(&id) {
        service.maintenance = reason;
    }
    agent.bump();
    Ok(StatusCode::OK.into_response())
}

async fn node_maintenance(call: Call) -> Answer {
    let reason = maintenance_request(&call, "node").await?;
    let mut agent = call.lock();
    call.caller(&mut agent)?;
    agent.node.maintenance = reason;
    agent.bump();
    Ok(StatusCode::OK.into_response())
}

async fn service(Path(id): Path<String>, call: Call) -> Answer {
    let (mut agent, caller) = call.admit().await?;
    let Some(s) = agent.services.get(&id).cloned() else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("unknown service ID: {id}"),
        ));
    };
    caller.require(&mut agent, Permission::ServiceRead, &s.name)?;
    Ok(Json(s.to_json()).into_response())
}
