//! Small helpers the benches share to summarize and print their figures.

/// The median of the finite values; NaN when there is none.
///
/// ```
/// assert_eq!(tests::bench_report::median(vec![3.0, f64::NAN, 1.0, 2.0]), 2.0);
/// assert!(tests::bench_report::median(vec![]).is_nan());
/// ```
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|value| value.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// `n` rounded, with thousands separated by commas (`1,234,567`).
///
/// ```
/// assert_eq!(tests::bench_report::fmt_thousands(1_234_567.4), "1,234,567");
/// assert_eq!(tests::bench_report::fmt_thousands(999.0), "999");
/// ```
pub fn fmt_thousands(n: f64) -> String {
    let digits = (n.round() as u64).to_string();
    let first = match digits.len() % 3 {
        0 => 3.min(digits.len()),
        r => r,
    };
    let mut out = digits[..first].to_owned();
    for group in digits.as_bytes()[first..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).expect("ASCII digits"));
    }
    out
}
