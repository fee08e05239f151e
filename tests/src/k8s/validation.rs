//! What the API server validates on a write, answered with the `422
//! Invalid` Status it sends: object names (DNS subdomains, at most 253
//! characters), label keys and values, a Lease's duration and transitions,
//! the `fieldManager` that server-side apply requires, and the resource
//! version a Lease update must carry.

use serde_json::{json, Value};

use super::resource::{Resource, LEASES};

/// A lowercase RFC 1123 subdomain: dot-separated labels of lowercase
/// alphanumerics and `-`, each starting and ending alphanumeric, 253
/// characters at most (metadata.name of most kinds, EndpointSlice included).
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

/// A label value or the name part of a label key: at most 63 characters of
/// alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric (a
/// value may also be empty).
fn is_label_token(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric)
}

fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    !name.is_empty() && is_label_token(name) && prefix.is_none_or(is_dns_subdomain)
}

/// One field error of a 422 answer.
pub(super) struct Invalid {
    field: String,
    value: String,
    why: String,
}

/// Checks what the API server checks on every write of `resource` that the
/// stand-in supports: the name, the labels and, of a Lease, the spec.
pub(super) fn check_object(resource: Resource, object: &Value) -> Result<(), Invalid> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if !is_dns_subdomain(name) {
        return Err(Invalid {
            field: "metadata.name".into(),
            value: name.into(),
            why: "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                  characters, '-' or '.', and must start and end with an alphanumeric \
                  character, at most 253 characters"
                .into(),
        });
    }
    if let Some(labels) = object["metadata"]["labels"].as_object() {
        for (key, value) in labels {
            if !is_label_key(key) {
                return Err(Invalid {
                    field: "metadata.labels".into(),
                    value: key.clone(),
                    why: "name part must be 63 characters or less of alphanumerics, '-', '_' \
                          or '.', starting and ending alphanumeric, with an optional DNS \
                          subdomain prefix and '/'"
                        .into(),
                });
            }
            let value = value.as_str().unwrap_or("<not a string>");
            if !is_label_token(value) {
                return Err(Invalid {
                    field: format!("metadata.labels[{key}]"),
                    value: value.into(),
                    why: "a valid label must be an empty string or 63 characters or less of \
                          alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
                        .into(),
                });
            }
        }
    }
    if resource == LEASES {
        check_lease_spec(&object["spec"])?;
    }
    Ok(())
}

/// `ValidateLeaseSpec`: a duration, when given, is positive; transitions,
/// when given, are not negative.
fn check_lease_spec(spec: &Value) -> Result<(), Invalid> {
    for (field, minimum, why) in [
        ("leaseDurationSeconds", 1, "must be greater than 0"),
        ("leaseTransitions", 0, "must be greater than or equal to 0"),
    ] {
        let value = &spec[field];
        if value.is_null() {
            continue;
        }
        if value.as_i64().is_none_or(|v| v < minimum) {
            return Err(Invalid {
                field: format!("spec.{field}"),
                value: value.to_string(),
                why: why.into(),
            });
        }
    }
    Ok(())
}

/// An update of a resource that allows no unconditional update (a Lease)
/// without `metadata.resourceVersion` is refused.
pub(super) fn missing_resource_version() -> Invalid {
    Invalid {
        field: "metadata.resourceVersion".into(),
        value: "0x0".into(),
        why: "must be specified for an update".into(),
    }
}

/// Server-side apply without `?fieldManager=` is refused.
pub(super) fn missing_field_manager() -> Invalid {
    Invalid {
        field: "fieldManager".into(),
        value: String::new(),
        why: "Required value: is required for apply patch".into(),
    }
}

impl Invalid {
    /// The `422 Invalid` Status of `kind` `name` failing this check.
    pub(super) fn status(&self, kind: &str, name: &str) -> Value {
        let message = format!(
            "{kind} {name:?} is invalid: {}: Invalid value: {:?}: {}",
            self.field, self.value, self.why
        );
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": "Invalid", "code": 422,
               "details": {"name": name, "kind": kind,
                           "causes": [{"reason": "FieldValueInvalid", "message": self.why,
                                       "field": self.field}]}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(is_dns_subdomain("echo-10-1-2-3.a"));
        assert!(!is_dns_subdomain("Echo"));
        assert!(!is_dns_subdomain("-echo"));
        assert!(!is_dns_subdomain("echo..a"));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        assert!(is_dns_subdomain(&"a".repeat(63)));
        assert!(is_label_key("kubernetes.io/service-name"));
        assert!(!is_label_key("Kubernetes.io/x"));
        assert!(is_label_token("Echo_1.v2"));
        assert!(is_label_token(""));
        assert!(!is_label_token(&"a".repeat(64)));
        assert!(!is_label_token("echo/v1"));
    }

    #[test]
    fn lease_durations_must_be_positive_and_transitions_not_negative() {
        let lease = |spec: Value| json!({"metadata": {"name": "l"}, "spec": spec});
        assert!(check_object(LEASES, &lease(json!({"leaseDurationSeconds": 2}))).is_ok());
        assert!(check_object(LEASES, &lease(json!({}))).is_ok());
        for bad in [
            json!({"leaseDurationSeconds": 0}),
            json!({"leaseDurationSeconds": -1}),
            json!({"leaseTransitions": -1}),
        ] {
            assert!(check_object(LEASES, &lease(bad.clone())).is_err(), "{bad}");
        }
        // Not checked on other resources.
        let slice = lease(json!({"leaseDurationSeconds": 0}));
        assert!(check_object(super::super::resource::SLICES, &slice).is_ok());
    }
}
