//! `PUT /v1/agent/service/register`. Real agents refuse definitions the
//! client could send by mistake (Meta keys such as `app.kubernetes.io/name`,
//! zero weights), so the stand-in validates as `structs.Validate*` does and
//! answers with the same 400 texts; a stand-in that took anything would let
//! such a client pass its tests.

use std::{collections::BTreeMap, time::Instant};

use axum::{http::StatusCode, response::IntoResponse, Json};
use serde_json::{json, Value};

use super::{
    acl::Permission,
    call::{bad_request, Answer, Call},
    checks::{CheckState, Status},
    state::Service,
};

pub(super) async fn register(call: Call, Json(body): Json<Value>) -> Answer {
    call.lock().counters.register += 1;
    call.faults().await?;
    let caller = call.caller(&mut call.lock())?;
    let text = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let name = text("Name");
    if name.is_empty() {
        return Err(bad_request("Missing service name"));
    }
    let id = Some(text("ID"))
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| name.clone());
    let weights = match body.get("Weights").filter(|w| !w.is_null()) {
        Some(weights) => {
            validate_weights(weights)
                .map_err(|reason| bad_request(format!("Invalid Weights: {reason}")))?;
            weights.clone()
        }
        None => json!({"Passing": 1, "Warning": 1}),
    };
    let meta: BTreeMap<String, String> =
        match serde_json::from_value(body.get("Meta").cloned().unwrap_or(Value::Null)) {
            Ok(meta) => meta,
            Err(_) if body.get("Meta").is_none_or(Value::is_null) => BTreeMap::new(),
            Err(e) => return Err(bad_request(format!("Request decode failed: {e}"))),
        };
    validate_meta(&meta)
        .map_err(|reason| bad_request(format!("Invalid Service Meta: {reason}")))?;
    let check = body.get("Check").filter(|c| c.is_object());
    let requested_status = match check.and_then(|c| c.get("Status")).and_then(Value::as_str) {
        None | Some("") => Status::Critical,
        Some(status) => Status::parse(status).ok_or_else(|| {
            bad_request("Status for checks must 'passing', 'warning', 'critical'")
        })?,
    };
    caller.require(&mut call.lock(), Permission::ServiceWrite, &name)?;
    let replace_existing_checks = call
        .query("replace-existing-checks")
        .is_some_and(|v| v.is_empty() || v == "true");
    let now = Instant::now();
    let mut agent = call.lock();
    let previous = agent.services.get(&id);
    // The agent restores the status of a check it already has (same check
    // ID) over the one in the new definition.
    let kept_status = previous.and_then(|s| s.check.as_ref()).map(|c| c.status);
    let maintenance = previous
        .filter(|_| !replace_existing_checks)
        .and_then(|s| s.maintenance.clone());
    let check =
        check.map(|check| CheckState::new(check, kept_status.unwrap_or(requested_status), now));
    let service = Service {
        id: id.clone(),
        name,
        address: text("Address"),
        port: body
            .get("Port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0),
        tags: serde_json::from_value(body.get("Tags").cloned().unwrap_or(Value::Null))
            .unwrap_or_default(),
        meta,
        weights,
        check,
        maintenance,
    };
    agent.services.insert(id, service);
    agent.bump();
    Ok(StatusCode::OK.into_response())
}

/// `structs.ValidateServiceMetadata` for a typical service.
fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > 64 {
        return Err("Node metadata cannot contain more than 64 key/value pairs".to_owned());
    }
    for (key, value) in meta {
        let reason = if key.is_empty() {
            "Key cannot be blank".to_owned()
        } else if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            "Key contains invalid characters".to_owned()
        } else if key.len() > 128 {
            "Key is too long (limit: 128 characters)".to_owned()
        } else if key.starts_with("consul-") {
            "Key prefix 'consul-' is reserved for internal use".to_owned()
        } else if value.len() > 512 {
            "Value is too long (limit: 512 characters)".to_owned()
        } else {
            continue;
        };
        return Err(format!(
            "Couldn't load metadata pair ('{key}', '{value}'): {reason}"
        ));
    }
    Ok(())
}

/// `structs.ValidateWeights`.
fn validate_weights(weights: &Value) -> Result<(), String> {
    let passing = weights.get("Passing").and_then(Value::as_i64).unwrap_or(0);
    let warning = weights.get("Warning").and_then(Value::as_i64).unwrap_or(0);
    if passing < 1 {
        return Err("Passing must be greater than 0".to_owned());
    }
    if warning < 0 {
        return Err("Warning must be greater or equal than 0".to_owned());
    }
    if passing > 65535 || warning > 65535 {
        return Err("DNS Weight must be between 0 and 65535".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_is_validated_as_consul_does() {
        let meta = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(validate_meta(&meta(&[("zone", "a"), ("a_b-C9", "x")])).is_ok());
        for bad in [
            "app.kubernetes.io/name",
            "zone:a",
            "",
            "consul-x",
            &"k".repeat(129),
        ] {
            assert!(validate_meta(&meta(&[(bad, "v")])).is_err(), "{bad:?}");
        }
        assert!(validate_meta(&meta(&[("k", &"v".repeat(512))])).is_ok());
        assert!(validate_meta(&meta(&[("k", &"v".repeat(513))])).is_err());
        let many: BTreeMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_meta(&many).is_err());
    }
}
