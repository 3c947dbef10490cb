//! The pause before an input reconnects (Modbus devices, OPC UA servers):
//! 100 ms after the first failure, doubling to at most 30 s, and back to
//! 100 ms after a success — for a connection that fails only after it was
//! up, a success is having stayed up at least [`BACKOFF_MAX`], so a server
//! that accepts and then drops every session is not retried every 100 ms.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
