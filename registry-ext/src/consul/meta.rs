//! Instance tags in Consul service `Meta`, within what agents accept.
//!
//! Agents refuse a registration whose `Meta` breaks Consul's rules (HTTP 400
//! "Invalid Service Meta"): keys must match `^[a-zA-Z0-9_-]+$`, be at most
//! 128 characters and not start with `consul-`; values at most 512
//! characters; at most 64 pairs. Tags are free-form (`app.kubernetes.io/name`,
//! `zone:a`), so each tag key is stored as follows:
//!
//! - a key Consul accepts is stored as it is, unless it starts with `__` or
//!   is one of the keys this crate keeps in `Meta` (`weight`,
//!   `registry-ext-registration`);
//! - any other key is stored as `__` followed by the key with every byte
//!   other than `[a-zA-Z0-9-]` written `_XX` (two uppercase hex digits):
//!   `app.kubernetes.io/name` is `__app_2Ekubernetes_2Eio_2Fname`.
//!
//! The resolver reverses it; a `__` key that is not exactly what the
//! encoding produces (written by another tool) is kept as it is. What still
//! cannot be stored (an encoded key over 128 characters, a value over 512,
//! more than 62 tags) is refused when the registration is built, before any
//! request.

use std::collections::BTreeMap;

use crate::{Error, Result, Tags};

/// Meta key carrying the weight (Consul's own `Weights` cannot be 0).
pub(crate) const WEIGHT_META: &str = "weight";
/// Meta key carrying the id of the registration that registered the service,
/// so that a process deregisters only its own registration, never a later
/// one of the same instance (same service ID) by a successor process.
pub(crate) const REGISTRATION_META: &str = "registry-ext-registration";

/// The keys this crate adds to every registration's `Meta`.
const RESERVED: [&str; 2] = [WEIGHT_META, REGISTRATION_META];
/// Consul's limits (`agent/structs`: `metaMaxKeyPairs`, `metaKeyMaxLength`,
/// `metaValueMaxLength`, `MetaKeyReservedPrefix`).
pub(crate) const MAX_PAIRS: usize = 64;
pub(crate) const MAX_KEY_LEN: usize = 128;
pub(crate) const MAX_VALUE_LEN: usize = 512;
const CONSUL_PREFIX: &str = "consul-";
/// Starts every encoded key.
const ENCODED: &str = "__";

/// Whether Consul accepts `key` as a service `Meta` key.
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && !key.starts_with(CONSUL_PREFIX)
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The `Meta` key that stores tag `key`.
fn encode_key(key: &str) -> String {
    if valid_key(key) && !key.starts_with(ENCODED) && !RESERVED.contains(&key) {
        return key.to_owned();
    }
    let mut encoded = String::with_capacity(ENCODED.len() + key.len() * 3);
    encoded.push_str(ENCODED);
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            encoded.push(char::from(byte));
        } else {
            encoded.push('_');
            encoded.push(hex_digit(byte >> 4));
            encoded.push(hex_digit(byte & 0xf));
        }
    }
    encoded
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(nibble & 0xf)])
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The tag key stored under `Meta` key `stored`: decoded if it is an
/// encoded key exactly as [`encode_key`] writes it, else `stored` itself.
fn decode_key(stored: &str) -> String {
    let decoded = stored.strip_prefix(ENCODED).and_then(|rest| {
        let bytes = rest.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&byte) = bytes.get(i) {
            if byte == b'_' {
                let high = hex_value(*bytes.get(i + 1)?)?;
                let low = hex_value(*bytes.get(i + 2)?)?;
                out.push(high << 4 | low);
                i += 3;
            } else {
                out.push(byte);
                i += 1;
            }
        }
        String::from_utf8(out).ok()
    });
    match decoded {
        // Only the canonical form: anything else was not written by this
        // crate, and is shown as it is.
        Some(key) if encode_key(&key) == stored => key,
        _ => stored.to_owned(),
    }
}

/// The `Meta` of `tags`, with room for the keys this crate adds, or why
/// Consul would refuse it.
pub(crate) fn encode_tags(tags: &Tags) -> Result<BTreeMap<String, String>> {
    let room = MAX_PAIRS - RESERVED.len();
    if tags.len() > room {
        return Err(Error::InvalidInstance(format!(
            "{} tags cannot be stored in Consul: service Meta holds at most {MAX_PAIRS} pairs, \
             {} of which this crate uses, so at most {room} tags",
            tags.len(),
            RESERVED.len(),
        )));
    }
    let mut meta = BTreeMap::new();
    for (key, value) in tags {
        let stored = encode_key(key);
        if stored.len() > MAX_KEY_LEN {
            return Err(Error::InvalidInstance(format!(
                "tag key {key:?} cannot be stored in Consul: as a service Meta key it is \
                 {stored:?}, {} characters, over Consul's limit of {MAX_KEY_LEN}",
                stored.len()
            )));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(Error::InvalidInstance(format!(
                "the value of tag {key:?} cannot be stored in Consul: {} bytes, over Consul's \
                 limit of {MAX_VALUE_LEN} for a service Meta value",
                value.len()
            )));
        }
        meta.insert(stored, value.to_owned());
    }
    Ok(meta)
}

/// The tags stored in `meta`, once the keys this crate adds are removed.
pub(crate) fn decode_tags(meta: BTreeMap<String, String>) -> Tags {
    meta.into_iter()
        .map(|(key, value)| (decode_key(&key), value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs.iter().copied().collect()
    }

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn keys_consul_accepts_are_kept_as_they_are() {
        for key in ["zone", "plain_key", "Upper-Case", "a-b_c9", "x_"] {
            assert_eq!(encode_key(key), key);
            assert_eq!(decode_key(key), key);
        }
    }

    #[test]
    fn other_keys_are_encoded_into_valid_keys_and_back() {
        let awkward = [
            "app.kubernetes.io/name",
            "zone:a",
            "weight",
            "registry-ext-registration",
            "consul-owner",
            "__private",
            "_",
            "",
            "ünïcode key",
            "a=b",
            "__41",
            "x_2E",
        ];
        for key in awkward {
            let stored = encode_key(key);
            assert!(valid_key(&stored), "{key:?} → {stored:?}");
            assert!(!RESERVED.contains(&stored.as_str()));
            assert_eq!(decode_key(&stored), key, "{stored:?}");
        }
        assert_eq!(
            encode_key("app.kubernetes.io/name"),
            "__app_2Ekubernetes_2Eio_2Fname"
        );
    }

    #[test]
    fn every_key_round_trips_and_distinct_keys_stay_distinct() {
        // Every one- and two-byte ASCII key, plus some multibyte ones.
        let mut keys: Vec<String> = (0u8..128).map(|b| char::from(b).to_string()).collect();
        for a in (0u8..128).step_by(3) {
            for b in (0u8..128).step_by(5) {
                keys.push([char::from(a), char::from(b)].iter().collect());
            }
        }
        keys.extend(["é", "日本", "__é", "_5F"].map(str::to_owned));
        let mut seen = std::collections::HashSet::new();
        for key in &keys {
            let stored = encode_key(key);
            assert!(valid_key(&stored), "{key:?} → {stored:?}");
            assert_eq!(&decode_key(&stored), key);
            assert!(seen.insert(stored), "{key:?} collides");
        }
    }

    #[test]
    fn foreign_keys_are_shown_as_they_are() {
        // Not what this crate writes: lowercase hex, a lone `_`, bad UTF-8,
        // a non-canonical encoding of a plain key.
        for stored in ["__a_2e", "__a_", "__a_Z1", "__a_FF", "__zone"] {
            assert_eq!(decode_key(stored), stored);
        }
    }

    #[test]
    fn limits_are_refused_with_the_tag_named() {
        let ok = tags(&[("zone", &"v".repeat(MAX_VALUE_LEN))]);
        assert!(encode_tags(&ok).is_ok());
        let long_value = tags(&[("zone", &"v".repeat(MAX_VALUE_LEN + 1))]);
        assert!(
            matches!(encode_tags(&long_value), Err(Error::InvalidInstance(m)) if m.contains("zone"))
        );
        // 42 bytes of `/` encode to 2 + 126 = 128 characters: the longest.
        assert!(encode_tags(&tags(&[(&"/".repeat(42), "v")])).is_ok());
        let long_key = "/".repeat(43);
        assert!(
            matches!(encode_tags(&tags(&[(&long_key, "v")])), Err(Error::InvalidInstance(m)) if m.contains("///"))
        );
        let many: Tags = (0..63).map(|i| (format!("k{i}"), "")).collect();
        assert!(encode_tags(&many).is_err());
        let most: Tags = (0..62).map(|i| (format!("k{i}"), "")).collect();
        assert_eq!(encode_tags(&most).map(|m| m.len()).ok(), Some(62));
    }

    #[test]
    fn decoding_keeps_every_entry() {
        let meta = meta(&[
            ("__app_2Ekubernetes_2Eio_2Fname", "echo"),
            ("zone", "a"),
            // A tag named like a key this crate uses.
            ("__weight", "heavy"),
            ("__zone", "not canonical"),
        ]);
        assert_eq!(
            decode_tags(meta),
            tags(&[
                ("app.kubernetes.io/name", "echo"),
                ("zone", "a"),
                ("weight", "heavy"),
                ("__zone", "not canonical"),
            ])
        );
    }
}
