//! Resource use read from `/proc`: what the kernel charges the process, not
//! what the code thinks it holds.

/// Resident memory of `pid` (`"self"` for this process), in KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// File descriptors this process has open (sockets, pipes, files).
pub fn open_fds() -> Option<usize> {
    // The directory handle read_dir holds is one of the entries; it is
    // there on every reading, so the count stays comparable.
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// Tasks alive on the current tokio runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The median of `values` (the lower middle for an even count), or `None`
/// when there are none.
pub fn median<T: Ord + Copy>(values: &[T]) -> Option<T> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}
