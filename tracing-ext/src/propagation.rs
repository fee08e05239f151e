//! Reading and writing trace context in HTTP headers and gRPC metadata,
//! with limits so that junk or oversize headers are ignored, never an error.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{
    text_map_propagator::FieldIter, Extractor, Injector, TextMapCompositePropagator,
    TextMapPropagator,
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use rpc_ext_core::{first_value, SCANNED_HEADERS};

pub use crate::w3c::W3cPropagator;

/// Longest `traceparent` accepted (a version-00 value is 55 characters).
pub const MAX_TRACEPARENT_LEN: usize = 128;
/// Longest `tracestate` accepted (W3C: 32 members, 512 characters).
pub const MAX_TRACESTATE_LEN: usize = 512;
/// Longest `baggage` accepted (W3C: 8192 bytes).
pub const MAX_BAGGAGE_LEN: usize = 8192;
/// Longest value of any other propagation header (B3...).
pub const MAX_OTHER_LEN: usize = 1024;

pub(crate) fn limit(key: &str) -> usize {
    match key {
        "traceparent" => MAX_TRACEPARENT_LEN,
        "tracestate" => MAX_TRACESTATE_LEN,
        "baggage" => MAX_BAGGAGE_LEN,
        _ => MAX_OTHER_LEN,
    }
}

/// Reads propagation fields from HTTP headers (or gRPC metadata, which is
/// HTTP/2 headers). Values that are too long or not visible ASCII read as
/// absent, so the propagator starts a new trace instead of failing.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match known_name(key) {
            Some(name) => first_value(self.0, name),
            None => self.0.get(key),
        };
        checked(key, value?)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// `value` as text if it is visible ASCII and not too long for `key`.
fn checked<'a>(key: &str, value: &'a HeaderValue) -> Option<&'a str> {
    let value = value.to_str().ok()?;
    (value.len() <= limit(key)).then_some(value)
}

/// A server's [`HeaderExtractor`]: the three W3C fields are looked for on
/// every call (two of them mostly absent), so they are found in one pass
/// over a small map, as it is built, instead of a search each. Only the
/// framework layers (features `tower`, `volo`) read request headers.
#[cfg_attr(not(any(feature = "tower", feature = "volo")), allow(dead_code))]
pub(crate) struct RequestHeaders<'a> {
    headers: HeaderExtractor<'a>,
    /// `traceparent`, `tracestate`, `baggage`; `None`: not scanned (a large
    /// map), looked up as [`HeaderExtractor`] does.
    w3c: Option<[Option<&'a HeaderValue>; 3]>,
}

#[cfg_attr(not(any(feature = "tower", feature = "volo")), allow(dead_code))]
impl<'a> RequestHeaders<'a> {
    pub(crate) fn new(headers: &'a HeaderMap) -> Self {
        let w3c = (headers.len() <= SCANNED_HEADERS).then(|| {
            let mut found = [None; 3];
            for (name, value) in headers {
                if let Some(index) = w3c_index(name.as_str()) {
                    found[index].get_or_insert(value);
                }
            }
            found
        });
        Self {
            headers: HeaderExtractor(headers),
            w3c,
        }
    }
}

impl Extractor for RequestHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match (&self.w3c, w3c_index(key)) {
            (Some(found), Some(index)) => checked(key, found[index]?),
            _ => self.headers.get(key),
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.keys()
    }
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
const X_REQUEST_ID: HeaderName = HeaderName::from_static(crate::X_REQUEST_ID);

/// The fields read or written on every call (the W3C ones, and
/// `x-request-id` with forwarding on), pre-parsed: parsing a `HeaderName`
/// from `&str` costs more than the lookup itself, on every request.
fn known_name(key: &str) -> Option<&'static HeaderName> {
    static NAMES: [HeaderName; 4] = [TRACEPARENT, TRACESTATE, BAGGAGE, X_REQUEST_ID];
    match key {
        crate::X_REQUEST_ID => Some(&NAMES[3]),
        _ => w3c_index(key).map(|index| &NAMES[index]),
    }
}

fn w3c_index(key: &str) -> Option<usize> {
    match key {
        "traceparent" => Some(0),
        "tracestate" => Some(1),
        "baggage" => Some(2),
        _ => None,
    }
}

/// Writes propagation fields into HTTP headers; a field that is not a valid
/// header is skipped. An `x-request-id` the headers already hold is kept:
/// it is the one the caller chose for this request.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = match known_name(key) {
            Some(name) if *name == X_REQUEST_ID => {
                if self.0.contains_key(name) {
                    return;
                }
                X_REQUEST_ID
            }
            Some(name) => name.clone(),
            None => match HeaderName::from_bytes(key.as_bytes()) {
                Ok(name) => name,
                Err(_) => return,
            },
        };
        // An empty `tracestate` is valid but useless: the spec asks senders
        // to leave it out. Removing it also drops one copied from elsewhere.
        if name == TRACESTATE && value.is_empty() {
            if first_value(self.0, &name).is_some() {
                self.0.remove(&name);
            }
            return;
        }
        // Visible ASCII only, as `HeaderValue::from_str` requires; then the
        // value is moved in, not copied. A fold, not `all`: without an early
        // exit the check runs several bytes at a time.
        let visible = value.bytes().fold(true, |ok, b| {
            ok & ((b == b'\t') | (0x20..0x7f).contains(&b))
        });
        if !visible {
            return;
        }
        // (A sensitive value also prints as `Sensitive` in `Debug` output.)
        if let Ok(mut value) = HeaderValue::try_from(value) {
            if self.0.is_empty() {
                // Metadata that starts empty (Volo's) becomes a request's
                // headers: sized for ours alone, the map would grow again,
                // rehashing, when the client adds its own.
                self.0.reserve(EXPECTED_HEADERS);
            }
            // A `traceparent` is new on every request, and so is an
            // `x-request-id`: HTTP/2 should send them as never-indexed
            // literals, not look them up in and add them to the HPACK
            // table, where they would only evict headers that repeat.
            value.set_sensitive(name == TRACEPARENT || name == X_REQUEST_ID);
            self.0.insert(name, value);
        }
    }
}

/// Headers a request usually ends up with (gRPC: `content-type`, `te`,
/// `user-agent`, `grpc-*`, trace context...).
const EXPECTED_HEADERS: usize = 12;

/// Environment variable naming the propagators.
pub const OTEL_PROPAGATORS: &str = "OTEL_PROPAGATORS";

/// The propagators named by `OTEL_PROPAGATORS` (comma-separated:
/// `tracecontext`, `baggage`, `b3`, `b3multi` with feature `b3`, `none`),
/// defaulting to W3C trace context and baggage. Unknown names are skipped
/// with a warning.
///
/// ```
/// use opentelemetry::propagation::TextMapPropagator;
///
/// let propagator = rpc_ext_tracing::propagator_from_env();
/// let fields: Vec<_> = propagator.fields().collect();
/// assert!(fields.contains(&"traceparent"));
/// ```
#[must_use]
pub fn propagator_from_env() -> Box<dyn TextMapPropagator + Send + Sync> {
    let names = std::env::var(OTEL_PROPAGATORS).unwrap_or_default();
    propagator_from_names(if names.trim().is_empty() {
        "tracecontext,baggage"
    } else {
        &names
    })
}

// B3 lives only in opentelemetry-zipkin, deprecated with its exporter; the
// propagator itself is still the maintained implementation of B3.
#[cfg_attr(feature = "b3", allow(deprecated))]
pub(crate) fn propagator_from_names(names: &str) -> Box<dyn TextMapPropagator + Send + Sync> {
    // Each name once, in first-seen order, as the specification says.
    let mut listed: Vec<&str> = Vec::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !listed.contains(&name) {
            listed.push(name);
        }
    }
    match listed.as_slice() {
        ["tracecontext", "baggage"] | ["baggage", "tracecontext"] => {
            return Box::new(W3cPropagator::new())
        }
        ["tracecontext"] => return Box::new(W3cPropagator::trace_context_only()),
        _ => {}
    }
    let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    for name in listed {
        match name {
            "tracecontext" => propagators.push(Box::new(TraceContextPropagator::new())),
            "baggage" => propagators.push(Box::new(BaggagePropagator::new())),
            #[cfg(feature = "b3")]
            "b3" => propagators.push(Box::new(opentelemetry_zipkin::Propagator::with_encoding(
                opentelemetry_zipkin::B3Encoding::SingleHeader,
            ))),
            #[cfg(feature = "b3")]
            "b3multi" => {
                propagators.push(Box::new(opentelemetry_zipkin::Propagator::with_encoding(
                    opentelemetry_zipkin::B3Encoding::MultipleHeader,
                )))
            }
            "none" => return Box::new(NoPropagation),
            #[cfg(not(feature = "b3"))]
            "b3" | "b3multi" => tracing::warn!(
                propagator = name,
                "{OTEL_PROPAGATORS} names B3, but rpc-ext-tracing was built without its `b3` \
                 feature; skipped, the other propagators listed are used"
            ),
            other => tracing::warn!(
                propagator = other,
                "unsupported propagator in {OTEL_PROPAGATORS} (supported: tracecontext, \
                 baggage, b3, b3multi, none); skipped, the other propagators listed are used"
            ),
        }
    }
    Box::new(TextMapCompositePropagator::new(propagators))
}

/// `OTEL_PROPAGATORS=none`: neither read nor write any field.
#[derive(Debug)]
struct NoPropagation;

impl TextMapPropagator for NoPropagation {
    fn inject_context(&self, _: &opentelemetry::Context, _: &mut dyn Injector) {}

    fn extract_with_context(
        &self,
        cx: &opentelemetry::Context,
        _: &dyn Extractor,
    ) -> opentelemetry::Context {
        cx.clone()
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&[])
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    fn extract(headers: &[(&str, &str)]) -> opentelemetry::Context {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        propagator_from_names("tracecontext,baggage").extract(&HeaderExtractor(&map))
    }

    #[test]
    fn each_listed_propagator_is_used_once() {
        let fields = |names: &str| -> Vec<String> {
            propagator_from_names(names)
                .fields()
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            fields("tracecontext,baggage,tracecontext"),
            fields("tracecontext,baggage")
        );
        let mut unique = fields("tracecontext,baggage,tracecontext,baggage");
        let len = unique.len();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), len, "a field is listed twice");
    }

    #[test]
    fn junk_traceparent_yields_no_parent() {
        for junk in [
            "",
            "garbage",
            "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            &format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01{}",
                "-x".repeat(200)
            ),
        ] {
            let cx = extract(&[("traceparent", junk)]);
            assert!(
                !cx.span().span_context().is_valid(),
                "{junk:?} was accepted"
            );
        }
    }

    #[test]
    fn valid_traceparent_is_the_parent() {
        let cx = extract(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn fields_are_found_in_small_and_large_maps_first_value_first() {
        for others in [0, 5, SCANNED_HEADERS + 5] {
            let mut map = HeaderMap::new();
            for n in 0..others {
                map.insert(
                    HeaderName::from_bytes(format!("x-{n}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            map.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            assert_eq!(HeaderExtractor(&map).get("tracestate"), None);
            assert_eq!(RequestHeaders::new(&map).get("tracestate"), None);
            map.append("tracestate", HeaderValue::from_static("a=1"));
            map.append("tracestate", HeaderValue::from_static("b=2"));
            map.insert("baggage", HeaderValue::from_static("k=v"));
            map.insert("other", HeaderValue::from_static("o"));
            let plain = HeaderExtractor(&map);
            assert_eq!(plain.get("tracestate"), Some("a=1"), "{others}");
            let scanned = RequestHeaders::new(&map);
            assert_eq!(scanned.get("tracestate"), Some("a=1"), "{others}");
            assert_eq!(scanned.get("baggage"), Some("k=v"), "{others}");
            assert_eq!(scanned.get("traceparent"), None, "{others}");
            assert_eq!(scanned.get("other"), Some("o"), "{others}");
            HeaderInjector(&mut map).set("tracestate", String::new());
            assert_eq!(HeaderExtractor(&map).get("tracestate"), None, "{others}");
        }
    }

    #[test]
    fn per_request_values_are_never_indexed() {
        let mut map = HeaderMap::new();
        let mut injector = HeaderInjector(&mut map);
        injector.set(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        injector.set("x-request-id", "abc-123".into());
        injector.set("tracestate", "a=1".into());
        injector.set("baggage", "k=v".into());
        let sensitive = |name: &str| map.get(name).map(HeaderValue::is_sensitive);
        assert_eq!(sensitive("traceparent"), Some(true));
        assert_eq!(sensitive("x-request-id"), Some(true));
        assert_eq!(sensitive("tracestate"), Some(false));
        assert_eq!(sensitive("baggage"), Some(false));
    }

    #[test]
    fn the_request_id_is_read_from_small_and_large_maps() {
        for others in [0, SCANNED_HEADERS + 5] {
            let mut map = HeaderMap::new();
            for n in 0..others {
                map.insert(
                    HeaderName::from_bytes(format!("x-{n}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            assert_eq!(RequestHeaders::new(&map).get("x-request-id"), None);
            map.append("x-request-id", HeaderValue::from_static("first"));
            map.append("x-request-id", HeaderValue::from_static("second"));
            assert_eq!(HeaderExtractor(&map).get("x-request-id"), Some("first"));
            assert_eq!(
                RequestHeaders::new(&map).get("x-request-id"),
                Some("first"),
                "{others}"
            );
        }
    }

    #[test]
    fn oversize_baggage_is_ignored() {
        let big = format!("k={}", "v".repeat(MAX_BAGGAGE_LEN));
        let cx = extract(&[("baggage", &big)]);
        use opentelemetry::baggage::BaggageExt;
        assert_eq!(cx.baggage().len(), 0);
    }
}
