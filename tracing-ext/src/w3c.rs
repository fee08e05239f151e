//! W3C trace context and baggage in one propagator, with a traceparent
//! reader that allocates nothing.
//!
//! The SDK's `TraceContextPropagator` collects the header's parts into a
//! `Vec` and runs behind a composite that clones contexts; on a server that
//! is a large share of what tracing costs per call (BENCHMARKS.md). This
//! reader applies the SDK's rules step by step — the `propagation` fuzz
//! target checks both agree on every input. `traceparent` is written as the
//! SDK writes it, without `format!`; `tracestate` parsing and baggage stay
//! with the SDK.

use std::str::FromStr;

use opentelemetry::{
    propagation::{text_map_propagator::FieldIter, Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
    Context,
};
use opentelemetry_sdk::propagation::BaggagePropagator;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
const BAGGAGE: &str = "baggage";
/// Version `ff` is forbidden by the spec.
const MAX_VERSION: u8 = 254;

/// W3C `traceparent`/`tracestate` and (optionally) `baggage`: what
/// `OTEL_PROPAGATORS=tracecontext,baggage` (the default) selects.
///
/// ```
/// use opentelemetry::{propagation::TextMapPropagator, trace::TraceContextExt};
/// use std::collections::HashMap;
/// use rpc_ext_tracing::W3cPropagator;
///
/// let carrier = HashMap::from([(
///     "traceparent".to_string(),
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
/// )]);
/// let cx = W3cPropagator::new().extract(&carrier);
/// assert!(cx.span().span_context().is_sampled());
/// ```
#[derive(Debug)]
pub struct W3cPropagator {
    baggage: Option<BaggagePropagator>,
}

impl W3cPropagator {
    /// Trace context and baggage.
    #[must_use]
    pub fn new() -> Self {
        Self {
            baggage: Some(BaggagePropagator::new()),
        }
    }

    /// Trace context only (`OTEL_PROPAGATORS=tracecontext`).
    #[must_use]
    pub fn trace_context_only() -> Self {
        Self { baggage: None }
    }
}

impl Default for W3cPropagator {
    /// Trace context and baggage, as [`new`](Self::new).
    fn default() -> Self {
        Self::new()
    }
}

impl TextMapPropagator for W3cPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let span = span.span_context();
        if span.is_valid() {
            injector.set(TRACEPARENT, traceparent(span));
            // Set even when empty, as the SDK does, so a carrier reused
            // from an earlier call never keeps that call's state;
            // `HeaderInjector` then leaves the header out, as the spec
            // asks of senders.
            injector.set(TRACESTATE, span.trace_state().header());
        }
        if let Some(baggage) = &self.baggage {
            baggage.inject_context(cx, injector);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let with_span = match span_context(extractor) {
            Some(span) => cx.with_remote_span_context(span),
            None => cx.clone(),
        };
        match &self.baggage {
            // The baggage propagator only adds to the context it is given.
            Some(baggage) if extractor.get(BAGGAGE).is_some() => {
                baggage.extract_with_context(&with_span, extractor)
            }
            _ => with_span,
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        if self.baggage.is_some() {
            FieldIter::new(&*FIELDS_WITH_BAGGAGE)
        } else {
            FieldIter::new(&*FIELDS)
        }
    }
}

static FIELDS: std::sync::LazyLock<[String; 2]> =
    std::sync::LazyLock::new(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()]);
static FIELDS_WITH_BAGGAGE: std::sync::LazyLock<[String; 3]> = std::sync::LazyLock::new(|| {
    [
        TRACEPARENT.to_owned(),
        TRACESTATE.to_owned(),
        BAGGAGE.to_owned(),
    ]
});

/// `00-<trace id>-<span id>-<flags>`, as the SDK writes it (only the
/// sampled flag), two hex digits per byte by table instead of through
/// `format!`.
fn traceparent(span: &SpanContext) -> String {
    write_traceparent(
        u128::from_be_bytes(span.trace_id().to_bytes()),
        u64::from_be_bytes(span.span_id().to_bytes()),
        span.is_sampled(),
    )
}

/// `traceparent` of these ids; also what the fastrace path writes.
pub(crate) fn write_traceparent(trace_id: u128, span_id: u64, sampled: bool) -> String {
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    write_hex(&mut text[3..35], &trace_id.to_be_bytes());
    write_hex(&mut text[36..52], &span_id.to_be_bytes());
    if sampled {
        text[54] = b'1';
    }
    // Every byte above is ASCII.
    std::str::from_utf8(&text).unwrap_or_default().to_owned()
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
}

/// Each byte's two lower-case hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = [HEX[byte >> 4], HEX[byte & 0xf]];
        byte += 1;
    }
    table
};

/// The remote parent in `traceparent` (and `tracestate`), by the SDK's
/// rules: the trimmed value split at `-` (a trailing `-` ends the last
/// part), version below `ff` with exactly four parts for version 0,
/// lower-case ids that parse as hex and are not all zero, and only the
/// sampled flag kept.
fn span_context(extractor: &dyn Extractor) -> Option<SpanContext> {
    let (trace_id, span_id, flags) = parse_traceparent(extractor.get(TRACEPARENT)?)?;
    let flags = TraceFlags::new(flags) & TraceFlags::SAMPLED;
    let trace_state = match extractor.get(TRACESTATE) {
        Some(state) => TraceState::from_str(state).unwrap_or_default(),
        None => TraceState::default(),
    };
    let span = SpanContext::new(
        TraceId::from(trace_id),
        SpanId::from(span_id),
        flags,
        true,
        trace_state,
    );
    span.is_valid().then_some(span)
}

/// The trace id, span id and flags of a `traceparent` value, by the
/// SDK's rules (ids still to be checked for zero); also what the fastrace
/// path reads.
pub(crate) fn parse_traceparent(value: &str) -> Option<(u128, u64, u8)> {
    match common_form(value.as_bytes()) {
        Some(ids) => Some(ids),
        None => general_form(value.trim()),
    }
}

/// What senders write: `00-<32 hex>-<16 hex>-<2 hex>`, lower case, nothing
/// around it. Read in one pass with no branch per digit; `None` sends
/// anything else, well-formed or not, the general way.
fn common_form(value: &[u8]) -> Option<(u128, u64, u8)> {
    let [b'0', b'0', b'-', trace_id @ .., b'-', flags_hi, flags_lo] = value else {
        return None;
    };
    let (trace_id, rest) = trace_id.split_first_chunk::<32>()?;
    let [b'-', span_id @ ..] = rest else {
        return None;
    };
    let span_id: &[u8; 16] = span_id.try_into().ok()?;
    let (high, high_bad) = lower_hex(&trace_id[..16]);
    let (low, low_bad) = lower_hex(&trace_id[16..]);
    let (span, span_bad) = lower_hex(span_id);
    let (flags, flags_bad) = lower_hex(&[*flags_hi, *flags_lo]);
    // Digits are 0..=15: any higher bit comes from a `NOT_HEX`.
    if (high_bad | low_bad | span_bad | flags_bad) & !0x0f != 0 {
        return None;
    }
    let flags = u8::try_from(flags).ok()?;
    Some(((u128::from(high) << 64) | u128::from(low), span, flags))
}

/// Up to 16 lower-case hex digits, and the OR of their table entries (bits
/// above the low four mean some byte was not a digit).
fn lower_hex(digits: &[u8]) -> (u64, u8) {
    let mut value = 0u64;
    let mut seen = 0u8;
    for &byte in digits {
        let digit = LOWER_HEX_DIGITS[usize::from(byte)];
        seen |= digit;
        value = (value << 4) | u64::from(digit & 0xf);
    }
    (value, seen)
}

/// Every form the SDK accepts, by its rules.
fn general_form(value: &str) -> Option<(u128, u64, u8)> {
    // `split_terminator('-')` by hand: the first four parts and whether
    // there are more (a trailing `-` does not start a part).
    let mut parts = [""; 4];
    let mut count = 0;
    let mut rest = value;
    while !rest.is_empty() && count <= parts.len() {
        let (part, after) = match rest.bytes().position(|b| b == b'-') {
            Some(dash) => (&rest[..dash], &rest[dash + 1..]),
            None => (rest, ""),
        };
        if count < parts.len() {
            parts[count] = part;
        }
        count += 1;
        rest = after;
    }
    if count < 4 {
        return None;
    }
    let [version, trace_id, span_id, flags] = parts;
    let version = u8::try_from(parse_hex(version, 8)?).ok()?;
    if version > MAX_VERSION || (version == 0 && count != 4) {
        return None;
    }
    let lower = |part: &str| !part.bytes().any(|b| b.is_ascii_uppercase());
    if !lower(trace_id) || !lower(span_id) || !lower(flags) {
        return None;
    }
    let trace_id = parse_hex(trace_id, 128)?;
    let span_id = u64::try_from(parse_hex(span_id, 64)?).ok()?;
    let flags = u8::try_from(parse_hex(flags, 8)?).ok()?;
    Some((trace_id, span_id, flags))
}

/// `uN::from_str_radix(text, 16)` for N = `bits`, as the SDK parses each
/// part (an optional `+`, then hex digits of any case, leading zeros
/// allowed, no overflow), without its generic per-digit machinery.
fn parse_hex(text: &str, bits: u32) -> Option<u128> {
    let digits = text.strip_prefix('+').unwrap_or(text).as_bytes();
    if digits.is_empty() || digits.len() > (bits / 4) as usize {
        // Longer than the type holds only if led by zeros: rare, so the
        // standard parser decides.
        return match bits {
            8 => u8::from_str_radix(text, 16).ok().map(u128::from),
            64 => u64::from_str_radix(text, 16).ok().map(u128::from),
            _ => u128::from_str_radix(text, 16).ok(),
        };
    }
    // Short enough that no overflow is possible: accumulate in two halves.
    let split = digits.len().saturating_sub(16);
    let (high, low) = digits.split_at(split);
    Some((u128::from(hex_u64(high)?) << (4 * low.len())) | u128::from(hex_u64(low)?))
}

/// Up to 16 hex digits.
fn hex_u64(digits: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for &byte in digits {
        let digit = HEX_DIGITS[usize::from(byte)];
        if digit == NOT_HEX {
            return None;
        }
        value = (value << 4) | u64::from(digit);
    }
    Some(value)
}

const NOT_HEX: u8 = 0xff;

/// The value of each byte as a hex digit, or `NOT_HEX`.
static HEX_DIGITS: [u8; 256] = hex_table(true);
/// The same for lower-case digits only.
static LOWER_HEX_DIGITS: [u8; 256] = hex_table(false);

const fn hex_table(upper_too: bool) -> [u8; 256] {
    let mut table = [NOT_HEX; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = match byte as u8 {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' if upper_too => b - b'A' + 10,
            _ => NOT_HEX,
        };
        byte += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_written_as_the_sdk_writes_it() {
        use opentelemetry_sdk::propagation::TraceContextPropagator;
        use std::collections::HashMap;

        for (trace, span, flags) in [
            (
                0x4bf92f3577b34da6a3ce929d0e0e4736u128,
                0x00f067aa0ba902b7u64,
                1u8,
            ),
            (1, 1, 0),
            (u128::MAX, u64::MAX, 0xff),
        ] {
            let context = SpanContext::new(
                TraceId::from(trace),
                SpanId::from(span),
                TraceFlags::new(flags),
                true,
                TraceState::default(),
            );
            let cx = Context::new().with_remote_span_context(context.clone());
            let mut sdk = HashMap::new();
            TraceContextPropagator::new().inject_context(&cx, &mut sdk);
            assert_eq!(Some(&traceparent(&context)), sdk.get(TRACEPARENT));
            let mut ours = HashMap::new();
            W3cPropagator::new().inject_context(&cx, &mut ours);
            assert_eq!(ours.get(TRACEPARENT), sdk.get(TRACEPARENT));
            assert_eq!(ours.get(TRACESTATE), sdk.get(TRACESTATE));
        }
    }

    #[test]
    fn the_common_form_reads_as_the_general_form() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(common_form(good.as_bytes()), general_form(good));
        assert!(common_form(good.as_bytes()).is_some());
        // Each byte replaced by others: the common form either agrees with
        // the general one or leaves the value to it.
        for at in 0..good.len() {
            for byte in [
                b'0', b'9', b'a', b'f', b'g', b'A', b'F', b'-', b' ', b'+', 0x80,
            ] {
                let mut value = good.as_bytes().to_vec();
                value[at] = byte;
                if let Some(read) = common_form(&value) {
                    let text = std::str::from_utf8(&value).unwrap();
                    assert_eq!(Some(read), general_form(text.trim()), "{text:?}");
                }
            }
        }
        assert_eq!(common_form(&good.as_bytes()[1..]), None);
        assert_eq!(common_form(format!("{good}-").as_bytes()), None);
        assert_eq!(common_form(good.to_uppercase().as_bytes()), None);
    }

    #[test]
    fn parse_hex_follows_from_str_radix() {
        let cases = [
            "",
            "+",
            "-1",
            "+0",
            "0",
            "00",
            "ff",
            "FF",
            "fF",
            "100",
            "1ff",
            "0ff",
            "0000ff",
            "g",
            "+-1",
            "ffffffffffffffff",
            "10000000000000000",
            "00000000000000000001",
            "7fffffffffffffffffffffffffffffff",
            "ffffffffffffffffffffffffffffffff",
            "100000000000000000000000000000000",
            " 1",
            "1 ",
            "é",
        ];
        for case in cases {
            assert_eq!(
                parse_hex(case, 8),
                u8::from_str_radix(case, 16).ok().map(u128::from),
                "u8 {case:?}"
            );
            assert_eq!(
                parse_hex(case, 64),
                u64::from_str_radix(case, 16).ok().map(u128::from),
                "u64 {case:?}"
            );
            assert_eq!(
                parse_hex(case, 128),
                u128::from_str_radix(case, 16).ok(),
                "u128 {case:?}"
            );
        }
    }
}
