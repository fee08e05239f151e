//! Go's parsers for what the agent reads from requests. Consul is written in
//! Go, so a value it accepts or refuses is one `time.ParseDuration` or
//! `strconv.ParseBool` accepts or refuses; the stand-in must agree.

use std::time::Duration;

/// A Go duration as `time.ParseDuration` reads it (`10s`, `1500ms`,
/// `1m30s`, `-5s`, `0`), in signed nanoseconds.
pub(super) fn parse_go_duration(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * nanos;
        rest = &rest[unit_len..];
    }
    let total = total as i128;
    Some(if negative { -total } else { total })
}

/// A positive Go duration (TTLs, intervals).
pub(super) fn parse_duration(text: &str) -> Option<Duration> {
    parse_go_duration(text)
        .filter(|n| *n > 0)
        .map(|n| Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX)))
}

/// Go's `strconv.ParseBool`.
pub(super) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("nonsense"), None);
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("0ms"), Some(0));
        assert_eq!(parse_go_duration("-5s"), Some(-5_000_000_000));
        assert_eq!(parse_go_duration("10"), None, "a unit is required");
        assert_eq!(parse_go_duration(""), None);
    }
}
