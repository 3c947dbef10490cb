//! Memory while a bench path runs: RSS sampled every `--rss-every` seconds
//! (so flatness over a long run is visible) and the peak at the end, from
//! `/proc/self/status`.

use std::time::{Duration, Instant};

/// RSS samples of one path.
pub(super) struct RssLog {
    start: Instant,
    every: Duration,
    /// When the next sample is due.
    pub(super) next: Instant,
    samples: Vec<(f64, u64)>,
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl RssLog {
    pub(super) fn new(every_s: u64) -> Self {
        let now = Instant::now();
        let mut log = RssLog {
            start: now,
            every: Duration::from_secs(every_s),
            next: now,
            samples: Vec::new(),
        };
        log.sample();
        log
    }

    fn sample(&mut self) {
        if let Some(kib) = status_kib("VmRSS:") {
            let t = self.start.elapsed().as_secs_f64();
            self.samples.push((t, kib));
            if !self.every.is_zero() {
                println!("  [rss] t={t:>6.1} s  RSS {:.1} MiB", mib(kib));
            }
        }
        self.next = Instant::now() + self.every.max(Duration::from_millis(100));
    }

    pub(super) fn poll(&mut self) {
        if !self.every.is_zero() && Instant::now() >= self.next {
            self.sample();
        }
    }

    pub(super) fn report(&mut self) {
        self.sample();
        let s = &self.samples;
        if let (Some(first), Some(last)) = (s.first(), s.last()) {
            let mid = s[s.len() / 2];
            println!(
                "  RSS start/middle/end {:.1} / {:.1} / {:.1} MiB (t = {:.0} / {:.0} / {:.0} s)",
                mib(first.1),
                mib(mid.1),
                mib(last.1),
                first.0,
                mid.0,
                last.0
            );
        }
        if let Some(kib) = status_kib("VmHWM:") {
            println!("  peak RSS           {:.1} MiB", mib(kib));
        }
    }
}
