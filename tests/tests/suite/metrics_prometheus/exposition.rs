//! One scrape in the Prometheus text format (0.0.4), checked line by line:
//! every line is a `# HELP` followed by the `# TYPE` of the same family,
//! or a sample of the family the last `# TYPE` declared. Anything else —
//! a blank line, another comment, a sample that does not parse to its end,
//! an undeclared family — is an error naming the line.

use std::collections::{BTreeMap, HashSet};

use anyhow::{bail, ensure, Context};

/// A parsed sample: its name, labels in order, and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A declared family: its type and its samples.
#[derive(Debug, Default)]
pub struct Family {
    pub kind: String,
    pub samples: Vec<Sample>,
}

/// Every family of the scrape, by name.
pub type Families = BTreeMap<String, Family>;

/// Parses `body`, or says which line is wrong and why.
pub fn parse(body: &str) -> anyhow::Result<Families> {
    // Empty is a valid exposition: a scrape before any call was recorded.
    if body.is_empty() {
        return Ok(Families::new());
    }
    ensure!(body.ends_with('\n'), "the last line is not terminated");
    let mut families = Families::new();
    let mut current: Option<String> = None;
    let mut help_for: Option<String> = None;
    let mut series = HashSet::new();
    for (number, line) in body[..body.len() - 1].split('\n').enumerate() {
        parse_line(
            line,
            &mut families,
            &mut current,
            &mut help_for,
            &mut series,
        )
        .with_context(|| format!("line {}: {line:?}", number + 1))?;
    }
    ensure!(help_for.is_none(), "a # HELP without its # TYPE at the end");
    for (name, family) in &families {
        if family.kind == "histogram" {
            histogram_consistent(name, family)?;
        }
    }
    Ok(families)
}

fn parse_line(
    line: &str,
    families: &mut Families,
    current: &mut Option<String>,
    help_for: &mut Option<String>,
    series: &mut HashSet<String>,
) -> anyhow::Result<()> {
    if let Some(rest) = line.strip_prefix("# HELP ") {
        ensure!(help_for.is_none(), "two # HELP lines in a row");
        let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
        ensure!(metric_name(name), "bad metric name {name:?}");
        check_escapes(help, &['\\', 'n'])?;
        ensure!(!families.contains_key(name), "family {name} declared twice");
        *help_for = Some(name.to_owned());
        return Ok(());
    }
    if let Some(rest) = line.strip_prefix("# TYPE ") {
        let (name, kind) = rest.split_once(' ').context("no type")?;
        ensure!(
            help_for.take().as_deref() == Some(name),
            "# TYPE {name} does not follow its # HELP"
        );
        ensure!(
            ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
            "unknown type {kind:?}"
        );
        families.insert(
            name.to_owned(),
            Family {
                kind: kind.to_owned(),
                samples: Vec::new(),
            },
        );
        *current = Some(name.to_owned());
        return Ok(());
    }
    ensure!(help_for.is_none(), "a sample between # HELP and # TYPE");
    ensure!(
        !line.starts_with('#'),
        "a comment other than # HELP or # TYPE"
    );
    ensure!(!line.is_empty(), "a blank line");
    let sample = sample(line)?;
    let name = current.as_deref().context("a sample before any # TYPE")?;
    let family = families.get_mut(name).context("the current family")?;
    let suffix = sample.name.strip_prefix(name).context(format!(
        "sample {} outside the declared family {name}",
        sample.name
    ))?;
    let allowed: &[&str] = match family.kind.as_str() {
        "histogram" => &["_bucket", "_sum", "_count"],
        "summary" => &["", "_sum", "_count"],
        _ => &[""],
    };
    ensure!(
        allowed.contains(&suffix),
        "sample {} is not part of the {} {name}",
        sample.name,
        family.kind
    );
    if family.kind == "histogram" && suffix == "_bucket" {
        let le = sample.label("le").context("a bucket without le")?;
        float(le).context("le")?;
    }
    if family.kind == "summary" && suffix.is_empty() {
        float(sample.label("quantile").context("no quantile")?).context("quantile")?;
    }
    let key = format!("{}{:?}", sample.name, sample.labels);
    ensure!(series.insert(key), "the same series twice");
    family.samples.push(sample);
    Ok(())
}

/// `name{label="value",...} value [timestamp]`, to the end of the line.
fn sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line.find(['{', ' ']).context("no value")?;
    let name = &line[..name_end];
    ensure!(metric_name(name), "bad metric name {name:?}");
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').context("a label without =")?;
            let label = &rest[..eq];
            ensure!(label_name(label), "bad label name {label:?}");
            ensure!(
                labels.iter().all(|(seen, _)| seen != label),
                "label {label} twice"
            );
            let (value, after) = label_value(&rest[eq + 1..])?;
            labels.push((label.to_owned(), value));
            rest = match after.strip_prefix(',') {
                Some(after) => after,
                None => {
                    ensure!(after.starts_with('}'), "labels not closed");
                    after
                }
            };
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .context("no space before the value")?;
    let (value, timestamp) = match rest.split_once(' ') {
        Some((value, timestamp)) => (value, Some(timestamp)),
        None => (rest, None),
    };
    let value = float(value)?;
    if let Some(timestamp) = timestamp {
        timestamp
            .parse::<i64>()
            .with_context(|| format!("bad timestamp {timestamp:?}"))?;
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `"..."` with `\\`, `\"` and `\n` escapes; the unescaped value and
/// what follows the closing quote.
fn label_value(text: &str) -> anyhow::Result<(String, &str)> {
    let body = text
        .strip_prefix('"')
        .context("a label value without quotes")?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &body[at + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                other => bail!("bad escape \\{other:?} in a label value"),
            },
            c => value.push(c),
        }
    }
    bail!("an unterminated label value")
}

/// Only the escapes `\` + one of `allowed`.
fn check_escapes(text: &str, allowed: &[char]) -> anyhow::Result<()> {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let next = chars.next();
            ensure!(
                next.is_some_and(|n| allowed.contains(&n)),
                "bad escape \\{next:?}"
            );
        }
    }
    Ok(())
}

/// A Go `ParseFloat` value as Prometheus writes it: decimal or
/// exponent notation, `+Inf`, `-Inf`, `NaN`.
pub fn float(text: &str) -> anyhow::Result<f64> {
    match text {
        "+Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        "NaN" => return Ok(f64::NAN),
        _ => {}
    }
    ensure!(
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)),
        "bad value {text:?}"
    );
    text.parse().with_context(|| format!("bad value {text:?}"))
}

fn metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    !name.starts_with("__")
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Each series of a histogram: buckets in ascending `le`, counts that
/// never decrease, a `+Inf` bucket equal to `_count`, and a `_sum`.
fn histogram_consistent(name: &str, family: &Family) -> anyhow::Result<()> {
    let without_le = |sample: &Sample| {
        let labels: Vec<_> = sample.labels.iter().filter(|(n, _)| n != "le").collect();
        format!("{labels:?}")
    };
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    let mut sums = HashSet::new();
    for sample in &family.samples {
        let key = without_le(sample);
        match &sample.name[name.len()..] {
            "_bucket" => buckets
                .entry(key)
                .or_default()
                .push((float(sample.label("le").unwrap_or_default())?, sample.value)),
            "_count" => {
                counts.insert(key, sample.value);
            }
            _ => {
                sums.insert(key);
            }
        }
    }
    ensure!(
        buckets.len() == counts.len() && counts.len() == sums.len(),
        "{name}: series without all of _bucket, _sum and _count"
    );
    for (key, series) in &buckets {
        let ascending = series
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1);
        ensure!(ascending, "{name}{key}: buckets out of order: {series:?}");
        let last = series.last().context("no bucket")?;
        ensure!(last.0 == f64::INFINITY, "{name}{key}: no +Inf bucket");
        ensure!(
            Some(&last.1) == counts.get(key),
            "{name}{key}: +Inf bucket {} but _count {:?}",
            last.1,
            counts.get(key)
        );
        ensure!(sums.contains(key), "{name}{key}: no _sum");
    }
    Ok(())
}

#[test]
fn the_checker_rejects_what_it_must() {
    let good = "# HELP a_total A \\\\ help.\n# TYPE a_total counter\n\
                a_total{x=\"q\\\"\\\\\\n\",y=\"\"} 1\n\
                # HELP h H.\n# TYPE h histogram\n\
                h_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\nh_count 2\n";
    let families = parse(good).unwrap();
    assert_eq!(families["a_total"].samples[0].label("x"), Some("q\"\\\n"));
    assert!(
        parse("").unwrap().is_empty(),
        "no metrics yet is a valid scrape"
    );
    for bad in [
        "# HELP a A.\n# TYPE a counter\na 1",                       // unterminated
        "# HELP a A.\n# TYPE a counter\n\na 1\n",                   // blank line
        "# HELP a A.\n# TYPE a counter\n# other\na 1\n",            // comment
        "a 1\n",                                                    // undeclared
        "# HELP a A.\n# TYPE a counter\nb 1\n",                     // other family
        "# HELP a A.\n# TYPE a gauge\na_count 1\n",                 // suffix
        "# HELP a A.\n# TYPE a counter\na{x=\"\\t\"} 1\n",          // escape
        "# HELP a A.\n# TYPE a counter\na{x=\"v} 1\n",              // unterminated
        "# HELP a A.\n# TYPE a counter\na{x=v} 1\n",                // unquoted
        "# HELP a A.\n# TYPE a counter\na{1x=\"v\"} 1\n",           // label name
        "# HELP a A.\n# TYPE a counter\na{x=\"v\",x=\"w\"} 1\n",    // label twice
        "# HELP a A.\n# TYPE a counter\na{x=\"v\"}1\n",             // no space
        "# HELP a A.\n# TYPE a counter\na one\n",                   // value
        "# HELP a A.\n# TYPE a counter\na 1 2 3\n",                 // trailing
        "# HELP a A.\n# TYPE a counter\na 1\na 2\n",                // duplicate
        "# HELP a A.\n# TYPE a counter\n# HELP a A.\n# TYPE a counter\n", // twice
        "# TYPE a counter\na 1\n",                                  // no help
        "# HELP a A.\n# TYPE a meter\na 1\n",                       // type
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}
