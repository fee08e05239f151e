//! The trace context a sidecar reads from a request and writes back for its
//! upstream: W3C `traceparent` and B3 multi-header (`x-b3-*`).

use http::{header::HeaderName, HeaderMap, HeaderValue};

const TRACEPARENT: &str = "traceparent";
const B3_TRACE_ID: &str = "x-b3-traceid";
const B3_SPAN_ID: &str = "x-b3-spanid";
const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
const B3_SAMPLED: &str = "x-b3-sampled";

/// Which trace headers the sidecar writes for its upstream.
///
/// It reads both formats whatever it writes; headers of a format it does
/// not write go upstream as they came, as Envoy leaves headers its tracer
/// does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceFormat {
    /// `traceparent` only, as Envoy's OpenTelemetry tracer writes.
    W3c,
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid` and
    /// `x-b3-sampled`, as Envoy's Zipkin tracer writes.
    B3Multi,
    /// Both of the above.
    Both,
}

/// The caller's span, as the request's headers name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ParentContext {
    pub(super) trace_id: u128,
    pub(super) span_id: u64,
    pub(super) sampled: bool,
    /// Whether the trace id came as 128 bits; a 64-bit B3 id is written
    /// back as 64 bits.
    pub(super) wide: bool,
}

/// What the request's headers say about the trace it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inbound {
    /// No trace header: the sidecar starts a trace.
    NoContext { sampled: bool },
    /// A valid context: the sidecar's span is its child.
    Parent(ParentContext),
    /// Trace headers present but none valid: Envoy starts no span then (a
    /// null span) and forwards the headers untouched.
    Malformed,
}

/// The span the sidecar starts for one hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HopContext {
    pub(super) trace_id: u128,
    pub(super) span_id: u64,
    pub(super) parent_span_id: Option<u64>,
    pub(super) sampled: bool,
    pub(super) wide: bool,
}

impl HopContext {
    /// A child of `parent`, or the root of a new trace.
    pub(super) fn start(inbound: Inbound) -> Option<Self> {
        let span_id = fastrand::u64(1..);
        match inbound {
            Inbound::Malformed => None,
            Inbound::NoContext { sampled } => Some(Self {
                trace_id: fastrand::u128(1..),
                span_id,
                parent_span_id: None,
                sampled,
                wide: true,
            }),
            Inbound::Parent(parent) => Some(Self {
                trace_id: parent.trace_id,
                span_id,
                parent_span_id: Some(parent.span_id),
                sampled: parent.sampled,
                wide: parent.wide,
            }),
        }
    }
}

/// Reads the context: a valid `traceparent` first, then valid B3; as
/// Envoy's composite propagation does, the first valid format wins.
pub(super) fn read(headers: &HeaderMap) -> Inbound {
    let traceparent = headers.get(TRACEPARENT);
    if let Some(parent) = traceparent.and_then(parse_traceparent) {
        return Inbound::Parent(parent);
    }
    let b3_present = headers.contains_key(B3_TRACE_ID) || headers.contains_key(B3_SPAN_ID);
    if let Some(parent) = b3_present.then(|| parse_b3(headers)).flatten() {
        return Inbound::Parent(parent);
    }
    if traceparent.is_some() || b3_present {
        return Inbound::Malformed;
    }
    // A lone `x-b3-sampled` is a sampling decision without a context.
    Inbound::NoContext {
        sampled: b3_sampled(headers).unwrap_or(true),
    }
}

/// Replaces the headers of `format` so that the upstream's parent is `hop`.
pub(super) fn write(headers: &mut HeaderMap, format: TraceFormat, hop: &HopContext) {
    if matches!(format, TraceFormat::W3c | TraceFormat::Both) {
        let flags = if hop.sampled { "01" } else { "00" };
        let value = format!("00-{:032x}-{:016x}-{flags}", hop.trace_id, hop.span_id);
        set(headers, TRACEPARENT, &value);
    }
    if matches!(format, TraceFormat::B3Multi | TraceFormat::Both) {
        let trace_id = if hop.wide {
            format!("{:032x}", hop.trace_id)
        } else {
            format!("{:016x}", hop.trace_id)
        };
        set(headers, B3_TRACE_ID, &trace_id);
        set(headers, B3_SPAN_ID, &format!("{:016x}", hop.span_id));
        match hop.parent_span_id {
            Some(parent) => set(headers, B3_PARENT_SPAN_ID, &format!("{parent:016x}")),
            None => {
                headers.remove(B3_PARENT_SPAN_ID);
            }
        }
        set(headers, B3_SAMPLED, if hop.sampled { "1" } else { "0" });
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    // Lowercase hex and digits only: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// `version-traceid-spanid-flags` per W3C Trace Context: lowercase hex,
/// version `ff` invalid, version `00` exactly four fields, ids not zero.
fn parse_traceparent(value: &HeaderValue) -> Option<ParentContext> {
    let text = value.to_str().ok()?;
    let mut fields = text.split('-');
    let (version, trace, span, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let more = fields.next().is_some();
    let valid = lower_hex(version, 2)
        && version != "ff"
        && !(version == "00" && more)
        && lower_hex(trace, 32)
        && lower_hex(span, 16)
        && lower_hex(flags, 2);
    if !valid {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok()?;
    let span_id = u64::from_str_radix(span, 16).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace_id != 0 && span_id != 0).then_some(ParentContext {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
        wide: true,
    })
}

/// `x-b3-traceid` (16 or 32 hex digits) and `x-b3-spanid` (16), neither
/// zero; `x-b3-sampled` when present.
fn parse_b3(headers: &HeaderMap) -> Option<ParentContext> {
    let trace = headers.get(B3_TRACE_ID)?.to_str().ok()?;
    let span = headers.get(B3_SPAN_ID)?.to_str().ok()?;
    let wide = match trace.len() {
        32 => true,
        16 => false,
        _ => return None,
    };
    if !any_hex(trace) || span.len() != 16 || !any_hex(span) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok()?;
    let span_id = u64::from_str_radix(span, 16).ok()?;
    (trace_id != 0 && span_id != 0).then_some(ParentContext {
        trace_id,
        span_id,
        sampled: b3_sampled(headers).unwrap_or(true),
        wide,
    })
}

/// `x-b3-sampled`: `1`/`true`/`d` sampled, `0`/`false` not; absent or
/// anything else leaves the sidecar's own decision (sample everything).
fn b3_sampled(headers: &HeaderMap) -> Option<bool> {
    match headers.get(B3_SAMPLED)?.as_bytes() {
        b"1" | b"true" | b"d" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

fn lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn any_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).expect("test value"));
        }
        map
    }

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn reads_w3c_then_b3_and_nothing_else() {
        let w3c = read(&headers(&[(TRACEPARENT, PARENT.as_bytes())]));
        assert_eq!(
            w3c,
            Inbound::Parent(ParentContext {
                trace_id: 0x0af7651916cd43dd8448eb211c80319c,
                span_id: 0xb7ad6b7169203331,
                sampled: true,
                wide: true,
            })
        );
        let b3 = read(&headers(&[
            (B3_TRACE_ID, b"463ac35c9f6413ad"),
            (B3_SPAN_ID, b"a2fb4a1d1a96d312"),
            (B3_SAMPLED, b"0"),
        ]));
        assert_eq!(
            b3,
            Inbound::Parent(ParentContext {
                trace_id: 0x463ac35c9f6413ad,
                span_id: 0xa2fb4a1d1a96d312,
                sampled: false,
                wide: false,
            })
        );
        assert_eq!(
            read(&HeaderMap::new()),
            Inbound::NoContext { sampled: true }
        );
        assert_eq!(
            read(&headers(&[(B3_SAMPLED, b"0")])),
            Inbound::NoContext { sampled: false }
        );
        // A malformed traceparent beside a valid B3 context: B3 wins.
        let fallback = read(&headers(&[
            (TRACEPARENT, b"garbage"),
            (B3_TRACE_ID, b"463ac35c9f6413ad463ac35c9f6413ad"),
            (B3_SPAN_ID, b"a2fb4a1d1a96d312"),
        ]));
        assert!(
            matches!(fallback, Inbound::Parent(p) if p.wide && p.span_id == 0xa2fb4a1d1a96d312)
        );
    }

    #[test]
    fn junk_is_malformed_never_a_panic() {
        let junk: [&[u8]; 13] = [
            b"",
            b"garbage",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333\xff-01",
            b"00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"----",
            "00-0af7651916cd43dd8448eb211c80319\u{e9}-b7ad6b7169203331-01".as_bytes(),
        ];
        for value in junk {
            assert_eq!(
                read(&headers(&[(TRACEPARENT, value)])),
                Inbound::Malformed,
                "{value:?}"
            );
        }
        let b3_junk: [&[(&'static str, &[u8])]; 4] = [
            &[(B3_TRACE_ID, b"463ac35c9f6413ad")],
            &[(B3_SPAN_ID, b"a2fb4a1d1a96d312")],
            &[
                (B3_TRACE_ID, b"463ac35c9f6413a"),
                (B3_SPAN_ID, b"a2fb4a1d1a96d312"),
            ],
            &[
                (B3_TRACE_ID, b"+63ac35c9f6413ad"),
                (B3_SPAN_ID, b"a2fb4a1d1a96d312"),
            ],
        ];
        for pairs in b3_junk {
            assert_eq!(read(&headers(pairs)), Inbound::Malformed, "{pairs:?}");
        }
        // Future versions may carry more fields.
        let future = b"cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-next";
        assert!(matches!(
            read(&headers(&[(TRACEPARENT, future)])),
            Inbound::Parent(_)
        ));
    }

    #[test]
    fn writes_a_child_of_the_inbound_span_in_each_format() {
        let parent = match read(&headers(&[(TRACEPARENT, PARENT.as_bytes())])) {
            Inbound::Parent(parent) => parent,
            other => panic!("not a parent: {other:?}"),
        };
        let hop = HopContext::start(Inbound::Parent(parent)).expect("a span");
        assert_eq!(hop.trace_id, parent.trace_id);
        assert_eq!(hop.parent_span_id, Some(parent.span_id));
        assert_ne!(hop.span_id, parent.span_id);

        let mut w3c = headers(&[(TRACEPARENT, PARENT.as_bytes())]);
        write(&mut w3c, TraceFormat::W3c, &hop);
        assert_eq!(
            w3c[TRACEPARENT],
            format!(
                "00-0af7651916cd43dd8448eb211c80319c-{:016x}-01",
                hop.span_id
            )
        );
        assert!(!w3c.contains_key(B3_TRACE_ID));

        let mut b3 = headers(&[(TRACEPARENT, PARENT.as_bytes())]);
        write(&mut b3, TraceFormat::B3Multi, &hop);
        assert_eq!(
            b3[TRACEPARENT], PARENT,
            "B3 only leaves traceparent as it came"
        );
        assert_eq!(b3[B3_TRACE_ID], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(b3[B3_SPAN_ID], format!("{:016x}", hop.span_id));
        assert_eq!(b3[B3_PARENT_SPAN_ID], "b7ad6b7169203331");
        assert_eq!(b3[B3_SAMPLED], "1");

        let root = HopContext::start(Inbound::NoContext { sampled: true }).expect("a span");
        let mut both = headers(&[(B3_PARENT_SPAN_ID, b"1111111111111111")]);
        write(&mut both, TraceFormat::Both, &root);
        assert_eq!(root.parent_span_id, None);
        assert!(!both.contains_key(B3_PARENT_SPAN_ID));
        assert_eq!(
            both[TRACEPARENT],
            format!("00-{:032x}-{:016x}-01", root.trace_id, root.span_id)
        );
        assert_eq!(HopContext::start(Inbound::Malformed), None);
    }
}
