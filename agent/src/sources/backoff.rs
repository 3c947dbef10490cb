//! The pause before an input reconnects (Modbus devices, OPC UA servers):
//! 100 ms after the first failure, doubling to at most 30 s, and back to
//! 100 ms after a success — for a connection that fails only after it was
//! up, a success is having stayed up at least [`BACKOFF_MAX`], so a server
//! that accepts and then drops every session is not retried every 100 ms.
//! "Up" is connected without a break ([`Uptime`]): a session whose library
//! reconnects on its own is timed by its longest connected stretch, not by
//! how long the session object lived.

use std::time::Duration;

use tokio::time::Instant;

/// First pause after a failure.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between attempts.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The pauses of one connection.
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff(BACKOFF_MIN)
    }

    /// The pause to take now; the next one is twice as long (at most
    /// [`BACKOFF_MAX`]).
    pub(crate) fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (now * 2).min(BACKOFF_MAX);
        now
    }

    /// After a success: the next failure pauses [`BACKOFF_MIN`] again.
    pub(crate) fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }

    /// After a connection that was up for `lasted` ended: a success (reset)
    /// if it lasted at least [`BACKOFF_MAX`], else one more failure.
    pub(crate) fn ended_after(&mut self, lasted: Duration) {
        if lasted >= BACKOFF_MAX {
            self.reset();
        }
    }
}

/// The connected stretches of one session: the longest so far, and the
/// one under way.
#[derive(Debug, Default)]
pub(crate) struct Uptime {
    since: Option<Instant>,
    longest: Duration,
}

impl Uptime {
    /// Connected (again) at `now`.
    pub(crate) fn up(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// The connection broke at `now`.
    pub(crate) fn down(&mut self, now: Instant) {
        if let Some(since) = self.since.take() {
            self.longest = self.longest.max(now.saturating_duration_since(since));
        }
    }

    /// The longest stretch connected without a break, up to `now`.
    pub(crate) fn longest(&self, now: Instant) -> Duration {
        let current = self
            .since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        self.longest.max(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_the_longest_stretch_without_a_break() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut u = Uptime::default();
        assert_eq!(u.longest(at(5)), Duration::ZERO, "never connected");
        // Up 10 s, down (the library reconnecting) 50 s, up 12 s so far.
        u.up(at(0));
        u.down(at(10));
        u.down(at(11));
        assert_eq!(u.longest(at(60)), Duration::from_secs(10));
        u.up(at(60));
        u.up(at(61));
        assert_eq!(u.longest(at(72)), Duration::from_secs(12));
        // A session 72 s old, never up 30 s at a stretch: not a success.
        let mut b = Backoff::new();
        b.next();
        b.next();
        b.ended_after(u.longest(at(72)));
        assert_eq!(b.next().as_millis(), 400);
    }

    #[test]
    fn pauses_double_to_the_cap_and_reset() {
        let mut b = Backoff::new();
        let ms: Vec<u128> = (0..12).map(|_| b.next().as_millis()).collect();
        assert_eq!(
            ms,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next().as_millis(), 100);
    }

    #[test]
    fn only_a_connection_that_stayed_up_resets_the_pauses() {
        let mut b = Backoff::new();
        for _ in 0..4 {
            b.next();
        }
        // Up for a moment, then dropped: the pauses keep growing.
        b.ended_after(Duration::from_secs(1));
        assert_eq!(b.next().as_millis(), 1600);
        b.ended_after(BACKOFF_MAX - Duration::from_millis(1));
        assert_eq!(b.next().as_millis(), 3200);
        // Up for as long as the longest pause: back to the first.
        b.ended_after(BACKOFF_MAX);
        assert_eq!(b.next().as_millis(), 100);
    }
}
