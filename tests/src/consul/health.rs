//! `GET /v1/health/service/:name`: one entry per instance with every check
//! of the instance and of its node, so that `passing` drops an instance
//! when any of them (node maintenance included) is not passing, as a real
//! agent does; `tag` filters, ACL filtering with its header, and blocking.

use axum::{
    extract::Path,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    Json,
};
use serde_json::{json, Value};

use super::{
    blocking::BlockingQuery,
    call::{bad_request, Answer, Call},
    checks::{NodeState, Status},
    go::parse_bool,
    state::Service,
};

/// The one node the stand-in has.
const NODE: &str = "stand-in";

pub(super) async fn health(Path(name): Path<String>, call: Call) -> Answer {
    call.faults().await?;
    // Not `admit`: the lock must not be held while the query blocks.
    let caller = call.caller(&mut call.lock())?;
    let passing_only = match call.query("passing") {
        None => false,
        Some("") => true,
        Some(value) => parse_bool(value)
            .ok_or_else(|| bad_request(format!("Invalid value for ?passing: {value:?}")))?,
    };
    let blocking = BlockingQuery::parse(&call)?;
    blocking.block(&call).await;
    let garbage = call.lock().faults.take_garbage();
    let wanted_tags: Vec<String> = call.query_all("tag").map(str::to_lowercase).collect();
    let agent = call.lock();
    let mut headers = HeaderMap::new();
    headers.insert(
        "X-Consul-Index",
        agent.index.to_string().parse().expect("digits"),
    );
    if garbage {
        return Ok((StatusCode::OK, headers, "<html>not json</html>").into_response());
    }
    let readable = caller.policy.reads_services() && caller.policy.node_read;
    let mut filtered = false;
    let mut services: Vec<&Service> = agent
        .services
        .values()
        .filter(|s| s.name == name)
        .filter(|s| {
            wanted_tags
                .iter()
                .all(|want| s.tags.iter().any(|t| t.to_lowercase() == *want))
        })
        .filter(|_| {
            filtered |= !readable;
            readable
        })
        .collect();
    services.sort_by(|a, b| a.id.cmp(&b.id));
    let entries: Vec<Value> = services
        .into_iter()
        .map(|s| health_entry(&agent.node, s))
        .filter(|entry| !passing_only || all_passing(entry))
        .collect();
    if filtered && !caller.anonymous {
        headers.insert(
            "X-Consul-Results-Filtered-By-ACLs",
            "true".parse().expect("ascii"),
        );
    }
    Ok((StatusCode::OK, headers, Json(entries)).into_response())
}

/// One check of an entry: the node's own when `service` is `None`.
fn check(id: &str, name: &str, status: Status, notes: &str, service: Option<&Service>) -> Value {
    let (service_id, service_name, service_tags) = match service {
        Some(s) => (s.id.as_str(), s.name.as_str(), s.tags.as_slice()),
        None => ("", "", [].as_slice()),
    };
    json!({"Node": NODE, "CheckID": id, "Name": name, "Status": status.as_str(),
           "Notes": notes, "Output": "", "ServiceID": service_id, "ServiceName": service_name,
           "ServiceTags": service_tags})
}

/// The entry for `s`, with every check of the node and of the service.
fn health_entry(node: &NodeState, s: &Service) -> Value {
    let mut checks = vec![check(
        "serfHealth",
        "Serf Health Status",
        node.serf,
        "",
        None,
    )];
    if let Some(reason) = &node.maintenance {
        checks.push(check(
            "_node_maintenance",
            "Node Maintenance Mode",
            Status::Critical,
            reason,
            None,
        ));
    }
    if let Some(service_check) = &s.check {
        checks.push(check(
            &format!("service:{}", s.id),
            &format!("Service '{}' check", s.name),
            service_check.status,
            "",
            Some(s),
        ));
    }
    if let Some(reason) = &s.maintenance {
        checks.push(check(
            &format!("_service_maintenance:{}", s.id),
            "Service Maintenance Mode",
            Status::Critical,
            reason,
            Some(s),
        ));
    }
    json!({
        "Node": {"ID": "", "Node": NODE, "Address": "127.0.0.1", "Datacenter": "dc1",
                 "Meta": {}},
        "Service": s.to_json(),
        "Checks": checks,
    })
}

/// `passing`: every check of the entry, node checks included, is passing.
fn all_passing(entry: &Value) -> bool {
    entry["Checks"]
        .as_array()
        .is_none_or(|checks| checks.iter().all(|c| c["Status"] == "passing"))
}
