//! Exemplars in the OpenMetrics text: appended to the `_bucket` lines the
//! `prometheus` crate's encoder writes, which stay as they are otherwise
//! (and the Prometheus text format, which has no exemplars, is untouched).

use std::{
    fmt::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus::proto::MetricFamily;

use super::{clock, series::FamilyExemplars, slot::Exemplar};

/// The most characters (UTF-8 code points) an exemplar's label names and
/// values may add up to, per OpenMetrics 1.0; a longer label set is left
/// out.
pub(crate) const MAX_LABEL_CHARS: usize = 128;

/// Appends `text`, one histogram family as the `prometheus` crate's text
/// encoder writes it, to `out`, with each bucket's exemplar, if any, at the
/// end of its `_bucket` line. The encoder writes each series' lines in the
/// order of `family`'s metrics: its buckets in order (`+Inf` last), then
/// `_sum`, then `_count`.
pub(crate) fn append_histogram(
    out: &mut String,
    text: &str,
    family: &MetricFamily,
    exemplars: &FamilyExemplars,
) {
    let reader = exemplars.reader();
    if reader.is_untraced() {
        out.push_str(text);
        return;
    }
    let name = family.name();
    let metrics = family.get_metric();
    let mut index = 0;
    let mut series = metrics.first().and_then(|metric| reader.find(metric));
    let mut bucket = 0;
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', text.as_bytes()) {
        // `end` is a line feed, so both ends are character boundaries.
        let line = text.get(start..end).unwrap_or_default();
        start = end + 1;
        let rest = line.strip_prefix(name).unwrap_or_default();
        out.push_str(line);
        if is_sample(rest, "_bucket") {
            if let Some(exemplar) = series.as_ref().and_then(|series| series.read(bucket)) {
                write_trace_exemplar(out, &exemplar);
            }
            bucket += 1;
        } else if is_sample(rest, "_count") {
            index += 1;
            bucket = 0;
            series = metrics.get(index).and_then(|metric| reader.find(metric));
        }
        out.push('\n');
    }
    // The encoder ends every line with a line feed; anything after the
    // last one is kept as it is.
    out.push_str(text.get(start..).unwrap_or_default());
}

/// Whether `rest`, a line after the family name, is a sample of the
/// family's `suffix` series.
fn is_sample(rest: &str, suffix: &str) -> bool {
    rest.strip_prefix(suffix)
        .is_some_and(|labels| labels.starts_with('{') || labels.starts_with(' '))
}

/// ` # {trace_id="…",span_id="…"} value timestamp`.
fn write_trace_exemplar(out: &mut String, exemplar: &Exemplar) {
    let trace_id = hex::<32>(exemplar.trace.trace_id());
    let span_id = hex::<16>(u128::from(exemplar.trace.span_id.get()));
    write_exemplar(
        out,
        &[
            (
                "trace_id",
                std::str::from_utf8(&trace_id).unwrap_or_default(),
            ),
            ("span_id", std::str::from_utf8(&span_id).unwrap_or_default()),
        ],
        exemplar.value,
        Some(clock::anchor().wall(exemplar.at)),
    );
}

/// The lowest `N` hex digits of `value`, lower case.
fn hex<const N: usize>(mut value: u128) -> [u8; N] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'0'; N];
    for digit in out.iter_mut().rev() {
        *digit = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
    out
}

/// Writes an OpenMetrics exemplar, ` # {labels} value [timestamp]`, with
/// the label values escaped and the timestamp in seconds (milliseconds
/// kept, what Prometheus stores). Writes nothing and returns false if the
/// label set is longer than [`MAX_LABEL_CHARS`].
pub(crate) fn write_exemplar(
    out: &mut String,
    labels: &[(&str, &str)],
    value: f64,
    time: Option<SystemTime>,
) -> bool {
    let bytes: usize = labels
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    // No more bytes than the limit: no more characters either, uncounted.
    if bytes > MAX_LABEL_CHARS {
        let chars: usize = labels
            .iter()
            .map(|(name, value)| name.chars().count() + value.chars().count())
            .sum();
        if chars > MAX_LABEL_CHARS {
            return false;
        }
    }
    out.push_str(" # {");
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
    out.push_str("} ");
    let _ = write!(out, "{value}");
    if let Some(since) = time.and_then(|time| time.duration_since(UNIX_EPOCH).ok()) {
        let _ = write!(out, " {}.{:03}", since.as_secs(), since.subsec_millis());
    }
    true
}

/// OpenMetrics label value escaping: backslash, double quote, line feed.
fn escape_label_value(out: &mut String, value: &str) {
    if memchr::memchr3(b'\\', b'"', b'\n', value.as_bytes()).is_none() {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn written(labels: &[(&str, &str)], value: f64, time: Option<SystemTime>) -> Option<String> {
        let mut out = String::new();
        write_exemplar(&mut out, labels, value, time).then_some(out)
    }

    #[test]
    fn the_openmetrics_exemplar_syntax() {
        let time = UNIX_EPOCH + Duration::from_millis(1_520_879_607_789);
        assert_eq!(
            written(
                &[("trace_id", "abc"), ("span_id", "def")],
                0.000_67,
                Some(time)
            )
            .unwrap(),
            r#" # {trace_id="abc",span_id="def"} 0.00067 1520879607.789"#
        );
        assert_eq!(
            written(&[("a", "b")], 2.0, None).unwrap(),
            r#" # {a="b"} 2"#
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            written(&[("k", "a\"b\\c\nd")], 1.5, None).unwrap(),
            r#" # {k="a\"b\\c\nd"} 1.5"#
        );
    }

    #[test]
    fn a_label_set_over_128_characters_is_left_out() {
        // Code points, not bytes: 2 + 126 two-byte characters is 128.
        let at_limit = "é".repeat(126);
        assert!(written(&[("id", &at_limit)], 1.0, None).is_some());
        let over = "é".repeat(127);
        let mut out = String::from("kept");
        assert!(!write_exemplar(&mut out, &[("id", &over)], 1.0, None));
        assert_eq!(out, "kept", "nothing written");
    }

    #[test]
    fn trace_exemplars_are_hex_ids_well_within_the_limit() {
        let mut out = String::new();
        write_trace_exemplar(
            &mut out,
            &Exemplar {
                trace: super::super::TraceIds::new(
                    0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
                    0x00f0_67aa_0ba9_02b7,
                )
                .unwrap(),
                value: 0.25,
                at: 0,
            },
        );
        let expected_labels =
            r#" # {trace_id="0af7651916cd43dd8448eb211c80319c",span_id="00f067aa0ba902b7"} 0.25 "#;
        // Written at all: within the 128-character limit (63 characters).
        assert!(out.starts_with(expected_labels), "{out}");
    }
}
