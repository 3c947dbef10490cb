//! What the benches measure with: CPU accounting (`ingest_bench`,
//! `store_bench`) — the CPU seconds of a process from `/proc`, and how busy
//! the whole machine was, so a figure can be printed beside what it cost
//! and what else ran — and the median of a bench's runs (every bench).

/// (busy, total) jiffies of the whole machine from `/proc/stat`, to tell
/// how much of the cores a run used (others' processes included).
pub(crate) fn machine() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The share of the machine's CPU busy between two [`machine`] readings.
pub(crate) fn busy_between(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1).max(1) as f64;
    busy / total
}

/// CPU seconds (user + system) of process `pid` (`self` for this one) from
/// `/proc/<pid>/stat`, in clock ticks of 1/100 s.
pub(crate) fn process(pid: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / 100.0
}

/// The middle of `values` (the mean of the two middle ones when even; NaN
/// when there are none).
pub(crate) fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
