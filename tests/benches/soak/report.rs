//! The per-minute table and helpers of the closing summary.

use std::time::Duration;

use super::{
    collector::SpanCounts,
    ledger::{Fault, FaultKind, MinuteCalls},
    registrations::MinuteRegistrations,
};

/// One row of the table: what happened in one minute.
pub struct MinuteRow {
    /// From 1.
    pub minute: usize,
    pub calls: MinuteCalls,
    /// Medians of the per-second samples of this process.
    pub rss_kib: Option<u64>,
    pub tasks: Option<usize>,
    pub fds: Option<usize>,
    /// Median resident memory of each slot's server while it ran.
    pub server_rss_kib: Vec<Option<u64>>,
    pub registrations: MinuteRegistrations,
    /// Per Prometheus target (client first, then the slots): scrapes that
    /// succeeded, scrapes attempted, in the minute.
    pub scrapes: Vec<Option<(u64, u64)>>,
    pub spans: SpanCounts,
    pub faults: Vec<(Fault, Duration)>,
}

/// A group of columns under one title: (column name, width) each.
struct Group {
    title: &'static str,
    columns: Vec<(String, usize)>,
}

fn groups(servers: usize) -> Vec<Group> {
    let column = |name: &str, width: usize| (name.to_owned(), width);
    let targets = std::iter::once("client".to_owned()).chain((0..servers).map(|s| format!("s{s}")));
    vec![
        Group {
            title: "",
            columns: vec![column("min", 3)],
        },
        Group {
            title: "calls",
            columns: vec![column("ok", 6), column("kill", 5), column("other", 5)],
        },
        Group {
            title: "client process",
            columns: vec![column("RSS KiB", 8), column("tasks", 5), column("fds", 4)],
        },
        Group {
            title: "server RSS KiB",
            columns: (0..servers).map(|s| column(&format!("s{s}"), 7)).collect(),
        },
        Group {
            title: "etcd",
            columns: vec![
                column("live/want", 9),
                column("+dead", 5),
                column("miss s", 6),
                column("rd err", 6),
            ],
        },
        Group {
            title: "scrapes up/done",
            columns: targets.map(|name| (name, 9)).collect(),
        },
        Group {
            title: "spans received",
            columns: vec![column("client", 7), column("server", 7)],
        },
        Group {
            title: "faults (m:ss)",
            columns: vec![],
        },
    ]
}

/// Joins `cells` (one `Vec` per group, one cell per column) into a line.
fn line(groups: &[Group], cells: &[Vec<String>]) -> String {
    groups
        .iter()
        .zip(cells)
        .map(|(group, cells)| {
            group
                .columns
                .iter()
                .zip(cells)
                .map(|((_, width), cell)| format!("{cell:>width$}"))
                .chain(
                    cells
                        .get(group.columns.len()..)
                        .unwrap_or_default()
                        .iter()
                        .cloned(),
                )
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The two header lines: group titles, then column names.
pub fn header(servers: usize) -> String {
    let groups = groups(servers);
    let titles = groups
        .iter()
        .map(|group| {
            let width = group
                .columns
                .iter()
                .map(|(_, w)| w + 1)
                .sum::<usize>()
                .saturating_sub(1);
            format!("{:<width$}", group.title)
        })
        .collect::<Vec<_>>()
        .join(" | ");
    let names: Vec<Vec<String>> = groups
        .iter()
        .map(|group| group.columns.iter().map(|(name, _)| name.clone()).collect())
        .collect();
    format!(
        "{}\n{}",
        titles.trim_end(),
        line(&groups, &names).trim_end()
    )
}

pub fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

impl std::fmt::Display for MinuteRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups = groups(self.server_rss_kib.len());
        let (live, dead) = match self.registrations.last {
            Some(s) => (
                format!("{}/{}", s.live_present, s.live),
                format!("+{}", s.dead_present),
            ),
            None => ("-".into(), "-".into()),
        };
        let faults = self
            .faults
            .iter()
            .map(|(fault, at)| {
                let secs = at.as_secs();
                let slot = match (fault.kind, fault.slot) {
                    (FaultKind::Server, Some(slot)) => format!(" s{slot}"),
                    _ => String::new(),
                };
                format!("{}{slot} {}:{:02}", fault.kind.name(), secs / 60, secs % 60)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let cells = vec![
            vec![self.minute.to_string()],
            vec![
                self.calls.ok.to_string(),
                self.calls.failed_kill.to_string(),
                self.calls.failed_other.total().to_string(),
            ],
            vec![opt(self.rss_kib), opt(self.tasks), opt(self.fds)],
            self.server_rss_kib.iter().map(|rss| opt(*rss)).collect(),
            vec![
                live,
                dead,
                format!("{:.1}", self.registrations.longest_missing.as_secs_f64()),
                self.registrations.failed_reads.to_string(),
            ],
            self.scrapes
                .iter()
                .map(|s| s.map_or_else(|| "-".into(), |(up, done)| format!("{up}/{done}")))
                .collect(),
            vec![self.spans.client.to_string(), self.spans.server.to_string()],
            vec![faults],
        ];
        f.write_str(&line(&groups, &cells))
    }
}

/// A resource of this process, compared from the end of warm-up to the end.
pub struct Growth {
    pub what: &'static str,
    pub unit: &'static str,
    pub base: Option<f64>,
    pub end: Option<f64>,
}

impl Growth {
    /// The change in percent, if both ends were measured.
    pub fn percent(&self) -> Option<f64> {
        let (base, end) = (self.base?, self.end?);
        (base > 0.0).then(|| (end - base) / base * 100.0)
    }
}

pub fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}
