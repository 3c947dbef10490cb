//! A boot's session with the gateway: Hello until the gateway's TimeSync has
//! set the clock, then the sampling schedule aligned to wall-clock windows.
//! Every board's main loop is wiring around it (`qemu/`, `boards/`).
//!
//! # Design
//! The device adopts one wall-clock offset per boot, and every window it
//! frames is aligned by it; the gateway maps the windows by its own estimate
//! of the device clock (the least lag of arrivals) and snaps them to the
//! nearest window start. The two must agree within half a window, or every
//! window is stored one window off. So the offset must not carry the
//! TimeSync's transit time:
//!
//! - A TimeSync is adopted only as the answer to a Hello (`hello_tick`, frame
//!   format 3): the device knows when it sent that Hello, so the round trip
//!   `now − hello_tick` bounds the error. The gateway stamped `unix_ms`
//!   between the Hello's arrival and its reply, so the device takes it at the
//!   midpoint of the round trip: off by at most half of it.
//! - An answer whose round trip passes [`SessionConfig::max_rtt_ms`] is
//!   refused (counted) and the next Hello goes out at once: a TimeSync held
//!   up on the way — the gateway's port opened but not yet read, a full
//!   buffer, a slow link — shows as a long round trip, however many held-up
//!   TimeSyncs agree with each other. (Under QEMU, two TimeSyncs written
//!   within 20 ms and held ~1 s in the pty until QEMU noticed the open port
//!   once agreed and shifted every window of that boot by one.)
//! - TimeSyncs sent unprompted (`hello_tick: None`) carry no round trip and
//!   are ignored; so is everything after the boot is synchronised.
//!
//! Sampling starts at the first window boundary after the sync: a window
//! opened before tick 0 could not be sent (the aggregator clamps it).

use tributary_core::frame::{Message, TimeSync};

use crate::aggregator::Aggregator;
use crate::clock::{rem_u64, Clock};
use crate::hello::HelloParts;
use crate::link::{ByteSink, Link};
use crate::sensor::ChannelSpec;

/// A session's constants.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// The device id sent in Hello.
    pub device: &'static str,
    /// Firmware version text sent in Hello.
    pub firmware: &'static str,
    /// The device window (ms); it must divide the agent's window.
    pub window_ms: u32,
    /// Time between measurements (ms).
    pub period_ms: u64,
    /// Hello is repeated this often until the clock is set (ms).
    pub hello_every_ms: u64,
    /// The longest Hello → TimeSync round trip adopted (ms): the adopted
    /// offset is off by at most half of it, and must stay well inside half
    /// a window.
    pub max_rtt_ms: u64,
}

impl SessionConfig {
    /// A device `device` running `firmware`, with windows of `window_ms`
    /// and a measurement every `period_ms`; Hello every second and round
    /// trips up to 100 ms (≤ 50 ms of clock error) until changed.
    pub const fn new(
        device: &'static str,
        firmware: &'static str,
        window_ms: u32,
        period_ms: u64,
    ) -> Self {
        SessionConfig {
            device,
            firmware,
            window_ms,
            period_ms,
            hello_every_ms: 1_000,
            max_rtt_ms: 100,
        }
    }

    /// Hello every `ms` until the clock is set.
    pub const fn hello_every(mut self, ms: u64) -> Self {
        self.hello_every_ms = ms;
        self
    }

    /// The longest round trip adopted.
    pub const fn max_rtt(mut self, ms: u64) -> Self {
        self.max_rtt_ms = ms;
        self
    }
}

/// What a received TimeSync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncEvent {
    /// The clock is set: Unix ms minus device ms, and the round trip (ms).
    Adopted {
        /// Unix ms minus device ms.
        offset_ms: i64,
        /// The Hello → TimeSync round trip.
        rtt_ms: u64,
    },
    /// An answer refused: its round trip (ms) was too long, or its
    /// `hello_tick` was in the future (`u64::MAX`).
    Refused {
        /// The round trip, `u64::MAX` for a Hello tick not yet reached.
        rtt_ms: u64,
    },
}

/// One boot's session.
#[derive(Debug, Clone)]
pub struct Session {
    cfg: SessionConfig,
    boot: u32,
    clock: Clock,
    next_hello: u64,
    next_sample: u64,
    refused: u32,
}

impl Session {
    /// A session of boot `boot`, not synchronised: Hello is due at once.
    pub fn new(cfg: SessionConfig, boot: u32) -> Self {
        Session {
            cfg,
            boot,
            clock: Clock::new(),
            next_hello: 0,
            next_sample: 0,
            refused: 0,
        }
    }

    /// Device ms since boot from the raw wrapping ms counter (see
    /// [`Clock::now`]).
    pub fn now(&mut self, raw_ms: u32) -> u64 {
        self.clock.now(raw_ms)
    }

    /// The clock (its offset once synchronised).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Whether the clock is set (sampling runs).
    pub fn synced(&self) -> bool {
        self.clock.offset().is_some()
    }

    /// TimeSync answers refused for their round trip.
    pub fn refused(&self) -> u32 {
        self.refused
    }

    /// Feeds bytes from the gateway at device time `now` through `link`
    /// (Acks release frames); a TimeSync may set the clock and align `agg`.
    /// Returns what the last TimeSync that counted did.
    pub fn receive<const C: usize, const R: usize, const RX: usize, const P: usize>(
        &mut self,
        now: u64,
        bytes: &[u8],
        link: &mut Link<R, RX, P>,
        agg: &mut Aggregator<C>,
    ) -> Option<SyncEvent> {
        let mut event = None;
        link.receive(bytes, |m| {
            if let Message::TimeSync(t) = m {
                event = self.time_sync(now, t, agg).or(event);
            }
        });
        event
    }

    fn time_sync<const C: usize>(
        &mut self,
        now: u64,
        t: TimeSync,
        agg: &mut Aggregator<C>,
    ) -> Option<SyncEvent> {
        if self.synced() {
            return None;
        }
        let sent = t.hello_tick?;
        let Some(rtt) = now.checked_sub(sent).filter(|&r| r <= self.cfg.max_rtt_ms) else {
            self.refused = self.refused.saturating_add(1);
            self.next_hello = now;
            return Some(SyncEvent::Refused {
                rtt_ms: now.checked_sub(sent).unwrap_or(u64::MAX),
            });
        };
        // The gateway's stamp lies between the Hello's send and this
        // receipt: take it at the midpoint.
        self.clock.sync(sent + rtt / 2, t.unix_ms);
        let width = self.cfg.window_ms.max(1);
        let phase = self.clock.phase(width).unwrap_or(0);
        agg.set_phase(phase);
        let late = rem_u64(now + phase, width);
        self.next_sample = now + u64::from(rem_u64(u64::from(width - late), width));
        Some(SyncEvent::Adopted {
            offset_ms: self.clock.offset().unwrap_or(0),
            rtt_ms: rtt,
        })
    }

    /// Until the clock is set, sends a Hello through `link` to `sink` when
    /// one is due; returns whether it sent one.
    pub fn hello<const C: usize, const R: usize, const RX: usize, const P: usize>(
        &mut self,
        now: u64,
        specs: &[ChannelSpec],
        agg: &Aggregator<C>,
        link: &mut Link<R, RX, P>,
        sink: &mut impl ByteSink,
    ) -> bool {
        if self.synced() || now < self.next_hello {
            return false;
        }
        let mut stats = agg.stats();
        link.fill_stats(&mut stats);
        let h = HelloParts {
            device: self.cfg.device,
            firmware: self.cfg.firmware,
            specs,
            boot: self.boot,
            first_unacked: link.first_unacked(agg.next_seq()),
            window_ms: self.cfg.window_ms,
            tick: now,
            stats,
        };
        link.send_now(&Message::Hello(h.hello()), sink);
        self.next_hello = now + self.cfg.hello_every_ms;
        true
    }

    /// Whether a measurement is due at `now` (only once synchronised); each
    /// `true` moves the schedule on by one period.
    pub fn sample_due(&mut self, now: u64) -> bool {
        if !self.synced() || now < self.next_sample {
            return false;
        }
        self.next_sample += self.cfg.period_ms;
        true
    }
}
